"""Many peers' local SAM steps as one computation: their trainable vectors stacked on a peer axis.

Peers of one simulation share the frozen base and its cached features; only their vectors differ.
`TaskModel.train` loads one vector into the shared peft model and steps it; here one function computes
one peer's loss from its flat vector, `torch.func.grad_and_value` differentiates it, and
`torch.func.vmap` maps that over the peer axis (each peer on its own batch). The rest is what
`train.sam_gradients` and the optimizer do, on (P, d) tensors:

- SAM: each peer's ε = ρ·g/‖g‖ (its own norm), then the gradient again at w + ε;
- the optimizer: a stock `torch.optim` optimizer over the (P, d) tensor. Adam and SGD update every
  element on its own, so one optimizer over P stacked vectors is P fresh per-peer optimizers.

The loss is the model's, for an encoder adapted on its top layer only (what `adapted_top` accepts, the
default): the top layer at the first token as `EncoderBackbone.upper` computes it, with peft's
`base(x) + s·B(A(x))` for the query, then HF's own attention-output, feed-forward, pooler and head
modules. Keys and values are where it departs from running peft's modules (`functional_call` over the
peft model was tried first: it recomputes the frozen W·x of every token in every step and SAM pass,
most of a step, and was only ~2× faster than one peer at a time): their frozen projections W·x + b do
not depend on the peer, so they are computed once per row for a pass, and the low-rank terms are added
inside the attention products as batched_score.py does.

Each peer's batch is padded to the longest row of the step over all peers (masked in attention), and a
peer with fewer rows than the others' batch gets rows of weight 0, so the results equal per-peer
training up to float rounding (tests/test_learn_batched_train.py). Memory per peer is its vector, its
gradients and its optimizer state; activations are bounded by stepping at most `PEERS_PER_PASS` peers
in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from p2pfed.learn.adapters import FlatSchema
from p2pfed.learn.batched_score import AdaptedTop, adapted_top
from p2pfed.learn.features import Features
from p2pfed.learn.train import make_optimizer
from p2pfed.types import FloatVector

PEERS_PER_PASS = 64  # peers stepped in one vmapped pass: a few hundred MB at 16 rows × 64 tokens


@dataclass(frozen=True)
class TrainJob:
    """One peer's part of `TaskModel.train_many`: the arguments its own `TaskModel.train` call takes."""

    vector: FloatVector
    indices: npt.NDArray[np.int64]  # pool rows it trains on
    rng: np.random.Generator  # drawn exactly as TaskModel.train draws it
    labels: npt.NDArray[np.int64] | None = None  # aligned with indices; None = the true labels


def draw_steps(rng: np.random.Generator, rows: int, size: int, steps: int) -> npt.NDArray[np.int64]:
    """(steps, size) positions into a peer's rows: the batches TaskModel.train draws, in its order."""
    picks = [rng.choice(rows, size=size, replace=False) for _ in range(steps)]
    return np.stack(picks) if picks else np.zeros((0, size), dtype=np.int64)


