"""Coordinate-wise median of our vector and our neighbours' (Yin et al., 2018), unweighted."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2pfed.robust._common import result, screen, stacked, weighted_verdicts
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector


def coordinate_median(vectors: FloatMatrix) -> FloatVector:
    return np.median(vectors, axis=0).astype(np.float32)


def median_shares(vectors: FloatMatrix) -> FloatVector:
    """Each row's effective weight in the median: the share of coordinates where it is the middle value
    (half a share per middle row when the count is even). Sums to 1."""
    m, d = vectors.shape
    order = np.argsort(vectors, axis=0, kind="stable")
    if m % 2:
        counts = np.bincount(order[m // 2], minlength=m).astype(np.float64)
    else:
        counts = (
            np.bincount(order[m // 2 - 1], minlength=m) + np.bincount(order[m // 2], minlength=m)
        ) / 2.0
    return (counts / d).astype(np.float32)


@dataclass(frozen=True)
class Median:
    name: str = field(default="median", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        vectors = stacked(inp)
        shares = median_shares(vectors)
        return result(
            coordinate_median(vectors),
            weighted_verdicts(inp.senders, shares[1:], Reason.TRIMMED),
            invalid,
        )
