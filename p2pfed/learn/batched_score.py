"""Class scores of many candidate vectors at once, for an encoder whose only adapted layer is the top one.

Bristle scores a dozen vectors on the same validation rows every round. Loading each into the shared
model and rerunning the top layer recomputes the frozen projections W·h of every token each time.
Here whatever does not depend on the candidate is computed once per set of rows (`prepare`; TaskModel
keeps it for the next round): the base query (first token), key and value projections, and A·h when A
is frozen (shared-a). Per candidate only the low-rank terms, first-token attention, feed-forward, pooler
and head remain, run for all candidates together on a leading candidate dimension. Keys and values are
never built per candidate:

    q·(K0 + s·(A·h)·Bᵀ) = q·K0 + s·(q·B)·(A·h)      p·(V0 + s·(A·h)·Bᵀ) = p·V0 + s·(p·(A·h))·Bᵀ

Values are read straight from the flat vectors (see adapters.FlatSchema); the shared model is not
touched. `BatchedScorer.build` returns None for any other model shape, and the caller then loops.

What is left is mostly matrix products (~1.7 GFLOP for 13 candidates on 45 rows, two thirds in the
feed-forward), so the rest is kept lean: attention runs as a few batched products with (row, head) as
the batch, biases and residuals are added in place, and the feed-forward's (candidates·rows, 1536)
activation goes into one buffer kept between calls (fresh, it page-faulted ~600 times a call in a
scoring loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import ModulesToSaveWrapper

from p2pfed.learn.adapters import ADAPTER, FlatSchema, lora_modules
from p2pfed.learn.backbone import EncoderBackbone

_PROJECTIONS = ("query", "key", "value")


@dataclass(frozen=True)
class _Source:
    """A weight of the top layer or head: a slice of every candidate's vector, or frozen in the model."""

    frozen: torch.Tensor  # the model's own tensor: the value if frozen, else only its shape
    start: int = -1  # offset in the flat vector; -1 = not in the vector
    size: int = 0

    @property
    def in_vector(self) -> bool:
        return self.start >= 0

    def take(self, vectors: torch.Tensor) -> torch.Tensor:
        """(m, *shape) per candidate, or (1, *shape) when frozen (broadcasts over candidates)."""
        if not self.in_vector:
            return self.frozen.unsqueeze(0)
        piece = vectors[:, self.start : self.start + self.size]
        return piece.reshape(len(vectors), *self.frozen.shape)


@dataclass(frozen=True)
class _Lora:
    """One adapted projection: base(x) + scale·B(A(x)), as peft's lora.Linear computes it in eval."""

    base: torch.nn.Linear
    scale: float
    a: _Source  # (r, in)
    b: _Source  # (out, r)


@dataclass(frozen=True)
class PreparedRows:
    """What the top layer computes on B rows whatever the candidate (~3 MB for 45 trec rows). The
    attention tensors are laid out with the (row, head) pairs as the batch of the matrix products."""

    first: torch.Tensor  # (B, H) input at the first token of every row
    residual: torch.Tensor  # (B, H) first + the attention output's bias: added after its W_o
    q0: torch.Tensor  # (B, H) base query of the first token
    k0: torch.Tensor  # (B·heads, d, T) base keys × the attention scaling, padded per row
    v0: torch.Tensor  # (B·heads, T, d) base values, likewise
    mask: torch.Tensor  # (B·heads, 1, T) added to attention scores: 0 on tokens, -inf on padding
    # A·x of the projections whose A is frozen: query (B, r); key (B, r, T) × its LoRA scale and the
    # attention scaling; value (B, T, r)
    low: dict[str, torch.Tensor]
    tokens: torch.Tensor | None  # (N, H) packed inputs; only kept when some A is in the vectors
    padded: torch.Tensor  # (B, T) index in `tokens` of every padded position

    @property
    def nbytes(self) -> int:
        parts = [self.first, self.residual, self.q0, self.k0, self.v0, self.mask, self.padded]
        parts += self.low.values()
        if self.tokens is not None:
            parts.append(self.tokens)
        return sum(t.numel() * t.element_size() for t in parts)


@dataclass(frozen=True)
class AdaptedTop:
    """The adapted top layer of an encoder, its pooler and head, and where each trained weight sits in
    the flat vectors (shared by BatchedScorer and batched_train.BatchedTrainer)."""

    layer: Any  # a BertLayer
    pooler: Any  # a BertPooler
    projections: dict[str, _Lora]  # by name in _PROJECTIONS
    head_weight: _Source
    head_bias: _Source | None
    dim: int


