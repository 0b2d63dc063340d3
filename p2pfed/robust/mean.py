"""Plain D-PSGD mixing: the Metropolis–Hastings weighted average of our vector and our neighbours'. No defence."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2pfed.robust._common import result, screen, stacked, weighted_verdicts
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector


def weighted_mean(vectors: FloatMatrix, weights: FloatVector) -> FloatVector:
    """Σ_j w_j x_j / Σ_j w_j over the rows of `vectors`."""
    w = np.asarray(weights, dtype=np.float64)
    return (w / w.sum()).astype(np.float32) @ vectors.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Mean:
    name: str = field(default="mean", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        mixed = weighted_mean(stacked(inp), inp.mixing_weights)
        total = float(np.sum(inp.mixing_weights))
        return result(
            mixed, weighted_verdicts(inp.senders, inp.mixing_weights[1:] / total, Reason.NONE), invalid
        )
