"""The dissensus attack (He, Karimireddy & Jaggi, 2022): push each honest neighbour away from consensus.

For recipient i with vector x_i, whose honest neighbours' pull toward consensus is
S = Σ_h w_ih (x_h − x_i), a Byzantine neighbour of weight w_b sends x_i − ε · S / w_b, so that plain
gossip moves x_i by (1 − ε) · S: with ε > 1, away from its neighbours. As in the authors' code, each
attacker divides by the total Byzantine weight at the recipient; we assume equal mixing weights (the
attacker does not know the recipient's degrees), `share` attackers per recipient. The attacker does not
know the recipient's neighbours either: it estimates S / w_b as k × the mean pull of the honest vectors
the colluders saw (`honest_seen`), k = the number of honest neighbours it has itself besides the
recipient (summing over every honest vector seen network-wide would push ~n/k times harder than the
paper). If the recipient sent us nothing this step, our own vector stands in for x_i.
"""

from __future__ import annotations

import numpy as np

from p2pfed.attacks._honest import honest_vectors, recipient_vector
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing


class Dissensus(Behaviour):
    name = "dissensus"
    waits_for_honest = True

    def __init__(self, epsilon: float = 1.5, share: int = 1) -> None:
        self.epsilon = epsilon
        self.share = max(1, share)

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        target = recipient_vector(ctx)
        x_i = ctx.own.astype(np.float64) if target is None else target
        honest = honest_vectors(ctx)
        others = honest[np.any(honest != x_i[None, :], axis=1)]
        if not others.shape[0]:
            return Outgoing(vector=x_i.astype(np.float32))
        k = sum(s not in ctx.colluders and s != ctx.recipient for s in ctx.senders) or 1
        pull = k * (others - x_i[None, :]).mean(axis=0)
        return Outgoing(vector=(x_i - self.epsilon * pull / self.share).astype(np.float32))