def adapted_top(
    backbone: object, peft_model: torch.nn.Module, schema: FlatSchema
) -> AdaptedTop | None:
    """The top layer and head when the model is an encoder with LoRA on query/key/value of its top layer
    only (vanilla LoRA, one active adapter, eval mode) and a linear head; None otherwise."""
    if not isinstance(backbone, EncoderBackbone) or backbone.split != backbone.num_layers - 1:
        return None
    if peft_model.training:
        return None
    layer: Any = backbone.top_layer
    targets: list[Any] = [getattr(layer.attention.self, t, None) for t in _PROJECTIONS]
    adapted = sorted(id(m) for m in lora_modules(peft_model).values())
    if adapted != sorted(id(t) for t in targets) or not all(map(_is_plain_lora, targets)):
        return None
    head = _active_head(getattr(backbone.model, "classifier", None))
    if head is None or not _is_bert_top(layer, backbone.pooler):
        return None
    names = {id(m): name for name, m in peft_model.named_modules()}
    offsets, start = {}, 0
    for name, param in zip(schema.names, schema.params, strict=True):
        offsets[name] = (start, param.numel())
        start += param.numel()

    def source(module: torch.nn.Module, param: str) -> _Source:
        tensor = getattr(module, param).detach()
        at, size = offsets.pop(f"{names[id(module)]}.{param}", (-1, 0))
        return _Source(tensor, at, size)

    projections = {
        t: _Lora(
            base=module.base_layer,
            scale=float(module.scaling[ADAPTER]),
            a=source(module.lora_A[ADAPTER], "weight"),
            b=source(module.lora_B[ADAPTER], "weight"),
        )
        for t, module in zip(_PROJECTIONS, targets, strict=True)
    }
    weight = source(head, "weight")
    bias = source(head, "bias") if head.bias is not None else None
    if offsets:  # a trainable tensor this computation would ignore
        return None
    return AdaptedTop(layer, backbone.pooler, projections, weight, bias, schema.dim)


