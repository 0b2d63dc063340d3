"""The targeted attacker: an inner attack aimed at one victim peer, honest toward every other peer.

Every message to the victim is `inner.outgoing(ctx)`; every other recipient gets the attacker's own vector
(what an honest peer sends). Averages over the honest peers then show 1/n of the damage, which is the
point: a defence has to protect each peer, not the mean. No single paper defines this attacker; it is the
threat that the per-node guarantees of Byzantine-robust gossip are about (He, Karimireddy & Jaggi,
"Byzantine-robust decentralized learning via ClippedGossip", 2022; Gaucher, Dieuleveut & Hendrikx,
"Unified Breakdown Analysis for Byzantine Robust Gossip", ICML 2025, which bound the damage at each honest
node through its Byzantine weight), and aiming at the node with the most Byzantine neighbours tests
exactly that bound.

The victim:
- `victim` = a peer ID: that peer, from round 0;
- `victim` = an int: the simulation's peer of that index, i.e. `Identity.for_peer(seed, victim)` with
  `seed` the run seed (`p2pfed sim --seed`, default 0);
- `victim` = None (default): the honest peer with the most Byzantine neighbours (ties: the smallest peer
  ID). The colluders learn their neighbourhoods in round 0, where they all behave honestly and record
  whom they send to on a shared `VictimBoard` (`Targeted.group`, which `load_behaviour` uses); the first
  of them to reach round 1 fixes the victim for all. Deterministic as long as every attacker has sent in
  round 0 before any starts round 1, which the round loop gives when no attacker is starved of updates.
  Without a shared board (one attacker, or `p2pfed join` processes) each attacker picks among its own
  neighbours: the one with the smallest peer ID.

Data-poisoning inner attacks are refused: their labels would be poisoned for every recipient.
"""

from __future__ import annotations

import logging

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.kinds import refuse_label_poisoning
from p2pfed.wire.identity import Identity

log = logging.getLogger(__name__)


class VictimBoard:
    """Whom each colluder sends to, and the victim once fixed."""

    def __init__(self) -> None:
        self.recipients: dict[int, set[str]] = {}
        self.victim: str | None = None

    def report(self, member: int, recipient: str) -> None:
        self.recipients.setdefault(member, set()).add(recipient)

    def fix_victim(self) -> str | None:
        """The honest peer most colluders send to (ties: the smallest ID); None if they know nobody."""
        if self.victim is None:
            counts: dict[str, int] = {}
            for sent_to in self.recipients.values():
                for peer in sent_to:
                    counts[peer] = counts.get(peer, 0) + 1
            if counts:
                top = max(counts.values())
                self.victim = min(p for p, c in counts.items() if c == top)
                log.info("targeted: victim %s (%d Byzantine neighbours)", self.victim, top)
        return self.victim


class Targeted(Behaviour):
    name = "targeted"

    def __init__(
        self,
        inner: Behaviour | None = None,
        victim: str | int | None = None,
        seed: int = 0,
        board: VictimBoard | None = None,
        member: int = 0,
    ) -> None:
        self.inner = inner or Dissensus()
        refuse_label_poisoning(self.inner, "targeted")
        if isinstance(victim, bool) or not isinstance(victim, str | int | None):
            raise ValueError(f"victim must be a peer ID, a peer index or None, got {victim!r}")
        if isinstance(victim, int):
            if victim < 0:
                raise ValueError(f"a victim index must be >= 0, got {victim}")
            victim = Identity.for_peer(seed, victim).peer_id
        self.victim = victim
        self.board = board or VictimBoard()
        self.member = member
        self.waits_for_honest = self.inner.waits_for_honest
        self.uses_model = self.inner.uses_model

    @classmethod
    def group(
        cls, inners: list[Behaviour], victim: str | int | None = None, seed: int = 0
    ) -> list[Targeted]:
        """One attacker per inner behaviour, sharing one board (so one victim)."""
        board = VictimBoard()
        return [
            cls(inner, victim=victim, seed=seed, board=board, member=i)
            for i, inner in enumerate(inners)
        ]

    def target(self, ctx: AttackContext) -> str | None:
        if self.victim is not None:
            return self.victim
        if ctx.recipient not in ctx.colluders:
            self.board.report(self.member, ctx.recipient)
        return self.board.fix_victim() if ctx.round >= 1 else None

    def outgoing(self, ctx: AttackContext) -> Outgoing | None:
        message = (
            self.inner.outgoing(ctx)
            if ctx.recipient == self.target(ctx)
            else Outgoing(vector=ctx.own)
        )
        self.waits_for_honest = (
            self.inner.waits_for_honest
        )  # a patient inner attack changes its own
        return message