class BatchedTrainer:
    """K local SAM steps of P peers at once; not for concurrent use (TaskModel calls it under its lock)."""

    def __init__(self, top: AdaptedTop, features: Features, optimizer: str) -> None:
        self._top = top
        self._features = features
        self._optimizer = optimizer
        self._step: Callable[..., tuple[torch.Tensor, torch.Tensor]] = vmap(
            grad_and_value(self._loss)
        )

    @classmethod
    def build(
        cls,
        backbone: object,
        peft_model: torch.nn.Module,
        schema: FlatSchema,
        features: Features,
        optimizer: str,
    ) -> BatchedTrainer | None:
        """A trainer for the shape `adapted_top` accepts, with cached features; None otherwise (the
        caller then trains one peer at a time)."""
        top = adapted_top(backbone, peft_model, schema)
        if top is None or not features.cached:
            return None
        return cls(top, features, optimizer)

    def train(
        self,
        vectors: torch.Tensor,
        rows: torch.Tensor,
        labels: torch.Tensor,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        *,
        lr: float,
        rho: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, d) vectors; (P, K, B) feature rows of every peer's K steps and their labels; (P, classes)
        logit offsets; (P, B) row weights, 1 for a peer's own rows and 0 for padding when it steps on
        fewer than B -> the (P, d) trained vectors and each peer's mean loss (P,)."""
        trained, losses = [], []
        for start in range(0, len(vectors), PEERS_PER_PASS):
            part = slice(start, start + PEERS_PER_PASS)
            batch = (rows[part], labels[part], offsets[part], weights[part])
            v, loss = self._train_pass(vectors[part], *batch, lr=lr, rho=rho)
            trained.append(v)
            losses.append(loss)
        return torch.cat(trained), torch.cat(losses)

    def _train_pass(
        self,
        vectors: torch.Tensor,
        rows: torch.Tensor,
        labels: torch.Tensor,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        *,
        lr: float,
        rho: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps = rows.shape[1]
        stacked = vectors.clone()
        optimizer = make_optimizer([stacked], self._optimizer, lr)  # type: ignore[list-item]
        losses = torch.zeros(len(vectors), dtype=torch.float64)
        with torch.no_grad():
            projected = _ProjectedRows.of(self._top, self._features, rows)
            for k in range(steps):
                batch = (projected.step(rows[:, k]), labels[:, k], offsets, weights)
                grads, loss = self._step(stacked, *batch)
                if rho > 0:
                    eps = _sam_perturbation(grads, rho)
                    stacked.add_(eps)
                    grads, _ = self._step(stacked, *batch)
                    stacked.sub_(eps)
                stacked.grad = grads
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses += loss.double()
        return stacked, (losses / max(steps, 1)).float()

    def _loss(
        self,
        vector: torch.Tensor,
        step: _StepRows,
        labels: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        """One peer's loss, as TaskModel._loss (offset all zeros when there is no logit adjustment);
        `weight` is 0 on the rows that only pad a small peer's batch to the others' size."""
        losses = F.cross_entropy(self._logits(vector, step) + offset, labels, reduction="none")
        return (losses * weight).sum() / weight.sum()

    def _logits(self, vector: torch.Tensor, step: _StepRows) -> torch.Tensor:
        """(d,) vector and one peer's batch -> (B, classes): EncoderBackbone.upper + class_logits with
        this vector loaded, the attention at the first token written with the low-rank terms apart:

            q·(K0 + s·(A·x)·Bᵀ) = q·K0 + s·(q·B)·(A·x)      p·(V0 + s·(A·x)·Bᵀ) = p·V0 + s·(p·(A·x))·Bᵀ
        """
        top = self._top
        layer, attention = top.layer, top.layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size
        b = step.mask.shape[0]
        first = step.first  # (B, h)
        query = top.projections["query"].base(first) + self._lora(vector, "query", first)
        q = query.view(b, heads, size)
        key, value = top.projections["key"], top.projections["value"]
        b_key = self._weight(key.b, vector).view(heads, size, -1)  # (heads, d, r)
        b_value = self._weight(value.b, vector).view(heads, size, -1)
        scores = torch.matmul(q[:, :, None, :], step.keys.transpose(-1, -2))[:, :, 0]
        q_b = torch.einsum("bnd,ndr->bnr", q, b_key)
        low_key = self._low(key, vector, step, "key")  # (B, T, r)
        scores = scores + key.scale * torch.einsum("bnr,btr->bnt", q_b, low_key)
        weights = (scores * attention.scaling + step.mask[:, None, :]).softmax(-1)  # (B, heads, T)
        context = torch.matmul(weights[:, :, None, :], step.values)[:, :, 0]
        p_a = torch.einsum("bnt,btr->bnr", weights, self._low(value, vector, step, "value"))
        context = context + value.scale * torch.einsum("bnr,ndr->bnd", p_a, b_value)
        attended = layer.attention.output(context.reshape(b, 1, heads * size), first[:, None])
        pooled = top.pooler(layer.output(layer.intermediate(attended), attended))
        bias = None if top.head_bias is None else self._weight(top.head_bias, vector)
        return F.linear(pooled, self._weight(top.head_weight, vector), bias)

    def _weight(self, source: Any, vector: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, source.take(vector[None])[0])

    def _low(
        self, projection: Any, vector: torch.Tensor, step: _StepRows, name: str
    ) -> torch.Tensor:
        """A·x of every token, (B, T, r): prepared per row when A is frozen, else from the vector."""
        if name in step.low:
            return step.low[name]
        return F.linear(step.hidden, self._weight(projection.a, vector))

    def _lora(self, vector: torch.Tensor, name: str, x: torch.Tensor) -> torch.Tensor:
        """s·B(A(x)) of projection `name`, as peft's lora.Linear adds it to the base output."""
        projection = self._top.projections[name]
        a, b = self._weight(projection.a, vector), self._weight(projection.b, vector)
        return F.linear(F.linear(x, a), b) * projection.scale


class _StepRows(NamedTuple):
    """One step's batch of every peer (vmap maps over the leading peer axis of each tensor), padded to
    the longest row of all P·B; padded positions repeat a row's last token and are masked."""

    first: torch.Tensor  # (P, B, h) lower-layer output at the first token
    # (P, B, heads, T, d) frozen key projection key.base(x) of every token, split into heads (the
    # layout of the attention products, gathered so in one copy)
    keys: torch.Tensor
    values: torch.Tensor  # likewise
    mask: torch.Tensor  # (P, B, T) added to attention scores: 0 on tokens, -inf on padding
    low: dict[str, torch.Tensor]  # (P, B, T, r) A·x of key and value when their A is frozen
    hidden: torch.Tensor  # (P, B, T, h) lower-layer output when some A is trained, else (P, 0)


@dataclass(frozen=True)
class _ProjectedRows:
    """The frozen part of the top layer on every row of one pass, packed (no padding): computed once,
    then each step gathers its batches from it."""

    hidden: torch.Tensor  # (N, h) lower-layer output of every token
    keys: torch.Tensor  # (N·heads, d) key.base(hidden), token after token, head after head
    values: torch.Tensor  # likewise
    low: dict[str, torch.Tensor]  # (N, r) A·hidden of key and value when their A is frozen
    starts: torch.Tensor  # (rows in the features,) where each used row starts in the packed tensors
    lengths: torch.Tensor  # (rows in the features,) tokens of every row
    need_hidden: bool  # some A is trained: steps need the tokens themselves
    heads: int

    @classmethod
    def of(cls, top: AdaptedTop, features: Features, rows: torch.Tensor) -> _ProjectedRows:
        assert features.hidden is not None
        used = torch.unique(rows)
        lengths = torch.from_numpy(features.lengths)
        tokens = torch.cat(
            [torch.arange(int(features.offsets[r]), int(features.offsets[r + 1])) for r in used]
        )
        starts = torch.zeros_like(lengths)
        starts[used] = torch.cumsum(lengths[used], 0) - lengths[used]
        hidden = features.hidden[tokens]
        low = {
            name: F.linear(hidden, top.projections[name].a.frozen)
            for name in ("key", "value")
            if not top.projections[name].a.in_vector
        }
        heads = int(top.layer.attention.self.num_attention_heads)
        return cls(
            hidden=hidden,
            keys=top.projections["key"].base(hidden).view(len(hidden) * heads, -1),
            values=top.projections["value"].base(hidden).view(len(hidden) * heads, -1),
            low=low,
            starts=starts,
            lengths=lengths,
            need_hidden=len(low) < 2,
            heads=heads,
        )

    def step(self, rows: torch.Tensor) -> _StepRows:
        """(P, B) feature rows -> their padded batches."""
        lengths = self.lengths[rows]
        positions = torch.arange(int(lengths.max()))
        starts = self.starts[rows]
        index = starts[..., None] + torch.minimum(positions, lengths[..., None] - 1)
        mask = torch.zeros(index.shape).masked_fill_(positions >= lengths[..., None], -torch.inf)
        by_head = index[..., None, :] * self.heads + torch.arange(self.heads)[:, None]
        return _StepRows(
            first=self.hidden[starts],
            keys=self.keys[by_head],
            values=self.values[by_head],
            mask=mask,
            low={name: low[index] for name, low in self.low.items()},
            hidden=self.hidden[index] if self.need_hidden else torch.zeros(len(rows), 0),
        )


def _sam_perturbation(grads: torch.Tensor, rho: float) -> torch.Tensor:
    """train.sam_perturbation of every peer at once: (P, d) gradients, the norm is per peer."""
    norm = torch.sqrt((grads.double() ** 2).sum(1))
    scale = torch.where(norm > 0, rho / norm, torch.zeros_like(norm))
    return grads * scale.to(grads.dtype)[:, None]
