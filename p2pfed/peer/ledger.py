"""What each neighbour has sent for each gossip step: a pure ledger (no trio, no I/O), fed by the Peer.

Per (round, step) the ledger records, for each sender, one of:
- an **update** (a verified vector, to be defended and mixed),
- an **equivocation** (two different updates for the step: both dropped, the sender is remembered),
- an **answer** (something unusable instead: junk, a replay, a late update) — it tells us the sender will
  send nothing better for that step, so we need not wait out the deadline for it;
and, separately, whether the sender sent something that failed verification (**invalid**, which costs it
reputation; a message that is merely late does not).

A sender has **settled** a step once it has an update, an equivocation or an answer there; a step may end
early once every expected sender has settled it (`answered`).

Once a step has been mixed, its vectors are **released**: nothing reads them again, and a peer that kept
them until the round left the window held round_window × Q × degree vectors (32 at the defaults, 1.5 MB
on trec, most of a simulated peer's memory). A released step keeps who settled it; a late update for it
settles it without being stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pfed.robust.reasons import Reason
from p2pfed.types import FloatVector, Outcome, Verdict


@dataclass
class _Step:
    updates: dict[str, FloatVector] = field(default_factory=dict)
    equivocated: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    released: bool = False  # mixed: its updates' vectors are dropped, their senders kept in `spent`
    spent: set[str] = field(default_factory=set)

    def settled(self, sender: str) -> bool:
        return (
            sender in self.updates or sender in self.spent or sender in self.equivocated or sender in self.answered
        )


class StepLedger:
    """Updates, equivocations, answers and invalid messages per (round, step), for `steps` steps a round."""

    def __init__(self, steps: int) -> None:
        self.steps = max(1, steps)
        self._steps: dict[tuple[int, int], _Step] = {}

    def _at(self, rnd: int, step: int) -> _Step:
        return self._steps.setdefault((rnd, step), _Step())

    def _get(self, rnd: int, step: int) -> _Step:
        return self._steps.get((rnd, step)) or _Step()

    # ------------------------------------------------------------------ recording
    def update(self, rnd: int, step: int, sender: str, vector: FloatVector) -> bool:
        """Record `sender`'s update for (rnd, step); False (nothing recorded) if it equivocated there."""
        entry = self._at(rnd, step)
        if sender in entry.equivocated:
            return False
        if entry.released:  # too late to be mixed: it settles the step, and the vector is not kept
            entry.spent.add(sender)
        else:
            entry.updates[sender] = vector
        return True

    def release(self, rnd: int, step: int) -> None:
        """(rnd, step) has been mixed: drop its vectors, keep who sent them (see the module docstring)."""
        entry = self._at(rnd, step)
        entry.spent.update(entry.updates)
        entry.updates.clear()
        entry.released = True

    def equivocation(self, rnd: int, step: int, sender: str) -> None:
        """`sender` sent two different updates for (rnd, step): neither counts, now or later."""
        entry = self._at(rnd, step)
        entry.updates.pop(sender, None)
        entry.spent.discard(sender)
        entry.equivocated.add(sender)

    def invalid(self, rnd: int, step: int, sender: str) -> None:
        """`sender` sent something that failed verification during (rnd, step)."""
        self._at(rnd, step).invalid.add(sender)

    def answer(self, sender: str, rnd: int, step: int) -> tuple[int, int]:
        """Credit a message that brings nothing new to the first step `sender` has not settled, from
        (rnd, step) through the end of the next round; returns that (round, step).

        A sender that does not wait for us can be a step or a round ahead, so crediting only the step in
        progress would leave one of its later steps unanswered and hold us up until the deadline. When it
        has settled all of them, the step in progress is credited."""
        for position in range(rnd * self.steps + step, (rnd + 2) * self.steps):
            key = divmod(position, self.steps)
            if not self._at(*key).settled(sender):
                self._at(*key).answered.add(sender)
                return key
        self._at(rnd, step).answered.add(sender)
        return rnd, step

    def forget_before(self, rnd: int) -> None:
        """Drop every step of the rounds before `rnd`."""
        for key in [k for k in self._steps if k[0] < rnd]:
            del self._steps[key]

    # ------------------------------------------------------------------ reading
    def updates(self, rnd: int, step: int) -> dict[str, FloatVector]:
        """The usable updates of (rnd, step), by sender (none once the step is released)."""
        return dict(self._get(rnd, step).updates)

    def equivocated(self, rnd: int, step: int) -> set[str]:
        return set(self._get(rnd, step).equivocated)

    def invalid_senders(self, rnd: int, step: int) -> set[str]:
        return set(self._get(rnd, step).invalid)

    def settled(self, rnd: int, step: int, sender: str) -> bool:
        """Whether `sender` has sent what it will send for (rnd, step): an update, an equivocation, or junk."""
        return self._get(rnd, step).settled(sender)

    def answered(self, rnd: int, step: int, expected: list[str]) -> bool:
        """Whether every expected sender has settled (rnd, step): the step need not wait any longer."""
        entry = self._get(rnd, step)
        return all(entry.settled(sender) for sender in expected)

    def verdicts(
        self, rnd: int, step: int, *, defended: Iterable[Verdict], quarantined: Iterable[str], neighbours: Iterable[str]
    ) -> list[Verdict]:
        """Every neighbour's verdict for (rnd, step): the defence's on the updates it saw, then the
        quarantined ones, the equivocators, those that sent something invalid, and the missing rest."""
        verdicts = list(defended)
        verdicts += [Verdict(s, Outcome.QUARANTINED, reason=Reason.REPUTATION) for s in quarantined]
        entry = self._get(rnd, step)
        verdicts += [Verdict(s, Outcome.EQUIVOCATED, reason=Reason.TWO_UPDATES) for s in sorted(entry.equivocated)]
        verdicts += [Verdict(s, Outcome.INVALID, reason=Reason.FAILED_VERIFICATION) for s in sorted(entry.invalid)]
        seen = {v.sender for v in verdicts}
        return verdicts + [Verdict(s, Outcome.MISSING, reason=Reason.NOT_IN_TIME) for s in neighbours if s not in seen]

    def rounds(self) -> set[int]:
        """The rounds the ledger still holds something for."""
        return {rnd for rnd, _ in self._steps}
