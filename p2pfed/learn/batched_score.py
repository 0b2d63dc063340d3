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
    """What the top layer computes on B rows whatever the candidate (~2.7 MB for 45 trec rows)."""

    first: torch.Tensor  # (B, H) input at the first token of every row
    q0: torch.Tensor  # (B, heads, d) base query of the first token
    k0: torch.Tensor  # (B, heads, d, T) base keys, padded per row, laid out for the batched matmul
    v0: torch.Tensor  # (B, heads, T, d) base values, likewise
    mask: torch.Tensor  # (B, T) added to attention scores: 0 on tokens, -inf on padding
    low: dict[str, torch.Tensor]  # A·x of the projections whose A is frozen, see _low_rank_input
    tokens: torch.Tensor | None  # (N, H) packed inputs; only kept when some A is in the vectors
    padded: torch.Tensor  # (B, T) index in `tokens` of every padded position

    @property
    def nbytes(self) -> int:
        parts = [self.first, self.q0, self.k0, self.v0, self.mask, self.tokens, self.padded]
        parts += self.low.values()
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


class BatchedScorer:
    """Logits of m candidate vectors on a set of rows, in a few stacked tensor ops."""

    def __init__(
        self,
        layer: Any,  # a BertLayer
        pooler: torch.nn.Module,
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

    @classmethod
    def build(
        cls, backbone: object, peft_model: torch.nn.Module, schema: FlatSchema
    ) -> BatchedScorer | None:
        """A scorer when the model is an encoder with LoRA on query/key/value of its top layer only
        (vanilla LoRA, one active adapter, eval mode) and a linear head; None otherwise."""
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
        if head is None:
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
        return cls(layer, backbone.pooler, projections, weight, bias, schema.dim)

    def prepare(self, tokens: torch.Tensor, lengths: torch.Tensor) -> PreparedRows:
        """The candidate-independent part on B rows. `tokens`: (N, H) output of the frozen lower
        layers for every token, row after row without padding; `lengths`: (B,) tokens per row. The
        base projections run on real tokens only; attention pads per row."""
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.max()))
        padded = starts[:, None] + torch.minimum(positions[None, :], lengths[:, None] - 1)
        first = tokens[starts]
        split = (len(lengths), -1, self._heads, self._head_size)
        keys = self._lora["key"].base(tokens)[padded].reshape(split)  # (B, T, heads, d)
        values = self._lora["value"].base(tokens)[padded].reshape(split)
        frozen = [t for t in _PROJECTIONS if not self._lora[t].a.in_vector]
        return PreparedRows(
            first=first,
            q0=self._lora["query"].base(first).reshape(split[0], self._heads, -1),
            k0=keys.permute(0, 2, 3, 1).contiguous(),
            v0=values.transpose(1, 2).contiguous(),
            mask=torch.zeros(padded.shape).masked_fill_(positions >= lengths[:, None], -torch.inf),
            low={
                t: _low_rank_input(t, self._lora[t].a.frozen[None], first, tokens, padded)
                for t in frozen
            },
            tokens=None if len(frozen) == len(_PROJECTIONS) else tokens,
            padded=padded,
        )

    def logits(self, vectors: torch.Tensor, rows: PreparedRows) -> torch.Tensor:
        """(m, d) float32 candidate vectors -> (m, B, classes) logits on the prepared rows."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have shape {tuple(vectors.shape)}, expected (m, {self.dim})")
        context = self._attend(vectors, rows)  # (m, B, H)
        attended = self._layer.attention.output(context, rows.first)
        out = self._layer.output(self._layer.intermediate(attended), attended)
        m, b, size = out.shape
        pooled = self._pooler(out.reshape(m * b, 1, size)).reshape(m, b, size)
        logits = torch.einsum("mbh,mch->mbc", pooled, self._head_weight.take(vectors))
        if self._head_bias is not None:
            logits = logits + self._head_bias.take(vectors)[:, None, :]
        return logits

    def _low(self, name: str, rows: PreparedRows, vectors: torch.Tensor) -> torch.Tensor:
        if name in rows.low:  # A is frozen: prepared once
            return rows.low[name]
        assert rows.tokens is not None
        a = self._lora[name].a.take(vectors)
        return _low_rank_input(name, a, rows.first, rows.tokens, rows.padded)

    def _attend(self, vectors: torch.Tensor, rows: PreparedRows) -> torch.Tensor:
        """First-token self-attention of every candidate: (m, B, H), as EncoderBackbone computes it."""
        query, key, value = (self._lora[t] for t in _PROJECTIONS)
        b = rows.first.shape[0]

        def per_head(b_weight: torch.Tensor) -> torch.Tensor:  # (m, H, r) -> (m, heads, d, r)
            return b_weight.reshape(b_weight.shape[0], self._heads, self._head_size, -1)

        q_low = torch.einsum(
            "mbr,mndr->mbnd", self._low("query", rows, vectors), per_head(query.b.take(vectors))
        )
        q = rows.q0 + query.scale * q_low  # (m, B, heads, d)
        qb = torch.einsum("mbnd,mndr->mbnr", q, per_head(key.b.take(vectors)))
        scores = torch.einsum("mbnd,bndt->mbnt", q, rows.k0)
        scores = scores + key.scale * torch.einsum(
            "mbnr,mbtr->mbnt", qb, self._low("key", rows, vectors)
        )
        weights = (scores * self._scaling + rows.mask[None, :, None, :]).softmax(-1)
        pv = torch.einsum("mbnt,mbtr->mbnr", weights, self._low("value", rows, vectors))
        context = torch.einsum("mbnt,bntd->mbnd", weights, rows.v0)
        context = context + value.scale * torch.einsum(
            "mbnr,mndr->mbnd", pv, per_head(value.b.take(vectors))
        )
        return context.reshape(-1, b, self._heads * self._head_size)


def _low_rank_input(
    name: str, a: torch.Tensor, first: torch.Tensor, tokens: torch.Tensor, padded: torch.Tensor
) -> torch.Tensor:
    """A·x of projection `name` for A of shape (1 or m, r, H): (·, B, r) at the first token for the
    query, (·, B, T, r) at every padded position for key and value."""
    if name == "query":
        return torch.einsum("bh,mrh->mbr", first, a)
    return torch.einsum("nh,mrh->mnr", tokens, a)[:, padded]


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