class BatchedScorer:
    """Logits of m candidate vectors on a set of rows, in a few stacked tensor ops. Keeps a buffer
    between calls: not for concurrent use (TaskModel calls it under its lock)."""

    def __init__(
        self,
        layer: Any,  # a BertLayer
        pooler: Any,  # a BertPooler
        projections: dict[str, _Lora],
        head_weight: _Source,
        head_bias: _Source | None,
        dim: int,
    ) -> None:
        self._layer = layer
        self._pooler = pooler
        attention = layer.attention.self
        self._heads = int(attention.num_attention_heads)
        self._head_size = int(attention.attention_head_size)
        self._scaling = float(attention.scaling)
        self._lora = projections
        self._head_weight = head_weight
        self._head_bias = head_bias
        self.dim = dim
        activation = layer.intermediate.intermediate_act_fn
        # transformers' "gelu" (exact erf GELU) can run in place in the buffer
        self._gelu = getattr(activation, "act", None) is torch.nn.functional.gelu
        self._hidden = torch.empty(0)  # feed-forward activations, reused, see _feed_forward

    @classmethod
    def build(
        cls, backbone: object, peft_model: torch.nn.Module, schema: FlatSchema
    ) -> BatchedScorer | None:
        """A scorer when `adapted_top` finds the shape it needs; None otherwise."""
        top = adapted_top(backbone, peft_model, schema)
        if top is None:
            return None
        return cls(top.layer, top.pooler, top.projections, top.head_weight, top.head_bias, top.dim)

    def prepare(self, tokens: torch.Tensor, lengths: torch.Tensor) -> PreparedRows:
        """The candidate-independent part on B rows. `tokens`: (N, H) output of the frozen lower
        layers for every token, row after row without padding; `lengths`: (B,) tokens per row. The
        base projections run on real tokens only; attention pads per row."""
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.max()))
        padded = starts[:, None] + torch.minimum(positions[None, :], lengths[:, None] - 1)
        first = tokens[starts]
        b, t = padded.shape
        split = (b, t, self._heads, self._head_size)
        keys = self._lora["key"].base(tokens)[padded].reshape(split)
        values = self._lora["value"].base(tokens)[padded].reshape(split)
        mask = torch.zeros(b, t).masked_fill_(positions >= lengths[:, None], -torch.inf)
        low = {}
        for name in _PROJECTIONS:
            if not self._lora[name].a.in_vector:
                a = self._lora[name].a.frozen[None]
                low[name] = _low_rank_input(name, a, first, tokens, padded)[0]
        if "key" in low:
            low["key"] = low["key"].transpose(1, 2) * (self._lora["key"].scale * self._scaling)
        return PreparedRows(
            first=first,
            residual=first + self._layer.attention.output.dense.bias,
            q0=self._lora["query"].base(first),
            k0=(keys.permute(0, 2, 3, 1) * self._scaling).reshape(-1, self._head_size, t),
            v0=values.transpose(1, 2).reshape(-1, t, self._head_size),
            mask=mask.repeat_interleave(self._heads, dim=0)[:, None, :],
            low={name: tensor.contiguous() for name, tensor in low.items()},
            tokens=None if len(low) == len(_PROJECTIONS) else tokens,
            padded=padded,
        )

    def logits(self, vectors: torch.Tensor, rows: PreparedRows) -> torch.Tensor:
        """(m, d) float32 candidate vectors -> (m, B, classes) logits on the prepared rows. After the
        attention, BertSelfOutput, BertIntermediate, BertOutput and BertPooler as in eval, written
        out so that biases and residuals are added in place (every (m·B, H) pass counts here)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have shape {tuple(vectors.shape)}, expected (m, {self.dim})")
        m, b = vectors.shape[0], rows.first.shape[0]
        attention_out, output = self._layer.attention.output, self._layer.output
        hidden = torch.mm(self._attend(vectors, rows), attention_out.dense.weight.t())
        hidden.view(m, b, -1).add_(rows.residual)
        attended = _layer_norm(attention_out.LayerNorm, hidden)  # (m·B, H)
        out = torch.add(attended, output.dense.bias)
        out.addmm_(self._feed_forward(attended), output.dense.weight.t())
        out = _layer_norm(output.LayerNorm, out)
        dense = self._pooler.dense
        pooled = torch.addmm(dense.bias, out, dense.weight.t()).tanh_().view(m, b, -1)
        weight = self._head_weight.take(vectors).transpose(1, 2).expand(m, -1, -1)  # (m, H, c)
        if self._head_bias is None:
            return torch.bmm(pooled, weight)
        return torch.baddbmm(self._head_bias.take(vectors)[:, None, :], pooled, weight)

    def _feed_forward(self, attended: torch.Tensor) -> torch.Tensor:
        """layer.intermediate(attended), (m·B, H) -> (m·B, I), written into the kept buffer."""
        dense = self._layer.intermediate.dense
        if self._hidden.shape[0] < attended.shape[0]:
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference
                self._hidden = torch.empty(attended.shape[0], dense.out_features)
        hidden = self._hidden[: attended.shape[0]]
        torch.addmm(dense.bias, attended, dense.weight.t(), out=hidden)
        if self._gelu:
            return torch.ops.aten.gelu_(hidden)
        return self._layer.intermediate.intermediate_act_fn(hidden)

    def _per_head(self, b_weight: torch.Tensor) -> torch.Tensor:
        """(m, H, r) -> (m, heads, d, r)."""
        return b_weight.reshape(b_weight.shape[0], self._heads, self._head_size, -1)

    def _low_input(self, name: str, rows: PreparedRows, vectors: torch.Tensor) -> torch.Tensor:
        """A·x of every candidate whose A is in the vectors, see _low_rank_input."""
        assert rows.tokens is not None
        a = self._lora[name].a.take(vectors)
        return _low_rank_input(name, a, rows.first, rows.tokens, rows.padded)

    def _attend(self, vectors: torch.Tensor, rows: PreparedRows) -> torch.Tensor:
        """First-token self-attention of every candidate: (m·B, H), as EncoderBackbone computes it.
        The attention products run on (row, head) pairs as their batch, the B·x terms on candidates
        or (head, candidate) pairs; the key and value low-rank terms have a path for a prepared A·x
        (frozen A) and one for an A·x per candidate."""
        query, key, value = (self._lora[t] for t in _PROJECTIONS)
        m, b = vectors.shape[0], rows.q0.shape[0]
        heads, size = self._heads, self._head_size
        if "query" in rows.low:
            low_q = rows.low["query"].expand(m, -1, -1)
        else:
            low_q = self._low_input("query", rows, vectors)
        q_b = query.b.take(vectors).transpose(1, 2)  # (m, r, H)
        q = torch.baddbmm(rows.q0, low_q, q_b, alpha=query.scale)  # (m, B, H)
        scores = torch.baddbmm(rows.mask, q.view(m, b * heads, size).transpose(0, 1), rows.k0)
        b_k, b_v = (self._per_head(p.b.take(vectors)) for p in (key, value))  # (m, heads, d, r)
        qb = torch.einsum("mbnd,mndr->bnmr", q.view(m, b, heads, size), b_k)
        self._add_key_low(scores.view(b, heads * m, -1), qb, rows, vectors)
        weights = scores.softmax(-1)  # (B·heads, m, T)
        base = torch.bmm(weights, rows.v0).view(b, heads, m, size)
        pv = self._value_low(weights.view(b, heads * m, -1), rows, vectors)  # (B, heads·m, r)
        context = torch.baddbmm(
            base.permute(1, 2, 0, 3).reshape(heads * m, b, size),
            pv.transpose(0, 1),
            b_v.permute(1, 0, 3, 2).reshape(heads * m, -1, size),
            alpha=value.scale,
        )  # (heads·m, B, d)
        return context.view(heads, m, b, size).permute(1, 2, 0, 3).reshape(m * b, heads * size)

    def _add_key_low(
        self, scores: torch.Tensor, qb: torch.Tensor, rows: PreparedRows, vectors: torch.Tensor
    ) -> None:
        """scores (B, heads·m, T) += the key's low-rank term s·(q·B)·(A·x), scaled like the scores."""
        if "key" in rows.low:
            scores.baddbmm_(qb.reshape(*scores.shape[:2], -1), rows.low["key"])
            return
        low = torch.einsum("bnmr,mbtr->bnmt", qb, self._low_input("key", rows, vectors))
        scores.view(low.shape).add_(low, alpha=self._lora["key"].scale * self._scaling)

    def _value_low(
        self, weights: torch.Tensor, rows: PreparedRows, vectors: torch.Tensor
    ) -> torch.Tensor:
        """p·(A·x) of the value from the attention weights (B, heads·m, T): (B, heads·m, r)."""
        if "value" in rows.low:
            return torch.bmm(weights, rows.low["value"])
        b, heads = rows.q0.shape[0], self._heads
        low = self._low_input("value", rows, vectors)
        pv = torch.einsum("bnmt,mbtr->bnmr", weights.view(b, heads, -1, weights.shape[-1]), low)
        return pv.reshape(*weights.shape[:2], -1)


