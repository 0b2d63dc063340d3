"""ClippedGossip / self-centred clipping (He, Karimireddy & Jaggi, 2022):

    x_i ← x_i + Σ_j w_ij · clip(x_j − x_i, τ_i),   clip(v, τ) = v · min(1, τ / ‖v‖)

Adaptive τ_i (the paper's practical rule): choose τ_i so that the neighbours it clips carry a total mixing
weight of δ_i, the weight presumed Byzantine — i.e. clip the farthest neighbours until their summed weight
reaches δ_i, and set τ_i to the distance of the next-farthest. With δ unknown (`delta=None`) we follow the
authors' public code (epfml/byzantine-robust-decentralized-optimizer, SelfCenteredClipping), which sets
τ_i to the second-largest distance: exactly the farthest neighbour is clipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pfed.robust._common import result, screen
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector, Outcome, Verdict


def adaptive_tau(
    distances: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], delta: float | None
) -> float:
    n = distances.size
    if n == 0:
        return float("inf")
    far_first = np.argsort(-distances, kind="stable")
    if delta is None:
        clipped = 1
    elif delta <= 0:
        return float("inf")
    else:
        reached = np.flatnonzero(np.cumsum(weights[far_first]) >= delta - 1e-12)
        clipped = int(reached[0]) + 1 if reached.size else n
    if clipped >= n:
        return float(distances[far_first[-1]]) if delta is None else 0.0
    return float(distances[far_first[clipped]])


def clip_factors(distances: npt.NDArray[np.float64], tau: float) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(distances > tau, tau / np.where(distances > 0, distances, 1.0), 1.0)


def clipped_gossip(
    own: FloatVector, received: FloatMatrix, weights: npt.NDArray[np.float64], tau: float
) -> tuple[FloatVector, npt.NDArray[np.float64]]:
    """(new vector, per-neighbour clip factor). `weights` are the neighbours' mixing weights (no self entry)."""
    diffs = received - own[None, :]
    factors = clip_factors(np.linalg.norm(diffs, axis=1).astype(np.float64), tau)
    mixed = own + (np.asarray(weights, dtype=np.float64) * factors).astype(np.float32) @ diffs
    return mixed.astype(np.float32), factors


@dataclass(frozen=True)
class ClippedGossip:
    tau: float | None = None  # fixed clipping radius; None = adaptive
    delta: float | None = None  # presumed Byzantine weight for adaptive τ; None = clip the farthest
    name: str = field(default="clipped_gossip", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        weights = inp.mixing_weights[1:].astype(np.float64)
        distances = np.linalg.norm(inp.received - inp.own[None, :], axis=1).astype(np.float64)
        tau = self.tau if self.tau is not None else adaptive_tau(distances, weights, self.delta)
        mixed, factors = clipped_gossip(inp.own, inp.received, weights, tau)
        verdicts = [
            Verdict(
                s,
                Outcome.KEPT,
                weight=float(w * c),
                score=float(c),
                reason=Reason.CLIPPED if c < 1 else Reason.NONE,
            )
            for s, w, c in zip(inp.senders, weights, factors, strict=True)
        ]
        return result(mixed, verdicts, invalid)
