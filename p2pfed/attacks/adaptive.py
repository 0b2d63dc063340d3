"""A defence-aware attacker: the most harmful vector that a distance prioritizer would still keep.

Start from the honest mean μ and move along the harmful direction u = −μ / ‖μ‖ (as IPM does), as far as
the result stays within the radius r a distance filter typically keeps: r = `slack` × the `quantile` of
the honest vectors' distances to the reference point (the recipient's own vector when it sent us one,
else μ). The scale is found by bisection on "distance to the reference ≤ r", so any other acceptance
predicate can be dropped in. Distance-based filters (Bristle's prioritizer, BALANCE, clipping) keep it;
only a performance check or reputation can catch it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from p2pfed.attacks._honest import honest_vectors, recipient_vector
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing

Floats = npt.NDArray[np.float64]


def largest_scale(
    accepts: Callable[[float], bool], low: float, high: float, iters: int = 50
) -> float:
    """The largest s in [low, high] with accepts(s), assuming the accepted set is an interval holding `low`."""
    if not accepts(low):
        return low
    if accepts(high):
        return high
    for _ in range(iters):
        mid = (low + high) / 2
        if accepts(mid):
            low = mid
        else:
            high = mid
    return low


def harmful_direction(mean: Floats, own: Floats, rng: np.random.Generator) -> Floats:
    for v in (mean, own):
        norm = float(np.linalg.norm(v))
        if norm > 1e-12:
            return -v / norm
    u = rng.standard_normal(mean.shape)
    return u / np.linalg.norm(u)


class DefenceAware(Behaviour):
    name = "adaptive"
    waits_for_honest = True

    def __init__(self, quantile: float = 0.5, slack: float = 0.95) -> None:
        self.quantile = quantile
        self.slack = slack

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        honest = honest_vectors(ctx)
        mean = honest.mean(axis=0)
        target = recipient_vector(ctx)
        ref = mean if target is None else target
        distances = np.linalg.norm(honest - ref[None, :], axis=1)
        distances = distances[distances > 0]
        radius = (
            self.slack * float(np.quantile(distances, self.quantile)) if distances.size else 0.0
        )
        u = harmful_direction(mean, ctx.own.astype(np.float64), ctx.rng)
        offset = mean - ref
        closest = max(0.0, -float(offset @ u))  # where the ray passes nearest the reference

        def accepts(s: float) -> bool:
            return float(np.linalg.norm(offset + s * u)) <= radius

        scale = largest_scale(accepts, closest, closest + radius + float(np.linalg.norm(offset)))
        return Outgoing(vector=(mean + scale * u).astype(np.float32))
