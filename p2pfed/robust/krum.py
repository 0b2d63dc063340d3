"""Krum and Multi-Krum (Blanchard et al., 2017) over [own, *received].

Each vector's score is the sum of squared distances to its m − f − 2 nearest others (at least 1, where m
counts our own vector too); Krum returns the lowest-scoring vector, Multi-Krum the mean of the `select`
lowest (default m − f). With fewer than 2f + 3 vectors the guarantee is void; the rule still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pfed.robust._common import result, screen, stacked, weighted_verdicts
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector


def squared_distances(vectors: FloatMatrix) -> npt.NDArray[np.float64]:
    x = vectors.astype(np.float64)
    sq = (x * x).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def krum_scores(vectors: FloatMatrix, f: int) -> npt.NDArray[np.float64]:
    m = vectors.shape[0]
    if m == 1:
        return np.zeros(1)
    nearest = min(max(1, m - f - 2), m - 1)
    d = squared_distances(vectors)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :nearest].sum(axis=1)


def multi_krum_select(vectors: FloatMatrix, f: int, select: int) -> npt.NDArray[np.intp]:
    """Row indices of the `select` lowest Krum scores (ties broken by index)."""
    scores = krum_scores(vectors, f)
    return np.argsort(scores, kind="stable")[: max(1, min(select, vectors.shape[0]))]


def krum(vectors: FloatMatrix, f: int) -> FloatVector:
    return vectors[multi_krum_select(vectors, f, 1)[0]].astype(np.float32)


def multi_krum(vectors: FloatMatrix, f: int, select: int | None = None) -> FloatVector:
    chosen = multi_krum_select(vectors, f, vectors.shape[0] - f if select is None else select)
    return vectors[chosen].astype(np.float64).mean(axis=0).astype(np.float32)


def _run(inp: DefenceInput, f: int, select: int | None) -> DefenceResult:
    inp, invalid = screen(inp)
    vectors = stacked(inp)
    m = vectors.shape[0]
    chosen = multi_krum_select(vectors, f, (m - f) if select is None else select)
    weights = np.zeros(m, dtype=np.float32)
    weights[chosen] = 1.0 / chosen.size
    mixed = vectors[chosen].astype(np.float64).mean(axis=0)
    return result(mixed, weighted_verdicts(inp.senders, weights[1:], Reason.NOT_SELECTED), invalid)


@dataclass(frozen=True)
class Krum:
    f: int = 1  # assumed number of Byzantine neighbours
    name: str = field(default="krum", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        return _run(inp, self.f, 1)


@dataclass(frozen=True)
class MultiKrum:
    f: int = 1  # assumed number of Byzantine neighbours
    select: int | None = None  # how many to average; None = (count − f)
    name: str = field(default="multi_krum", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        return _run(inp, self.f, self.select)
