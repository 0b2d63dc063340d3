"""The patient (sleeper) attacker: honest for `strike_round` rounds, earning reputation, then an inner attack.

This is the on-off attack of the trust-management literature: a node behaves well until it is trusted,
then misbehaves, exploiting a reputation that remembers good behaviour (e.g. Ishmanov, Kim & Nam, "A
Secure Trust Establishment Scheme for Wireless Sensor Networks", Sensors 14(1), 2014, which defends
against it; Liu, Liu, Ni, Zhang, Wei & Hossain, "Learning to evade: Adaptive and stealthy attack on
reputation-based federated learning", IEEE Communications Letters 30, 2026, which alternates benign and
malicious participation against FL reputation defences). Here the switch happens once:

    rounds t < strike_round:  the peer is honest: it does not wait for its neighbours, it mixes with its
                              own defence, and it sends its own (honestly trained, mixed) vector;
    rounds t ≥ strike_round:  every message is `inner.outgoing(ctx)`.

Its labels are never poisoned (label poisoning happens once, before round 0), so a data-poisoning inner
attack is refused. `waits_for_honest` follows the inner attack from the strike on: the peer reads it
before each gossip step, and we set it after each message from the step we expect next. The number of
gossip steps per round is learnt from round 0, so with `strike_round` ≥ 2 the first striking step already
waits; with `strike_round` = 1 that one step is sent without this step's honest vectors (the inner attack
then falls back on what it has, see `_honest.honest_vectors`).
"""

from __future__ import annotations

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.kinds import refuse_label_poisoning


class Patient(Behaviour):
    name = "patient"

    def __init__(self, inner: Behaviour | None = None, strike_round: int = 3) -> None:
        self.inner = inner or Dissensus()
        refuse_label_poisoning(self.inner, "patient")
        if strike_round < 0:
            raise ValueError(f"strike_round must be >= 0, got {strike_round}")
        self.strike_round = strike_round
        self.waits_for_honest = self.inner.waits_for_honest and strike_round == 0
        self.uses_model = self.inner.uses_model
        self._max_step: dict[int, int] = {}  # round -> the largest gossip step seen in it

    def outgoing(self, ctx: AttackContext) -> Outgoing | None:
        self._max_step[ctx.round] = max(self._max_step.get(ctx.round, 0), ctx.step)
        if ctx.round >= self.strike_round:
            message = self.inner.outgoing(ctx)
        else:
            message = Outgoing(vector=ctx.own)
        self.waits_for_honest = (
            self.inner.waits_for_honest and self._next_round(ctx) >= self.strike_round
        )
        return message

    def _next_round(self, ctx: AttackContext) -> int:
        """The round of the gossip step after this one: the next round after the last step of a round
        (the largest step seen in any earlier round), else this one."""
        earlier = [s for r, s in self._max_step.items() if r < ctx.round]
        if earlier and ctx.step >= max(earlier):
            return ctx.round + 1
        return ctx.round
