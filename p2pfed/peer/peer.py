"""The round loop of one peer: train → gossip Q steps (send, collect, verify, defend, mix) → remember.

The same `Peer` runs in `p2pfed sim` (memory transport, many peers per process) and in `p2pfed join`
(libp2p transport, one peer per process). Blocking torch work runs in worker threads behind a shared
capacity limiter, so gossip keeps flowing while a peer trains.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import trio

from p2pfed.attacks.base import AttackContext, Behaviour, Collusion, Outgoing
from p2pfed.config import GossipConfig
from p2pfed.net.transport import Delivery, Transport
from p2pfed.peer.checkpoint import Checkpoint, save_checkpoint
from p2pfed.peer.envelopes import off_loop
from p2pfed.peer.local import LocalModel
from p2pfed.peer.topology import metropolis_row, renormalize
from p2pfed.robust.base import Defence, DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.robust.reputation import ReputationTable
from p2pfed.seeds import Seed
from p2pfed.types import FloatVector, Outcome, Verdict
from p2pfed.wire import (
    Accepted,
    Admission,
    Identity,
    Inbox,
    Limits,
    Rejected,
    RejectReason,
    Schema,
    open_envelope,
    seal,
)

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

T = TypeVar("T")
BlockingRunner = Callable[..., Awaitable[Any]]
"""How the peer runs blocking work: in a worker thread by default; inline in deterministic tests."""

TENSOR = "adapter"  # the single tensor name of the flat vector in an envelope's payload
FAR_FUTURE = 1_000_000  # rounds ahead whose signed updates still count as evidence of the network's round


def recipient_key(peer_id: str) -> int:
    """A stable 64-bit integer per peer ID (the same in every process), for per-recipient seeds."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class RoundReport:
    """What a peer reports at the end of each round (metrics, consensus distance, plots)."""

    round: int
    peer: str
    index: int
    byzantine: bool
    vector: FloatVector
    train_loss: float
    accuracy: float | None
    loss: float | None
    bytes_sent: int
    bytes_received: int
    seconds: float
    outcomes: dict[str, int]  # verdict outcome -> count, this round
    rejections: dict[str, int]  # rejection reason -> count, cumulative
    reputation: dict[str, float]


@dataclass
class _StepBuffer:
    updates: dict[str, FloatVector] = field(default_factory=dict)
    equivocated: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)  # sent something that failed verification
    answered: set[str] = field(default_factory=set)  # sent something unusable (invalid or stale) instead

    def settled(self, sender: str) -> bool:
        """Whether `sender` has sent what it will send for this step: an update, an equivocation, or junk."""
        return sender in self.updates or sender in self.equivocated or sender in self.answered


