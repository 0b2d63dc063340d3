"""Model-poisoning attacks on the gossiped vector: sign flip, Gaussian noise, ALIE, IPM."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from p2pfed.attacks._honest import honest_vectors
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing


class SignFlip(Behaviour):
    """x_byz = −s · x_own: the attacker's own (trained) vector, negated and scaled. This is the model-level
    "bit flipping" attack of the decentralized literature (e.g. He, Karimireddy & Jaggi, 2022)."""

    name = "sign_flip"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        return Outgoing(vector=(-self.scale * ctx.own.astype(np.float64)).astype(np.float32))


class GaussianNoise(Behaviour):
    """x_byz = x_own + σ · N(0, I), fresh noise per recipient and step."""

    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = sigma

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        noise = ctx.rng.standard_normal(ctx.own.shape)
        return Outgoing(vector=(ctx.own.astype(np.float64) + self.sigma * noise).astype(np.float32))


def alie_z(n: int, f: int) -> float:
    """z_max of "A Little Is Enough" (Baruch, Baruch & Goldberg, 2019): with s = ⌊n/2 + 1⌋ − f supporters
    needed for a majority, the largest z with Φ(z) < (n − s) / n."""
    s = math.floor(n / 2 + 1) - f
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


class ALIE(Behaviour):
    """x_byz = μ − z · σ, per coordinate, over the honest vectors (σ the population standard deviation).

    z defaults to `alie_z(n, f)`; n and f default to (honest seen + colluders) and the number of colluders.
    """

    name = "alie"
    waits_for_honest = True

    def __init__(self, z: float | None = None, n: int | None = None, f: int | None = None) -> None:
        self.z = z
        self.n = n
        self.f = f

    def z_for(self, ctx: AttackContext, honest_count: int) -> float:
        if self.z is not None:
            return self.z
        f = self.f if self.f is not None else max(1, len(ctx.colluders))
        n = self.n if self.n is not None else honest_count + f
        return alie_z(n, f)

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        honest = honest_vectors(ctx)
        z = self.z_for(ctx, honest.shape[0])
        return Outgoing(vector=(honest.mean(axis=0) - z * honest.std(axis=0)).astype(np.float32))


class IPM(Behaviour):
    """Inner-product manipulation (Xie, Koyejo & Gupta, 2019): x_byz = −ε · mean of the honest vectors."""

    name = "ipm"
    waits_for_honest = True

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        return Outgoing(
            vector=(-self.epsilon * honest_vectors(ctx).mean(axis=0)).astype(np.float32)
        )