def _low_rank_input(
    name: str, a: torch.Tensor, first: torch.Tensor, tokens: torch.Tensor, padded: torch.Tensor
) -> torch.Tensor:
    """A·x of projection `name` for A of shape (1 or m, r, H): (·, B, r) at the first token for the
    query, (·, B, T, r) at every padded position for key and value."""
    if name == "query":
        return torch.einsum("bh,mrh->mbr", first, a)
    return torch.einsum("nh,mrh->mnr", tokens, a)[:, padded]


def _layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    shape, eps = norm.normalized_shape, norm.eps
    return torch.nn.functional.layer_norm(x, shape, norm.weight, norm.bias, eps)


def _is_bert_top(layer: Any, pooler: object) -> bool:
    """The modules BatchedScorer.logits writes out, as in BERT: linear layers, LayerNorms, a tanh
    pooler."""
    parts = [
        (layer.attention.output, "dense", torch.nn.Linear),
        (layer.attention.output, "LayerNorm", torch.nn.LayerNorm),
        (layer.intermediate, "dense", torch.nn.Linear),
        (layer.output, "dense", torch.nn.Linear),
        (layer.output, "LayerNorm", torch.nn.LayerNorm),
        (pooler, "dense", torch.nn.Linear),
        (pooler, "activation", torch.nn.Tanh),
    ]
    return all(isinstance(getattr(module, name, None), kind) for module, name, kind in parts)


def _is_plain_lora(module: object) -> bool:
    """peft's lora.Linear doing exactly base(x) + scale·B(A(x)) with the default adapter."""
    return (
        isinstance(module, LoraLinear)
        and list(module.active_adapters) == [ADAPTER]
        and not module.merged
        and not module.disable_adapters
        and ADAPTER not in module.lora_variant
        and not module.lora_bias.get(ADAPTER, False)
        and isinstance(module.lora_dropout[ADAPTER], torch.nn.Identity | torch.nn.Dropout)
        and isinstance(module.base_layer, torch.nn.Linear)
        and module.base_layer.weight.dtype == torch.float32
    )


def _active_head(classifier: object) -> torch.nn.Linear | None:
    """The linear layer the classifier's forward runs (peft's trained copy, if it wraps one)."""
    if isinstance(classifier, ModulesToSaveWrapper):
        if classifier.disable_adapters or list(classifier.active_adapters) != [ADAPTER]:
            return None
        classifier = classifier.modules_to_save[ADAPTER]
    return classifier if isinstance(classifier, torch.nn.Linear) else None
