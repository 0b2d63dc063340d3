"""A Byzantine peer: the honest `Peer` with an `Attacker` hooked into its gossip step.

The attacker owns everything an attack needs and an honest peer does not keep: the behaviour (see
`p2pfed.attacks.base`), its colluders and their shared board, and the histories of what it sent and
received (replay and free-rider attacks draw on them). The Peer calls it at two points: `gossip_step`
(instead of its own) and `remember` (its intake's hook, for every update filed).
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import trio

from p2pfed.attacks.base import AttackContext, Behaviour, Collusion, Outgoing
from p2pfed.types import FloatVector, Verdict

if TYPE_CHECKING:
    from p2pfed.peer.peer import Peer


def recipient_key(peer_id: str) -> int:
    """A stable 64-bit integer per peer ID (the same in every process), for per-recipient seeds."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "little")


class Attacker:
    """A Byzantine `behaviour` and its state; `colluders` are the peer IDs of its whole collusion."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        gossip_steps: int,
        colluders: frozenset[str] = frozenset(),
        collusion: Collusion | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.colluders = colluders
        self.collusion = collusion
        history = 4 * max(1, gossip_steps)  # enough for any attack's lag; memory per attacker
        self.sent: deque[tuple[int, int, bytes]] = deque(maxlen=history)
        self.received: deque[tuple[int, int, str, FloatVector]] = deque(maxlen=16 * history)

    @property
    def name(self) -> str:
        return self.behaviour.name

    def remember(self, rnd: int, step: int, sender: str, vector: FloatVector) -> None:
        """Called for every update the Peer filed: the received history."""
        self.received.append((rnd, step, sender, vector))

    async def gossip_step(self, peer: Peer, rnd: int, step: int, everyone: list[str], trusted: list[str]) -> list[Verdict]:
        """An omniscient attack (`waits_for_honest`) first collects this step's honest updates, sends,
        and does not mix (it keeps training its own model); any other sends, then mixes as honest peers do."""
        if self.behaviour.waits_for_honest:
            await peer.wait_updates(rnd, step, [n for n in trusted if n not in self.colluders])
            await self._send_all(peer, rnd, step, everyone)
            peer.ledger.release(rnd, step)  # it does not mix: what it collected is spent once sent
            return []
        await self._send_all(peer, rnd, step, everyone)
        await peer.wait_updates(rnd, step, trusted)
        return await peer.defend_and_mix(rnd, step)

    async def _send_all(self, peer: Peer, rnd: int, step: int, partners: list[str]) -> None:
        updates = peer.ledger.updates(rnd, step)
        senders = tuple(sorted(updates))
        received = (
            np.stack([updates[s] for s in senders]) if senders else np.zeros((0, peer.vector.size), dtype=np.float32)
        )
        if self.collusion is not None and self.behaviour.waits_for_honest:
            self.collusion.post(rnd, step, {s: updates[s] for s in senders if s not in self.colluders})
        honest_seen = self.collusion.seen(rnd, step) if self.collusion is not None else None
        async with trio.open_nursery() as nursery:
            for to in partners:
                context = AttackContext(
                    round=rnd,
                    step=step,
                    recipient=to,
                    own=peer.vector,
                    received=received,
                    senders=senders,
                    colluders=self.colluders,
                    honest_seen=honest_seen,
                    sent_history=tuple(self.sent),
                    received_history=tuple(self.received),
                    rng=peer.rng(rnd, step + 1, recipient_key(to)),
                    defence=peer.defence,
                    evaluate=peer.local.validation_scores,
                    anchor=peer.anchor,
                    collusion=self.collusion,
                )
                if self.behaviour.uses_model:  # it scores vectors: behind the compute limiter
                    message = await peer.blocking(self.behaviour.outgoing, context)
                else:
                    message = self.behaviour.outgoing(context)
                if message is not None:
                    nursery.start_soon(peer.send_one, to, await self._encode(peer, rnd, step, message))

    async def _encode(self, peer: Peer, rnd: int, step: int, message: Outgoing) -> bytes:
        if message.raw is not None:
            return message.raw  # a replay: sent verbatim, not a new signature
        claimed_round = rnd if message.round is None else message.round
        claimed_step = step if message.step is None else message.step
        vector = peer.vector if message.vector is None else message.vector
        envelope = await peer.seal_update(claimed_round, claimed_step, vector)
        if not self.sent or self.sent[-1][2] is not envelope:  # the Peer reuses a seal for every partner
            self.sent.append((claimed_round, claimed_step, envelope))
        return envelope