class Peer:
    def __init__(
        self,
        *,
        index: int,
        identity: Identity,
        transport: Transport,
        local: LocalModel,
        run_digest: bytes,
        schema: Schema,
        neighbour_degrees: dict[str, int],
        gossip: GossipConfig,
        defence: Defence,
        initial: FloatVector,
        seed: int,
        compute: trio.CapacityLimiter,
        behaviour: Behaviour | None = None,
        collusion: Collusion | None = None,
        colluders: frozenset[str] = frozenset(),
        reputation: ReputationTable | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        evaluate_every: int = 1,
        checkpoint_dir: Path | None = None,
        start_round: int = 0,
        run_blocking: BlockingRunner | None = None,
        neighbourhood: Callable[[], dict[str, int]] | None = None,
        adopt_neighbours: bool = False,
    ) -> None:
        self.index = index
        self.identity = identity
        self.transport = transport
        self.local = local
        self.run_digest = run_digest
        self.schema = schema
        self.neighbour_degrees = dict(neighbour_degrees)
        self.gossip = gossip
        self.defence = defence
        self.vector = initial.astype(np.float32, copy=True)
        self.seed = seed
        self.compute = compute
        self.behaviour = behaviour or Behaviour()
        self.byzantine = behaviour is not None and behaviour.name != "honest"
        self.collusion = collusion
        self.colluders = colluders
        self.reputation = reputation or ReputationTable()
        self.on_round = on_round
        self.evaluate_every = evaluate_every
        self.checkpoint_dir = checkpoint_dir
        self.round = start_round
        self.step = 0  # the gossip step in progress
        self.limits = Limits()
        self.inbox = Inbox(window=gossip.round_window)
        self.rejections: Counter[str] = Counter()
        self._buffers: dict[tuple[int, int], _StepBuffer] = {}
        self._arrival = trio.Event()
        # What replay and free-rider attacks draw on; an honest peer keeps none of it (memory per peer).
        history = 4 * max(1, gossip.gossip_steps) if self.byzantine else 0
        self._sent: deque[tuple[int, int, bytes]] = deque(maxlen=history)
        # (round, step, vector, envelope) of the last seal: one envelope serves every partner of a step
        self._last_seal: tuple[int, int, FloatVector, bytes] | None = None
        self._received: deque[tuple[int, int, str, FloatVector]] = deque(maxlen=16 * history)
        self._bytes_sent = 0
        self._bytes_received = 0
        self.finished = trio.Event()
        self._run_blocking = run_blocking or self._in_worker_thread
        self.neighbourhood = neighbourhood  # a live network's neighbour set; refreshed every round
        self._adopt = adopt_neighbours  # next mix ignores our own vector (late joiner, or far behind)
        self._latest_round: dict[str, int] = {}  # newest round each neighbour signed an update for
        self._anchor: FloatVector | None = None  # our vector at the start of this round
        self._trained: FloatVector | None = None  # our vector right after this round's local training

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def rng(self, *purpose: int) -> np.random.Generator:
        """A generator seeded from the run seed, this peer's index and a purpose: (round, Seed.LOCAL_TRAINING),
        (round, step + 1, Seed.DEFENCE), or (round, step + 1, recipient_key(to)) for an attack's context."""
        return np.random.default_rng([self.seed, self.index, *purpose])

    async def run(self, *, rounds: int, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop)
            task_status.started()
            while self.round < rounds:
                self._refresh_neighbourhood()
                self._catch_up()
                if self.round >= rounds:
                    break
                await self.run_round(self.round)
                self.round += 1
            self.finished.set()
            nursery.cancel_scope.cancel()

    def _refresh_neighbourhood(self) -> None:
        if self.neighbourhood is not None:
            self.neighbour_degrees = dict(self.neighbourhood())

    def _is_neighbour(self, peer: str) -> bool:
        """A neighbour now; in a live network also one that connected since our last refresh."""
        if peer in self.neighbour_degrees:
            return True
        return self.neighbourhood is not None and peer in self.neighbourhood()

    def _catch_up(self) -> None:
        """Skip to the network's round when most neighbours are ahead of us (we joined late or were down).

        The median of the neighbours' newest signed rounds is used, so one lying neighbour cannot make us
        jump. Being behind by more than the round window means our model is stale: the next mix adopts the
        neighbours' vectors instead of averaging them with ours.
        """
        target = self.network_round()
        if target is not None and target > self.round:
            log.info("peer %d: catching up from round %d to the network's round %d", self.index, self.round, target)
            if target - self.round > self.gossip.round_window:
                self._adopt = True
            self.round = target
            self.inbox.advance(target)

    def network_round(self) -> int | None:
        """The median of the neighbours' newest signed rounds, or None before any arrived."""
        rounds = [self._latest_round[n] for n in self.neighbour_degrees if n in self._latest_round]
        return int(np.median(rounds)) if rounds else None

    async def run_round(self, rnd: int) -> None:
        started = time.perf_counter()
        self.step = 0
        sent0, received0 = self._bytes_sent, self._bytes_received
        anchor = self.vector
        training_rng = self.rng(rnd, Seed.LOCAL_TRAINING)
        self.vector, train_loss = await self._blocking(self.local.train, self.vector, training_rng)
        self._anchor, self._trained = anchor, self.vector  # our own evidence, for the defence
        outcomes: Counter[str] = Counter()
        for step in range(self.gossip.gossip_steps):
            verdicts = await self.gossip_step(rnd, step)
            outcomes.update(v.outcome.value for v in verdicts)
        self.reputation.end_round(rnd)
        accuracy = loss = None
        if not self.byzantine and self.evaluate_every and (rnd + 1) % self.evaluate_every == 0:
            result = await self._blocking(self.local.evaluate, self.vector)
            accuracy, loss = result.accuracy, result.loss
        if self.checkpoint_dir is not None:
            state = Checkpoint(round=rnd + 1, vector=self.vector, reputation=self.reputation.to_dict())
            await self._blocking(save_checkpoint, self.checkpoint_dir, state)
        self._forget_before(rnd + 1 - self.gossip.round_window)
        self.inbox.advance(rnd + 1)
        if self.on_round is not None:
            self.on_round(
                RoundReport(
                    round=rnd,
                    peer=self.peer_id,
                    index=self.index,
                    byzantine=self.byzantine,
                    vector=self.vector.copy(),
                    train_loss=train_loss,
                    accuracy=accuracy,
                    loss=loss,
                    bytes_sent=self._bytes_sent - sent0,
                    bytes_received=self._bytes_received - received0,
                    seconds=time.perf_counter() - started,
                    outcomes=dict(outcomes),
                    rejections=dict(self.rejections),
                    reputation=self.reputation.snapshot(),
                )
            )

    async def gossip_step(self, rnd: int, step: int) -> list[Verdict]:
        """Send our vector, collect our neighbours', defend and mix. Returns the verdicts for reputation."""
        self.step = step
        self._refresh_neighbourhood()  # a live network's neighbours come and go between steps
        # We send to every neighbour (a quarantined one may be waiting for us, and sending is cheap), but
        # wait only for those we trust: a quarantined neighbour never holds up our round.
        everyone = list(self.neighbour_degrees)
        trusted = [n for n in everyone if not self.reputation.is_quarantined(n)]
        if self.behaviour.waits_for_honest:
            await self.wait_updates(rnd, step, [n for n in trusted if n not in self.colluders])
            await self._send_all(rnd, step, everyone)
            if self.byzantine:  # an attacker does not mix; it keeps training its own model
                return []
        else:
            await self._send_all(rnd, step, everyone)
        await self.wait_updates(rnd, step, trusted)
        return await self._defend_and_mix(rnd, step)

    async def wait_updates(self, rnd: int, step: int, expected: list[str]) -> None:
        """Return once every expected neighbour's update for (rnd, step) arrived, or the step deadline passed."""
        with trio.move_on_after(self.gossip.step_timeout):
            while True:
                arrival = self._arrival
                buffer = self._buffers.get((rnd, step))
                if all(buffer is not None and buffer.settled(n) for n in expected):
                    return
                ahead = self.network_round()
                if ahead is not None and ahead > rnd + self.gossip.round_window:
                    return  # the network moved on; the round loop catches up
                await arrival.wait()

    async def _send_all(self, rnd: int, step: int, partners: list[str]) -> None:
        buffer = self._buffers.get((rnd, step), _StepBuffer())
        senders = tuple(sorted(buffer.updates))
        received = (
            np.stack([buffer.updates[s] for s in senders])
            if senders
            else np.zeros((0, self.vector.size), dtype=np.float32)
        )
        if self.collusion is not None and self.behaviour.waits_for_honest:
            self.collusion.post(rnd, step, {s: buffer.updates[s] for s in senders if s not in self.colluders})
        honest_seen = self.collusion.seen(rnd, step) if self.collusion is not None else None
        async with trio.open_nursery() as nursery:
            for to in partners:
                context = AttackContext(
                    round=rnd,
                    step=step,
                    recipient=to,
                    own=self.vector,
                    received=received,
                    senders=senders,
                    colluders=self.colluders,
                    honest_seen=honest_seen,
                    sent_history=tuple(self._sent),
                    received_history=tuple(self._received),
                    rng=self.rng(rnd, step + 1, recipient_key(to)),
                    defence=self.defence,
                    evaluate=self.local.validation_scores,
                    anchor=self._anchor,
                    collusion=self.collusion,
                )
                if self.behaviour.uses_model:  # it scores vectors: behind the compute limiter
                    message = await self._blocking(self.behaviour.outgoing, context)
                else:
                    message = self.behaviour.outgoing(context)
                if message is not None:
                    nursery.start_soon(self._send_one, to, await self._encode(rnd, step, message))

    async def _encode(self, rnd: int, step: int, message: Outgoing) -> bytes:
        if message.raw is not None:
            return message.raw
        claimed_round = rnd if message.round is None else message.round
        claimed_step = step if message.step is None else message.step
        vector = self.vector if message.vector is None else message.vector
        last = self._last_seal
        if last is not None and last[:2] == (claimed_round, claimed_step) and last[2] is vector:
            return last[3]  # the same vector for another partner: the envelope names no recipient
        tensors = {TENSOR: np.ascontiguousarray(vector, dtype=np.float32)}
        envelope = await off_loop(
            tensors[TENSOR].nbytes,
            partial(
                seal,
                self.identity,
                run_digest=self.run_digest,
                round=claimed_round,
                step=claimed_step,
                tensors=tensors,
            ),
        )
        self._sent.append((claimed_round, claimed_step, envelope))
        self._last_seal = (claimed_round, claimed_step, vector, envelope)
        return envelope

    async def _send_one(self, to: str, data: bytes) -> None:
        with trio.move_on_after(self.gossip.step_timeout):
            if await self.transport.send(to, data):
                self._bytes_sent += len(data)
                return
        log.info("peer %d: could not deliver to %s", self.index, to[:16])

    async def _receive_loop(self) -> None:
        async for delivery in self.transport.incoming:
            self._bytes_received += delivery.nbytes
            verdict = await off_loop(
                delivery.nbytes,
                partial(
                    open_envelope,
                    delivery.chunks,
                    remote=delivery.remote,
                    run_digest=self.run_digest,
                    schema=self.schema,
                    limits=self.limits,
                    round_window=(self.round - self.gossip.round_window, self.round + FAR_FUTURE),
                    now=time.time(),
                ),
            )
            self._accept(delivery, verdict)
            await trio.lowlevel.checkpoint()

    def _accept(self, delivery: Delivery, verdict: Accepted | Rejected) -> None:
        """File one verified delivery under its (round, step); every rejection is logged and counted."""
        if not isinstance(verdict, Accepted):
            self._reject(delivery.remote, verdict.reason.value, verdict.detail)
            if delivery.remote in self.neighbour_degrees:
                # An honest neighbour sends one valid update per step: whatever it sent instead answers one
                # of its steps (no waiting out the deadline for a replayer); only non-late junk costs reputation.
                self._unanswered_step(delivery.remote).answered.add(delivery.remote)
                if verdict.reason not in (RejectReason.STALE_ROUND, RejectReason.FUTURE_ROUND):
                    self._current_step().invalid.add(delivery.remote)
                self._notify_arrival()
            return
        if not self._is_neighbour(verdict.sender):
            self._reject(delivery.remote, "not_a_neighbour", "")
            return
        self._latest_round[verdict.sender] = max(verdict.round, self._latest_round.get(verdict.sender, -1))
        if verdict.round > self.round + self.gossip.round_window:
            self._notify_arrival()  # evidence that the network is ahead: a waiting step should give up
            return
        key = (verdict.round, verdict.step)
        admission = self.inbox.admit(verdict.sender, verdict.round, verdict.step, verdict.payload_digest)
        if admission is not Admission.NEW and admission is not Admission.EQUIVOCATION:
            self._reject(delivery.remote, admission.value, f"round {verdict.round} step {verdict.step}")
            self._unanswered_step(verdict.sender).answered.add(verdict.sender)  # a replay answers a step too
            self._notify_arrival()
            return
        if verdict.round < self.round:  # from a past round: late, or replayed; either way it answers now
            self._unanswered_step(verdict.sender).answered.add(verdict.sender)
        buffer = self._buffers.setdefault(key, _StepBuffer())
        if admission is Admission.EQUIVOCATION:
            self._reject(delivery.remote, "equivocation", f"round {verdict.round} step {verdict.step}")
            buffer.updates.pop(verdict.sender, None)
            buffer.equivocated.add(verdict.sender)
        elif verdict.sender not in buffer.equivocated:
            vector = verdict.tensors[TENSOR]
            buffer.updates[verdict.sender] = vector
            self._received.append((verdict.round, verdict.step, verdict.sender, vector))
        self._notify_arrival()

    def _notify_arrival(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    def _reject(self, remote: str, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        log.info("peer %d rejected a message from %s: %s %s", self.index, remote[:16], reason, detail)

    def _unanswered_step(self, sender: str) -> _StepBuffer:
        """The buffer of the first step, from the one in progress on (into the next round), that `sender` has
        not settled yet: a message that brings nothing new answers that one. A sender that does not wait
        for us can be a step or a round ahead, so crediting the step in progress would leave one of its
        later steps unanswered and hold us up until the deadline."""
        steps = self.gossip.gossip_steps
        for position in range(self.round * steps + self.step, (self.round + 2) * steps):
            buffer = self._buffers.setdefault(divmod(position, steps), _StepBuffer())
            if not buffer.settled(sender):
                return buffer
        return self._current_step()

    def _current_step(self) -> _StepBuffer:
        return self._buffers.setdefault((self.round, self.step), _StepBuffer())

    async def _defend_and_mix(self, rnd: int, step: int) -> list[Verdict]:
        buffer = self._buffers.get((rnd, step), _StepBuffer())
        quarantined = [s for s in buffer.updates if self.reputation.is_quarantined(s)]
        # only this step's neighbours are mixed: one that connected mid-step joins at the next step
        arrived = sorted(s for s in buffer.updates if s not in quarantined and s in self.neighbour_degrees)
        self_weight, weights = metropolis_row(len(self.neighbour_degrees), self.neighbour_degrees)
        anchor, trained = self._anchor, self._trained
        if self._adopt and arrived:  # far behind: take the neighbours' vectors, whatever our own update says
            self_weight, self._adopt = 0.0, False
            anchor = trained = None
        inp = DefenceInput(
            own=self.vector,
            received=(
                np.stack([buffer.updates[s] for s in arrived])
                if arrived
                else np.zeros((0, self.vector.size), dtype=np.float32)
            ),
            senders=tuple(arrived),
            mixing_weights=renormalize(self_weight, weights, arrived),
            reputation=self.reputation.snapshot(),
            evaluate=self.local.validation_scores,
            rng=self.rng(rnd, step + 1, Seed.DEFENCE),
            round=rnd,
            anchor=anchor,
            trained=trained,
        )
        result = await self._blocking(self.defence, inp)
        self.vector = result.mixed.astype(np.float32, copy=False)
        verdicts = list(result.verdicts)
        verdicts += [Verdict(s, Outcome.QUARANTINED, reason=Reason.REPUTATION) for s in quarantined]
        verdicts += [Verdict(s, Outcome.EQUIVOCATED, reason=Reason.TWO_UPDATES) for s in sorted(buffer.equivocated)]
        verdicts += [Verdict(s, Outcome.INVALID, reason=Reason.FAILED_VERIFICATION) for s in sorted(buffer.invalid)]
        seen = {v.sender for v in verdicts}
        verdicts += [
            Verdict(s, Outcome.MISSING, reason=Reason.NOT_IN_TIME) for s in self.neighbour_degrees if s not in seen
        ]
        self.reputation.update(verdicts, rnd)
        return verdicts

    def _forget_before(self, rnd: int) -> None:
        for key in [k for k in self._buffers if k[0] < rnd]:
            del self._buffers[key]

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run_blocking(fn, *args)

    async def _in_worker_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking torch work runs in a worker thread, one job at a time per compute limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.compute)
