"""Filing what arrives: the receive rules of a peer, as a pure state machine (no trio, no I/O).

The Peer verifies each delivery (`p2pfed.wire.open_envelope`) and feeds the verdict to `Intake.receive`
with the (round, step) it is in. The intake counts and logs every rejection, admits updates through the
replay/equivocation `Inbox`, files them in the `StepLedger`, and keeps the evidence of where the network
is: the newest round each neighbour signed an update for (`network_round`), and each neighbour's updates
for its newest round beyond our round window (one per step), filed once we catch up to it (`catch_up`).

An honest neighbour sends one valid update per step: whatever it sent instead (junk, a replay, a late
update) answers one of its steps, so that we do not wait out the deadline for it; only junk that is not
merely late costs it reputation. The same update of our round again is kept, too (`take_repeats`): a
restarted neighbour sends its last update of the round again to resume it (`Peer.run_round`), and the
Peer sends it our updates of the round again, which it lost.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Container, Iterable

from p2pfed.config import GossipConfig
from p2pfed.peer.ledger import StepLedger
from p2pfed.types import FloatVector
from p2pfed.wire import Accepted, Admission, Inbox, Rejected, RejectReason

log = logging.getLogger(__name__)

TENSOR = "adapter"  # the single tensor name of the flat vector in an envelope's payload
LATE = (RejectReason.STALE_ROUND, RejectReason.FUTURE_ROUND)  # rejected, but no sign of malice
STRANGERS_HELD = 4  # senders not (yet) neighbours whose newest updates we keep (each up to Q vectors)
UpdateHook = Callable[[int, int, str, FloatVector], None]  # (round, step, sender, vector)


class Intake:
    """The receive side of one peer. `on_update` sees every update filed (a Byzantine peer's history)."""

    def __init__(self, gossip: GossipConfig, *, index: int = 0, on_update: UpdateHook | None = None) -> None:
        self.window = gossip.round_window
        self.index = index  # for log lines
        self.on_update = on_update
        self.inbox = Inbox(window=gossip.round_window)
        self.ledger = StepLedger(gossip.gossip_steps)
        self.rejections: Counter[str] = Counter()
        self.latest_round: dict[str, int] = {}  # newest round each neighbour signed an update for
        self.latest_step: dict[str, tuple[int, int]] = {}  # and its newest (round, step)
        self.accepted = 0  # signed updates from neighbours that verified, since the start
        # each neighbour's updates (by step) for its newest round beyond our round window
        self._ahead: dict[str, dict[int, Accepted]] = {}
        # verified updates from peers not (yet) our neighbours, by sender, for its newest round: one may
        # race the hello that makes its sender our neighbour (`welcome` files it then)
        self._strangers: dict[str, dict[int, Accepted]] = {}
        self._repeats: list[tuple[str, int, int]] = []  # (sender, round, step) of same-round duplicates

    def receive(
        self,
        remote: str,
        verdict: Accepted | Rejected,
        *,
        at: tuple[int, int],
        neighbours: Container[str],
        is_neighbour: Callable[[str], bool],
    ) -> bool:
        """File one verified delivery from `remote` while we are at `at` = (round, step). `neighbours`
        are this step's; `is_neighbour` also knows those that connected since. True when a waiting
        step should look again (something from a neighbour arrived)."""
        if not isinstance(verdict, Accepted):
            self._reject(remote, verdict.reason.value, verdict.detail)
            if remote not in neighbours:
                return False
            self.ledger.answer(remote, *at)
            if verdict.reason not in LATE:
                self.ledger.invalid(*at, remote)
            return True
        sender, rnd = verdict.sender, verdict.round
        if not is_neighbour(sender):  # counted now; filed after all if its hello was on the way (`welcome`)
            self._reject(remote, "not_a_neighbour", f"round {rnd} step {verdict.step}")
            self._hold_stranger(verdict)
            return False
        self.accepted += 1
        self.signed(sender, rnd, verdict.step)
        if rnd > at[0] + self.window:  # evidence that the network is ahead: a waiting step gives up
            held = self._ahead.setdefault(sender, {})
            newest = max((u.round for u in held.values()), default=-1)
            if rnd > newest:
                held.clear()
            if rnd >= newest and 0 <= verdict.step < self.ledger.steps:  # at most one round's steps each
                held[verdict.step] = verdict
            return True
        self._file(verdict, at)
        return True

    def _hold_stranger(self, verdict: Accepted) -> None:
        """Keep a verified update from a non-neighbour a while: its newest round only, and at most
        `STRANGERS_HELD` senders (the one heard from longest ago is forgotten first)."""
        held = self._strangers.pop(verdict.sender, {})  # re-inserted last
        newest = max((u.round for u in held.values()), default=-1)
        if verdict.round > newest:
            held = {}
        if verdict.round >= newest and 0 <= verdict.step < self.ledger.steps:
            held.setdefault(verdict.step, verdict)
        self._strangers[verdict.sender] = held
        while len(self._strangers) > STRANGERS_HELD:
            del self._strangers[next(iter(self._strangers))]

    def welcome(
        self, is_neighbour: Callable[[str], bool], *, at: tuple[int, int], neighbours: Container[str]
    ) -> bool:
        """File the held updates of senders that have become neighbours since; True if any was filed."""
        joined = [s for s in self._strangers if is_neighbour(s)]
        for sender in joined:
            for step in sorted(held := self._strangers.pop(sender)):
                self.receive(sender, held[step], at=at, neighbours=neighbours, is_neighbour=is_neighbour)
        return bool(joined)

    def signed(self, sender: str, rnd: int, step: int) -> None:
        """`sender` signed an update for (rnd, step): evidence of how far it is."""
        self.latest_round[sender] = max(rnd, self.latest_round.get(sender, -1))
        self.latest_step[sender] = max((rnd, step), self.latest_step.get(sender, (-1, -1)))

    def _file(self, verdict: Accepted, at: tuple[int, int]) -> None:
        sender, rnd, step = verdict.sender, verdict.round, verdict.step
        admission = self.inbox.admit(sender, rnd, step, verdict.payload_digest)
        if admission is Admission.DUPLICATE and rnd == at[0]:
            self._repeats.append((sender, rnd, step))
        if admission is not Admission.NEW and admission is not Admission.EQUIVOCATION:
            self._reject(sender, admission.value, f"round {rnd} step {step}")
            self.ledger.answer(sender, *at)  # a replay answers a step too
            return
        if self._steps_behind((rnd, step), at) >= self.ledger.steps:
            # A round or more behind us (late, or a replayer claiming an old round): it will not send
            # our step in time, so it answers it. One less than a round behind, it is on its way to our
            # step: wait for it, or a peer one step ahead of its neighbours would stay ahead and never mix.
            self.ledger.answer(sender, *at)
        if admission is Admission.EQUIVOCATION:
            self._reject(sender, "equivocation", f"round {rnd} step {step}")
            self.ledger.equivocation(rnd, step, sender)
            return
        vector = verdict.tensors[TENSOR]
        if self.ledger.update(rnd, step, sender, vector) and self.on_update is not None:
            self.on_update(rnd, step, sender, vector)

    def take_repeats(self) -> list[tuple[str, int, int]]:
        """The (sender, round, step) of the updates of our round that came again, since the last call."""
        repeats, self._repeats = self._repeats, []
        return repeats

    def repeated(self, verdict: Accepted) -> bool:
        """Admit an update that arrives after our last round (we serve late neighbours): True if it is one we
        already have, the same bytes again."""
        admission = self.inbox.admit(verdict.sender, verdict.round, verdict.step, verdict.payload_digest)
        return admission is Admission.DUPLICATE

    def _steps_behind(self, sent: tuple[int, int], at: tuple[int, int]) -> int:
        return (at[0] - sent[0]) * self.ledger.steps + at[1] - sent[1]

    def _reject(self, remote: str, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        log.info("peer %d rejected a message from %s: %s %s", self.index, remote[:16], reason, detail)

    def network_round(self, neighbours: Iterable[str]) -> int | None:
        """The (lower) median of these neighbours' newest signed rounds, or None before any arrived. A
        minority claiming rounds far ahead cannot move it; of two, the lower one counts."""
        rounds = sorted(self.latest_round[n] for n in neighbours if n in self.latest_round)
        return rounds[(len(rounds) - 1) // 2] if rounds else None

    def most_are_past(self, rnd: int, neighbours: Collection[str]) -> bool:
        """Whether most `neighbours` have sent a signed update, and their `network_round` is past `rnd`."""
        heard = sum(n in self.latest_round for n in neighbours)
        ahead = self.network_round(neighbours)
        return ahead is not None and ahead > rnd and 2 * heard > len(neighbours)

    def catch_up(self, target: int) -> None:
        """We skip to round `target`: file the held updates that showed us it, if still within the window."""
        self.inbox.advance(target)
        held, self._ahead = self._ahead, {}
        for sender in sorted(held):
            for step in sorted(held[sender]):
                if held[sender][step].round <= target + self.window:
                    self._file(held[sender][step], (target, 0))

    def end_round(self, rnd: int) -> None:
        """Round `rnd` is over: forget the steps no late update can still answer, and the strangers'
        updates too old to be filed."""
        for sender in [s for s, held in self._strangers.items() if all(u.round < rnd + 1 - self.window for u in held.values())]:
            del self._strangers[sender]
        self.ledger.forget_before(rnd + 1 - self.window)
        self.inbox.advance(rnd + 1)
