"""BALANCE (Fang et al., CCS 2024): each client uses its own model as the similarity reference.

Accept neighbour j iff ‖x_i − x_j‖ ≤ γ · exp(−κ · λ(t)) · ‖x_i‖ with λ(t) = t / T, then
x_i ← α · x_i + (1 − α) · mean(accepted); with nothing accepted, x_i stays. Defaults γ = 0.3, κ = 1,
α = 0.5 follow the paper's experiments. The threshold scales with ‖x_i‖, so a LoRA B that starts at zero
accepts nothing until local training has moved it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pfed.robust._common import result, screen, weighted_verdicts
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector


def balance_threshold(own: FloatVector, gamma: float, kappa: float, lam: float) -> float:
    return gamma * math.exp(-kappa * lam) * float(np.linalg.norm(own.astype(np.float64)))


def balance(
    own: FloatVector, received: FloatMatrix, *, gamma: float, kappa: float, lam: float, alpha: float
) -> tuple[FloatVector, npt.NDArray[np.bool_]]:
    """(new vector, accepted mask)."""
    distances = np.linalg.norm(received - own[None, :], axis=1).astype(np.float64)
    accepted = distances <= balance_threshold(own, gamma, kappa, lam)
    if not accepted.any():
        return own.astype(np.float32, copy=True), accepted
    mixed = alpha * own.astype(np.float64) + (1 - alpha) * received[accepted].astype(
        np.float64
    ).mean(axis=0)
    return mixed.astype(np.float32), accepted


@dataclass(frozen=True)
class Balance:
    gamma: float = 0.3
    kappa: float = 1.0
    alpha: float = 0.5  # weight kept on our own vector
    total_rounds: int | None = None  # T in λ(t) = t / T; None keeps λ = 0 (a constant threshold)
    name: str = field(default="balance", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        lam = inp.round / self.total_rounds if self.total_rounds else 0.0
        mixed, accepted = balance(
            inp.own, inp.received, gamma=self.gamma, kappa=self.kappa, lam=lam, alpha=self.alpha
        )
        weights = np.where(accepted, (1 - self.alpha) / max(1, int(accepted.sum())), 0.0).astype(
            np.float32
        )
        return result(mixed, weighted_verdicts(inp.senders, weights, Reason.NOT_SELECTED), invalid)
