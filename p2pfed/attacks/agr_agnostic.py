"""Min-Max and Min-Sum: the AGR-agnostic attacks of Shejwalkar & Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021.

Over the honest vectors h_1..h_n the colluders saw (`honest_seen`), with μ their mean and p a perturbation
direction, every attacker sends x = μ + γ·p with γ ≥ 0 the largest value such that

    Min-Max:  max_i ‖x − h_i‖     ≤ max_{i,j} ‖h_i − h_j‖       (no farther from any honest vector than
                                                                 the two farthest honest vectors are apart)
    Min-Sum:  Σ_i ‖x − h_i‖²      ≤ max_i Σ_j ‖h_i − h_j‖²      (no larger sum of squared distances than
                                                                 the most outlying honest vector has)

p is one of (as in the paper and the authors' code, which computes x = μ − γ·deviation):
    "unit_vec": −μ / ‖μ‖   (the inverse unit vector)
    "std":      −std_i(h_i) per coordinate (sample standard deviation, ddof = 1, as `torch.std`)
    "sign":     −sign(μ)
The default is "std", the setting of the authors' released experiment scripts. Both left-hand sides are
convex in γ and hold at γ = 0 (μ is within the honest spread), so the accepted γ form an interval [0, γ*]
and bisection finds γ* (the paper's own search halves a step from γ_init = 10 until it moves < 1e-5; we
bisect on [0, γ_max] instead, with γ_max by default the bound (D + max_i ‖μ − h_i‖) / ‖p‖, D the largest
honest distance, past which Min-Max cannot hold, so the search is never cut short by its range).

Min-Sum has a closed form (the cross term Σ_i (μ − h_i) vanishes): γ* = max_i ‖h_i − μ‖ / ‖p‖; the unit
tests check the bisection against it. The paper applies the rule to gradients; as the rest of this suite
(ALIE, IPM), we apply it to the gossiped vectors themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from p2pfed.attacks._honest import honest_vectors
from p2pfed.attacks.adaptive import largest_scale
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing

Floats = npt.NDArray[np.float64]
PERTURBATIONS = ("unit_vec", "std", "sign")


def perturbation(honest: Floats, kind: str) -> Floats:
    """The direction p of the paper for the honest vectors `honest` (n, d)."""
    mean = honest.mean(axis=0)
    if kind == "unit_vec":
        norm = float(np.linalg.norm(mean))
        return -mean / norm if norm > 0 else np.zeros_like(mean)
    if kind == "std":
        return -honest.std(axis=0, ddof=1) if honest.shape[0] > 1 else np.zeros_like(mean)
    if kind == "sign":
        return -np.sign(mean)
    raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {kind!r}")


def pairwise_distances(honest: Floats) -> Floats:
    """(n, n) Euclidean distances between the rows of `honest` (row by row: n·d memory, not n²·d)."""
    return np.stack([np.linalg.norm(honest - row[None, :], axis=1) for row in honest])


def min_max_accepts(honest: Floats) -> Callable[[Floats], bool]:
    bound = float(pairwise_distances(honest).max())
    return lambda x: float(np.linalg.norm(honest - x[None, :], axis=1).max()) <= bound


def min_sum_accepts(honest: Floats) -> Callable[[Floats], bool]:
    bound = float((pairwise_distances(honest) ** 2).sum(axis=1).max())
    return lambda x: float((np.linalg.norm(honest - x[None, :], axis=1) ** 2).sum()) <= bound


def in_spread(
    honest: Floats,
    direction: Floats,
    accepts: Callable[[Floats], bool],
    gamma_max: float | None = None,
    iters: int = 50,
) -> tuple[Floats, float]:
    """(x, γ): x = μ + γ·direction with the largest γ in [0, γ_max] that `accepts` (bisection)."""
    mean = honest.mean(axis=0)
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return mean, 0.0
    if gamma_max is None:
        spread = float(pairwise_distances(honest).max())
        gamma_max = (spread + float(np.linalg.norm(honest - mean, axis=1).max())) / norm
    gamma = largest_scale(lambda g: accepts(mean + g * direction), 0.0, gamma_max, iters)
    return mean + gamma * direction, gamma


class _AgrAgnostic(Behaviour):
    waits_for_honest = True

    def __init__(
        self, perturbation: str = "std", gamma_max: float | None = None, iters: int = 50
    ) -> None:
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if gamma_max is not None and gamma_max <= 0:
            raise ValueError(f"gamma_max must be > 0, got {gamma_max}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.perturbation = perturbation
        self.gamma_max = gamma_max
        self.iters = iters
        # the message of this step for every recipient: the same object, so the peer seals it once
        self._last: tuple[tuple[int, int], object, npt.NDArray[np.float32]] | None = None

    def craft(self, honest: Floats) -> tuple[Floats, float]:
        direction = perturbation(honest, self.perturbation)
        return in_spread(honest, direction, self.accepts(honest), self.gamma_max, self.iters)

    def accepts(self, honest: Floats) -> Callable[[Floats], bool]:
        raise NotImplementedError

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        step = (ctx.round, ctx.step)
        last = self._last
        if (
            last is not None
            and last[0] == step
            and ctx.honest_seen is not None
            and last[1] is ctx.honest_seen
        ):
            return Outgoing(vector=last[2])
        vector, _ = self.craft(honest_vectors(ctx))
        self._last = (step, ctx.honest_seen, vector.astype(np.float32))
        return Outgoing(vector=self._last[2])


class MinMax(_AgrAgnostic):
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): x = μ + γ·p, γ largest with
    max_i ‖x − h_i‖ ≤ max_{i,j} ‖h_i − h_j‖. See the module docstring."""

    name = "min_max"

    def accepts(self, honest: Floats) -> Callable[[Floats], bool]:
        return min_max_accepts(honest)


class MinSum(_AgrAgnostic):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): x = μ + γ·p, γ largest with
    Σ_i ‖x − h_i‖² ≤ max_i Σ_j ‖h_i − h_j‖². See the module docstring."""

    name = "min_sum"

    def accepts(self, honest: Floats) -> Callable[[Floats], bool]:
        return min_sum_accepts(honest)
