"""The round loop of one peer: train → gossip Q steps (send, collect, verify, defend, mix) → remember.

The same `Peer` runs in `p2pfed sim` (memory transport, many peers per process) and in `p2pfed join`
(libp2p transport, one peer per process). Blocking torch work runs in worker threads behind a shared
capacity limiter, so gossip keeps flowing while a peer trains.

What each neighbour sent for each step is kept in a pure `StepLedger` (`ledger.py`); a Byzantine peer is
this Peer with an `Attacker` hooked into its gossip step (`byzantine.py`); an honest one keeps no attack
state. The peer catches up with the network's round from its neighbours' signed updates only (`catch_up`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import trio

from p2pfed.attacks.base import Behaviour
from p2pfed.config import GossipConfig
from p2pfed.net.membership import Evidence, EvidenceKind
from p2pfed.net.transport import Transport
from p2pfed.peer.byzantine import Attacker
from p2pfed.peer.checkpoint import (
    Checkpoint,
    ResumePoint,
    mark_signed,
    save_checkpoint,
    save_sealed,
)
from p2pfed.peer.envelopes import off_loop
from p2pfed.peer.intake import TENSOR, Intake
from p2pfed.peer.ledger import StepLedger
from p2pfed.peer.local import LocalModel
from p2pfed.peer.report import RoundReport
from p2pfed.peer.schedule import restore_update
from p2pfed.peer.topology import metropolis_row, renormalize
from p2pfed.robust.base import Defence, DefenceInput
from p2pfed.robust.reputation import ReputationTable
from p2pfed.seeds import Seed
from p2pfed.types import FloatVector, Outcome, Verdict
from p2pfed.wire import Accepted, Identity, Limits, Schema, open_envelope, seal

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

__all__ = ["FAR_FUTURE", "TENSOR", "BlockingRunner", "Peer", "ResumedRound", "RoundReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")
BlockingRunner = Callable[..., Awaitable[Any]]
"""How the peer runs blocking work: in a worker thread by default; inline in deterministic tests."""

WELCOME_CHECK_S = 1.0  # a waiting step looks again this often for held updates of new neighbours
LINGER_CHECK_S = 1.0  # while serving late neighbours: how often to look at their announced rounds again
FAR_FUTURE = 1_000_000  # rounds ahead whose signed updates still count as evidence of the network's round


class Peer:
    """One peer. `neighbour_degrees` is its one source of neighbours (and their degrees, for the mixing
    weights): a dict for a fixed topology, or a live view (`topology.LiveNeighbours`) of a network's; it
    is read at every gossip step. `behaviour` makes the peer Byzantine (a bare `Behaviour`, or an
    `Attacker` that knows its colluders); `checkpoint_dir` gets an atomic checkpoint after every round;
    `alone_wait_s` > 0 holds the next round back after one in which no neighbour's update arrived
    (`wait_for_company`): `join` sets it, sims start every peer together and leave it 0."""

    def __init__(
        self,
        *,
        index: int,
        identity: Identity,
        transport: Transport,
        local: LocalModel,
        run_digest: bytes,
        schema: Schema,
        neighbour_degrees: Mapping[str, int],
        gossip: GossipConfig,
        defence: Defence,
        initial: FloatVector,
        seed: int,
        compute: trio.CapacityLimiter,
        behaviour: Behaviour | Attacker | None = None,
        reputation: ReputationTable | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        on_catch_up: Callable[[int, int], None] | None = None,  # (our round, the network's round)
        evaluate_every: int = 1,
        checkpoint_dir: Path | None = None,
        start_round: int = 0,
        mixed_through: int | None = None,  # a resumed peer: its checkpoint's round (default start_round)
        resumed: ResumePoint | None = None,  # a restarted peer: its envelopes of `start_round` already out
        run_blocking: BlockingRunner | None = None,
        alone_wait_s: float = 0.0,
    ) -> None:
        self.index = index
        self.identity = identity
        self.transport = transport
        self.local = local
        self.run_digest = run_digest
        self.schema = schema
        self._neighbours = neighbour_degrees
        self.neighbour_degrees = dict(neighbour_degrees.items())  # this step's neighbours
        self.gossip = gossip
        self.defence = defence
        self.vector = initial.astype(np.float32, copy=True)
        self.seed = seed
        self.compute = compute
        if isinstance(behaviour, Behaviour):
            behaviour = Attacker(behaviour, gossip_steps=gossip.gossip_steps)
        self.attacker = behaviour if behaviour is not None and behaviour.name != "honest" else None
        self.reputation = reputation or ReputationTable()
        self.on_round = on_round
        self.on_catch_up = on_catch_up
        self.evaluate_every = evaluate_every
        self.checkpoint_dir = checkpoint_dir
        self.round = start_round
        self.alone_wait_s = alone_wait_s
        self.step = 0  # the gossip step in progress
        self.limits = Limits()
        self.intake = Intake(gossip, index=index, on_update=self.attacker.remember if self.attacker else None)
        self.finished = trio.Event()
        self._arrival = trio.Event()
        # (round, step, vector, envelope) of the last seal: one envelope serves every partner of a step
        self._last_seal: tuple[int, int, FloatVector, bytes] | None = None
        self._sealed: dict[int, bytes] = {}  # step -> our envelope, for the round of the last seal
        self._delivered: dict[int, set[str]] = {}  # step -> neighbours that envelope reached
        self._marked = start_round - 1  # the newest round recorded as signed (`mark_signed`)
        self._bytes_sent = 0
        self._bytes_received = 0
        self._run_blocking = run_blocking or self._in_worker_thread
        self._rounds_run = 0
        self._adopt = False  # next mix ignores our own vector (we joined late, or fell far behind)
        self._adopting = -1  # the round whose mixes all ignore our own vector: the one adoption began in
        # our vector holds the neighbours' models up to this round: the last round whose mixes kept at
        # least half of the updates due (not missing, dropped or quarantined)
        self._mixed_through = start_round if mixed_through is None else mixed_through
        self._restarted = mixed_through is not None  # until a round's mixes keep half the updates due
        self.anchor: FloatVector | None = None  # our vector at the start of this round
        self._trained: FloatVector | None = None  # our vector right after this round's local training
        self._train_loss = float("nan")  # this round's local training loss
        self._resent: set[tuple[str, int, int]] = set()  # (neighbour, round, step) we sent our steps again
        self._resumed_round = -1  # the round we resumed after a restart: repeats in it are echoes, not restarts
        self._nursery: trio.Nursery | None = None  # while `run` runs: for sends the receive loop starts
        self._resume = self._open_resumed(resumed) if resumed is not None and resumed.sealed else None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def byzantine(self) -> bool:
        return self.attacker is not None

    def _open_resumed(self, point: ResumePoint) -> ResumedRound | None:
        """Our sealed envelopes of the round we were killed in, checked as a neighbour would check them. If
        they do not open (not ours, not this run's, not that round), the round cannot be resumed: we go on
        after it, as we never sign a round twice."""
        vectors: dict[int, FloatVector] = {}
        for step, envelope in sorted(point.sealed.items()):
            verdict = open_envelope(
                envelope, remote=self.peer_id, run_digest=self.run_digest, schema=self.schema, limits=self.limits,
                round_window=(point.round, point.round), now=None,
            )
            if not isinstance(verdict, Accepted) or verdict.sender != self.peer_id or verdict.step != step:
                reason = verdict.detail if not isinstance(verdict, Accepted) else "another sender or step"
                log.warning("peer %d: cannot resume round %d from its sealed envelopes (%s); going on after it",
                            self.index, point.round, reason)
                self.round = point.round + 1
                return None
            vectors[step] = verdict.tensors[TENSOR]
        loss = float("nan") if point.train_loss is None else point.train_loss
        return ResumedRound(point.round, dict(point.sealed), vectors, loss)

    def rng(self, *purpose: int) -> np.random.Generator:
        """A generator seeded from the run seed, this peer's index and a purpose: (round, Seed.LOCAL_TRAINING),
        (round, step + 1, Seed.DEFENCE), or (round, step + 1, recipient_key(to)) for an attack's context."""
        return np.random.default_rng([self.seed, self.index, *purpose])

    async def run(
        self, *, rounds: int, join_late: bool = False, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until round `rounds`. `join_late`: the network is said (by unsigned hints) to be past our
        round, so first wait, one round's deadlines at most, for neighbours' signed updates that show it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop)
            task_status.started()
            if join_late:
                with trio.move_on_after(self.gossip.gossip_steps * self.gossip.step_timeout):
                    await self.wait_network_ahead()
            alone = False
            while self.round < rounds:
                if alone and self.alone_wait_s > 0:
                    await self.wait_for_company()
                self._refresh_neighbours()
                self.catch_up()
                if self.round >= rounds:
                    break
                if self._restarted and self.round > self._mixed_through:
                    # We were down for rounds our model never mixed: the Bristle-style bound lets our
                    # neighbours pull it only a few own updates' lengths a step, so adopt theirs instead.
                    # Only our own downtime is such evidence; a peer that merely heard nobody keeps its own.
                    self._adopt = True
                heard = self.intake.accepted
                resume, self._resume = self._resume, None
                await self.run_round(self.round, resume=resume if resume and resume.round == self.round else None)
                alone = self.intake.accepted == heard
                self.round, self.step = self.round + 1, 0
                self._rounds_run += 1
            self.finished.set()
            self._nursery = None
            nursery.cancel_scope.cancel()

    def _refresh_neighbours(self) -> None:
        self.neighbour_degrees = dict(self._neighbours.items())
        if self.intake.welcome(self._is_neighbour, at=(self.round, self.step), neighbours=self.neighbour_degrees):
            self._notify_arrival()

    def _is_neighbour(self, peer: str) -> bool:
        """A neighbour this step, or (in a live network) one that connected since."""
        return peer in self.neighbour_degrees or peer in self._neighbours

    @property
    def ledger(self) -> StepLedger:
        return self.intake.ledger

    @property
    def rejections(self) -> Counter[str]:
        """Rejected messages by reason, since the start."""
        return self.intake.rejections

    def membership_evidence(self) -> list[tuple[str, Evidence]]:
        """What this peer's defence learnt against identities, for membership to act on at the round's end
        (`join` and sampling sims alike): those in quarantine, and neighbours of persistently low trust
        (`ReputationTable.low_trust`). A Byzantine peer reports nothing."""
        if self.byzantine:
            return []
        quarantined = [
            (pid, Evidence(EvidenceKind.QUARANTINED, f"until round {until}"))
            for pid, until in sorted(self.reputation.quarantined().items())
        ]
        low = [
            (pid, Evidence(EvidenceKind.LOW_TRUST, f"below the prior for {rounds} judged rounds"))
            for pid, rounds in sorted(self.reputation.low_trust().items())
        ]
        return quarantined + low

    def network_round(self) -> int | None:
        """The (lower) median of the neighbours' newest signed rounds, or None before any arrived."""
        return self.intake.network_round(self.neighbour_degrees)

    async def wait_network_ahead(self) -> None:
        """Return once most neighbours have sent a signed update and they put the network past our round."""
        while True:
            arrival = self._arrival
            self._refresh_neighbours()
            if self.intake.most_are_past(self.round, self.neighbour_degrees):
                return
            await arrival.wait()

    async def wait_for_company(self) -> None:
        """No neighbour's update arrived in the round we just ran: before the next one, wait (for
        `alone_wait_s` at most) until a neighbour signs an update for it or a later round. Without this
        wait a peer that starts first (its neighbours still meeting theirs), or is cut off, runs its
        rounds alone and ahead of everyone, and never mixes once they start: their updates are for
        rounds it has left, and each late one answers a step it is waiting in. Only updates that verify
        count, so junk cannot release us early; a neighbour that signs a far round can, and then its
        update waits, held, for the round it names."""
        log.warning(
            "peer %d: no neighbour's update arrived in round %d; waiting up to %.0f s for one of round %d",
            self.index, self.round, self.alone_wait_s, self.round + 1,
        )
        with trio.move_on_after(self.alone_wait_s) as scope:
            while True:
                arrival = self._arrival
                self._refresh_neighbours()
                newest = [self.intake.latest_round.get(n, -1) for n in self.neighbour_degrees]
                if max(newest, default=-1) >= self.round:
                    return
                await arrival.wait()
        if scope.cancelled_caught:
            log.warning("peer %d: still no neighbour at round %d after %.0f s; going on alone",
                        self.index, self.round + 1, self.alone_wait_s)

    def catch_up(self) -> None:
        """Skip to the network's round when most neighbours are ahead of us (we joined late or were down).

        The evidence is signed: most neighbours must have sent an update, and the lower median of their
        newest signed rounds counts, so a minority of lying neighbours cannot make us jump, not even one
        that speaks before the others. If we never ran a round (a fresh peer), or our model last took the
        neighbours' more than the round window before the network's round (rounds we were down for, or ran
        without hearing anyone), our model is stale: the next mix adopts the neighbours' vectors instead of
        averaging ours in, at every step of that round.
        """
        if not self.intake.most_are_past(self.round, self.neighbour_degrees):
            return  # fewer than most of them have spoken: one early liar must not be the median
        target = self.network_round()
        if target is None or target <= self.round:
            return
        log.info("peer %d: catching up from round %d to the network's round %d", self.index, self.round, target)
        if target - self._mixed_through > self.gossip.round_window or (self.round == 0 and self._rounds_run == 0):
            self._adopt = True
        if self.on_catch_up is not None:
            self.on_catch_up(self.round, target)
        self.round = target
        self.intake.catch_up(target)

    async def run_round(self, rnd: int, *, resume: ResumedRound | None = None) -> None:
        """Train, then gossip the round's steps. `resume`: we were killed in this round after sending
        updates of it; instead of training again, go on from the last step we sent, with the same bytes."""
        started = time.perf_counter()
        self.step = 0
        sent0, received0 = self._bytes_sent, self._bytes_received
        anchor = self.vector
        first = 0
        if resume is None:
            training_rng = self.rng(rnd, Seed.LOCAL_TRAINING)
            self.vector, train_loss = await self.blocking(self._train_fn(rnd), self.vector, training_rng)
            trained = self.vector
        else:
            first = max(resume.envelopes)
            train_loss, trained, self.vector = resume.train_loss, resume.vectors[0], resume.vectors[first]
            self._last_seal = (rnd, first, self.vector, resume.envelopes[first])
            self._sealed = dict(resume.envelopes)
            self._delivered = {s: set() for s in resume.envelopes}
            self._resumed_round = self._marked = rnd  # marked before it stopped: its envelopes stay
            log.info("peer %d: resuming round %d at step %d with the updates it sent before it stopped",
                     self.index, rnd, first)
        self._train_loss = train_loss
        self.anchor, self._trained = anchor, trained  # our own evidence, for the defence
        outcomes: Counter[str] = Counter()
        for step in range(first, self.gossip.gossip_steps):
            verdicts = await self.gossip_step(rnd, step)
            outcomes.update(v.outcome.value for v in verdicts)
        kept = outcomes[Outcome.KEPT.value]
        if kept and 2 * kept >= sum(outcomes.values()):  # one kept update among missing ones mixes little
            self._mixed_through, self._restarted = rnd + 1, False
        self.reputation.end_round(rnd)
        if not self.byzantine and self.anchor is not None and self._trained is not None:
            self.vector = restore_update(self.anchor, self._trained, self.vector, self.gossip.restore_update)
        accuracy = loss = None
        if not self.byzantine and self.evaluate_every and (rnd + 1) % self.evaluate_every == 0:
            result = await self.blocking(self.local.evaluate, self.vector)
            accuracy, loss = result.accuracy, result.loss
        if self.checkpoint_dir is not None:  # in a worker thread: an fsync must not stall gossip
            state = Checkpoint(
                round=rnd + 1,
                vector=self.vector,
                reputation=self.reputation.to_dict(),
                run_digest=self.run_digest.hex(),
            )
            await self.blocking(save_checkpoint, self.checkpoint_dir, state)
        self.intake.end_round(rnd)
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

    def _train_fn(self, rnd: int) -> Callable[[FloatVector, np.random.Generator], tuple[FloatVector, float]]:
        """The local model's `train` at round `rnd`'s learning rate (`GossipConfig.lr_at`). The schedule is
        a function of the round number only, so every peer of a run follows the same one."""
        if self.gossip.lr_schedule == "constant":
            return self.local.train
        return dataclasses.replace(self.local, gossip=self.gossip.at_round(rnd)).train

    async def gossip_step(self, rnd: int, step: int) -> list[Verdict]:
        """Send our vector, collect our neighbours', defend and mix. Returns the verdicts for reputation."""
        self.step = step
        self._refresh_neighbours()  # a live network's neighbours come and go between steps
        # We send to every neighbour (a quarantined one may be waiting for us, and sending is cheap), but
        # wait only for those we trust: a quarantined neighbour never holds up our round.
        everyone = list(self.neighbour_degrees)
        trusted = [n for n in everyone if not self.reputation.is_quarantined(n)]
        if self.attacker is not None:
            return await self.attacker.gossip_step(self, rnd, step, everyone, trusted)
        if everyone and self.checkpoint_dir is not None and rnd > self._marked:
            # before anything of round `rnd` is signed
            await self.blocking(partial(mark_signed, train_loss=self._train_loss), self.checkpoint_dir, rnd)
            self._marked = rnd
        fresh = self._last_seal is None or self._last_seal[:2] != (rnd, step)
        envelope = await self.seal_update(rnd, step, self.vector) if everyone else b""
        if everyone and fresh and self.checkpoint_dir is not None:  # on disk before it goes out
            await self.blocking(save_sealed, self.checkpoint_dir, rnd, step, envelope)
        # Sending and waiting overlap: a send to an unreachable neighbour (a partition) lasts up to the
        # step deadline, and so does the wait for its update, so the step takes one deadline, not two.
        async with trio.open_nursery() as nursery:
            for to in everyone:
                nursery.start_soon(self.send_one, to, envelope, step)
            await self.wait_updates(rnd, step, trusted)
        return await self.defend_and_mix(rnd, step)

    async def wait_updates(self, rnd: int, step: int, expected: list[str]) -> None:
        """Return once every expected neighbour has answered (rnd, step), or the step deadline passed.
        A neighbour that has signed an update for a later round is past this one: if its update for this
        step is not here, it went out before we could hear it (we were down, or it was lost), and will not
        come. (A later step of this round is no such evidence: two steps' sends may arrive out of order.)"""
        with trio.move_on_after(self.gossip.step_timeout):
            while True:
                arrival = self._arrival
                waiting = [n for n in expected if self.intake.latest_round.get(n, -1) <= rnd]
                if self.ledger.answered(rnd, step, waiting):
                    return
                if self.intake.most_are_past(rnd + self.gossip.round_window, self.neighbour_degrees):
                    return  # the network moved on; the round loop catches up
                with trio.move_on_after(WELCOME_CHECK_S):  # a hello may complete without any delivery
                    await arrival.wait()
                self.intake.welcome(self._is_neighbour, at=(rnd, step), neighbours=self.neighbour_degrees)

    async def seal_update(self, rnd: int, step: int, vector: FloatVector) -> bytes:
        """Our signed envelope of `vector` for (rnd, step); the same one for every partner of a step."""
        last = self._last_seal
        if last is not None and last[:2] == (rnd, step) and last[2] is vector:
            return last[3]  # the envelope names no recipient
        tensors = {TENSOR: np.ascontiguousarray(vector, dtype=np.float32)}
        call = partial(seal, self.identity, run_digest=self.run_digest, round=rnd, step=step, tensors=tensors)
        envelope = await off_loop(tensors[TENSOR].nbytes, call)
        if last is None or last[0] != rnd:
            self._sealed, self._delivered, self._resent = {}, {}, set()
        self._last_seal = (rnd, step, vector, envelope)
        self._sealed[step] = envelope
        self._delivered[step] = set()
        return envelope

    async def send_one(self, to: str, data: bytes, step: int | None = None) -> None:
        """Send within the step deadline; `step`: our envelope of that step (remembered as delivered)."""
        with trio.move_on_after(self.gossip.step_timeout):
            if await self.transport.send(to, data):
                self._bytes_sent += len(data)
                if step is not None and step in self._delivered:
                    self._delivered[step].add(to)
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
            at = (self.round, self.step)
            if self.intake.receive(
                delivery.remote, verdict, at=at, neighbours=self.neighbour_degrees, is_neighbour=self._is_neighbour
            ):
                self._notify_arrival()
            for sender, rnd, step in self.intake.take_repeats():
                if self._nursery is not None:
                    self._send_again(sender, rnd, step, self._nursery)
            await trio.lowlevel.checkpoint()

    def _send_again(self, to: str, rnd: int, step: int, nursery: trio.Nursery) -> None:
        """`to` sent us again its update of (rnd, step), the same bytes: it was restarted and resumed that
        step (`run_round`), and lost whatever we had sent it of the round. Send it our envelopes of that
        step and the later ones we have sealed, once per (neighbour, round, step): a neighbour replaying its
        own updates gets at most the round's steps, once each per step it replays."""
        if self._last_seal is None or self._last_seal[0] != rnd or (to, rnd, step) in self._resent:
            return
        if rnd == self._resumed_round:  # we are the one that restarted: its resent steps can arrive twice
            return
        if self.reputation.is_quarantined(to):
            return
        self._resent.add((to, rnd, step))
        steps = [s for s in sorted(self._sealed) if s >= step]
        if steps:
            log.info("peer %d: %s repeated its update of round %d step %d (restarted): sending steps %s again",
                     self.index, to[:16], rnd, step, steps)
            self._start_sending(nursery, to, steps)

    async def serve_late_neighbours(self, seconds: float, *, finished: Callable[[str], bool] | None = None) -> None:
        """After the last round, for up to `seconds`: make sure every neighbour still at work gets our
        last round's envelopes. One whose signed update shows it behind that round (restarted near the
        end, a new process) gets all of them, once per round it signs; one in that round gets those that
        did not reach it while we ran it. It catches up on them (`catch_up` files every held step) and
        finishes with us, instead of waiting for company that has left. Returns as soon as no peer we
        heard from is behind: each has signed an update for the last step of our last round, is
        quarantined, or is `finished` (the daemon asks the neighbours' presence: an unsigned hint, which
        can only make us leave early)."""
        last = self.round - 1
        if self.byzantine or self._last_seal is None or self._last_seal[0] != last:
            return
        done = finished or (lambda _: False)
        final = (last, self.gossip.gossip_steps - 1)

        def behind() -> list[str]:  # not yet at the last step of our last round
            return sorted(
                s for s, at in self.intake.latest_step.items()
                if at < final and not self.reputation.is_quarantined(s) and not done(s)
            )

        if not behind():
            return
        log.info("peer %d: finished; serving %d neighbour(s) still behind for up to %.0f s: %s",
                 self.index, len(behind()), seconds, ", ".join(p[:16] for p in behind()))
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:  # its replies finish before we return
                receiving = trio.CancelScope()
                nursery.start_soon(self._answer_late, last, nursery, receiving)
                while behind():
                    arrival = self._arrival
                    with trio.move_on_after(LINGER_CHECK_S):  # hints change without any delivery
                        await arrival.wait()
                receiving.cancel()  # nobody is behind: whoever was has our last round, or is getting it

    async def _answer_late(self, last: int, nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        answered: set[tuple[str, int]] = set()
        with scope:
            async for delivery in self.transport.incoming:
                verdict = await off_loop(
                    delivery.nbytes,
                    partial(
                        open_envelope, delivery.chunks, remote=delivery.remote, run_digest=self.run_digest,
                        schema=self.schema, limits=self.limits, round_window=(0, last), now=time.time(),
                    ),
                )
                if isinstance(verdict, Accepted) and self._is_neighbour(verdict.sender):
                    sender, rnd = verdict.sender, verdict.round
                    self.intake.signed(sender, rnd, verdict.step)
                    if self.intake.repeated(verdict):  # it restarted in our last round: resend from that step
                        self._send_again(sender, rnd, verdict.step, nursery)
                    elif (sender, rnd) not in answered and not self.reputation.is_quarantined(sender):
                        answered.add((sender, rnd))
                        # a new process behind us has none of them; one in our last round may lack some
                        steps = [s for s in sorted(self._sealed) if rnd < last or sender not in self._delivered[s]]
                        self._start_sending(nursery, sender, steps)
                    self._notify_arrival()
                await trio.lowlevel.checkpoint()

    def _start_sending(self, nursery: trio.Nursery, to: str, steps: list[int]) -> None:
        """Send `to` our envelopes of these steps of the last seal's round, in order, in the background."""
        if self._last_seal is not None:
            rnd = self._last_seal[0]
            nursery.start_soon(self._send_steps, to, rnd, [(s, self._sealed[s]) for s in steps])

    async def _send_steps(self, to: str, rnd: int, envelopes: list[tuple[int, bytes]]) -> None:
        for step, envelope in envelopes:  # in order: a step's update never overtakes the one before it
            same_round = self._last_seal is not None and self._last_seal[0] == rnd  # else: not ours to mark
            await self.send_one(to, envelope, step if same_round else None)

    def _notify_arrival(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    async def defend_and_mix(self, rnd: int, step: int) -> list[Verdict]:
        """Run the defence over this step's updates and take its mixed vector; the verdicts update reputation."""
        updates = self.ledger.updates(rnd, step)
        quarantined = [s for s in updates if self.reputation.is_quarantined(s)]
        # only this step's neighbours are mixed: one that connected mid-step joins at the next step
        arrived = sorted(s for s in updates if s not in quarantined and s in self.neighbour_degrees)
        self_weight, weights = metropolis_row(len(self.neighbour_degrees), self.neighbour_degrees)
        anchor, trained = self.anchor, self._trained
        if arrived and (self._adopt or self._adopting == rnd):
            # far behind: take the neighbours' vectors, whatever our own update says, for every step of
            # the round (a later step averaging ours back in would keep part of the stale model)
            self_weight, self._adopt, self._adopting = 0.0, False, rnd
            anchor = trained = None
        received = np.stack([updates[s] for s in arrived]) if arrived else np.zeros((0, self.vector.size), np.float32)
        inp = DefenceInput(
            own=self.vector,
            received=received,
            senders=tuple(arrived),
            mixing_weights=renormalize(self_weight, weights, arrived),
            reputation=self.reputation.snapshot(),
            evaluate=self.local.validation_scores,
            rng=self.rng(rnd, step + 1, Seed.DEFENCE),
            round=rnd,
            anchor=anchor,
            trained=trained,
            validation_classes=self.local.validation_classes,
        )
        result = await self.blocking(self.defence, inp)
        self.vector = result.mixed.astype(np.float32, copy=False)
        verdicts = self.ledger.verdicts(
            rnd, step, defended=result.verdicts, quarantined=quarantined, neighbours=self.neighbour_degrees
        )
        self.reputation.update(verdicts, rnd)
        self.ledger.release(rnd, step)
        return verdicts

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking (torch, disk) work through the peer's runner: off the event loop by default."""
        return await self._run_blocking(fn, *args)

    async def _in_worker_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work runs in a worker thread, one job at a time per compute limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.compute)


@dataclasses.dataclass(frozen=True)
class ResumedRound:
    """The round a restarted peer resumes: its sealed envelopes of it (step -> bytes, steps 0..k), the
    vectors they carry (step 0's is the round's trained vector; step k's the one it goes on from), and the
    round's training loss."""

    round: int
    envelopes: dict[int, bytes]
    vectors: dict[int, FloatVector]
    train_loss: float
