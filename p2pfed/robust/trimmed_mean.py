"""Coordinate-wise trimmed mean (Yin et al., 2018): per coordinate, drop the b largest and b smallest values
of [own, *received] and average the rest, b = floor(trim · count), at most (count − 1) // 2."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2pfed.robust._common import result, screen, stacked, weighted_verdicts
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector


def trim_count(count: int, trim: float) -> int:
    return min(int(np.floor(trim * count)), (count - 1) // 2)


def trimmed_mean(vectors: FloatMatrix, b: int) -> FloatVector:
    m = vectors.shape[0]
    ordered = np.sort(vectors, axis=0)
    return ordered[b : m - b].astype(np.float64).mean(axis=0).astype(np.float32)


def trimmed_shares(vectors: FloatMatrix, b: int) -> FloatVector:
    """Each row's effective weight: the share of coordinates where it survives trimming / (count − 2b)."""
    m, d = vectors.shape
    order = np.argsort(vectors, axis=0, kind="stable")
    counts = np.bincount(order[b : m - b].ravel(), minlength=m).astype(np.float64)
    return (counts / (d * (m - 2 * b))).astype(np.float32)


@dataclass(frozen=True)
class TrimmedMean:
    trim: float = 0.2  # fraction trimmed from each side per coordinate
    name: str = field(default="trimmed_mean", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        vectors = stacked(inp)
        b = trim_count(vectors.shape[0], self.trim)
        shares = trimmed_shares(vectors, b)
        mixed = trimmed_mean(vectors, b)
        return result(mixed, weighted_verdicts(inp.senders, shares[1:], Reason.TRIMMED), invalid)
