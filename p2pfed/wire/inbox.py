"""Replay and equivocation detection over verified envelopes (pure, no I/O, no clock).

A sender signs at most one payload per (round, step). The same payload again is a harmless duplicate
(gossip re-delivery, a retry); a different payload for the same key is equivocation: proof, signed by
the sender, that it told different peers different things. Both copies must then be dropped, and the
caller should hit the sender's reputation.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from enum import StrEnum

log = logging.getLogger(__name__)


class Admission(StrEnum):
    NEW = "new"  # first payload for this (sender, round, step): use it
    DUPLICATE = "duplicate"  # identical re-delivery: drop quietly
    EQUIVOCATION = "equivocation"  # a different payload for a key already seen: drop both, punish
    STALE = "stale"  # round already forgotten
    OVERFLOW = "overflow"  # the sender exceeded max_steps_per_round keys in one round


class Inbox:
    """Remembers the payload digest of every accepted (sender, round, step) within a window of rounds."""

    def __init__(self, *, window: int = 2, max_steps_per_round: int = 256) -> None:
        # window: rounds kept below the current one (see advance)
        # max_steps_per_round: a sender can't grow memory by inventing steps
        self.window = window
        self.max_steps_per_round = max_steps_per_round
        self._digests: dict[int, dict[tuple[str, int], bytes]] = defaultdict(dict)
        self._equivocated: dict[int, set[tuple[str, int]]] = defaultdict(set)
        self._steps: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._floor = 0

    @property
    def floor(self) -> int:
        """The lowest round still remembered; older envelopes are STALE."""
        return self._floor

    def admit(self, sender: str, round: int, step: int, payload_digest: bytes) -> Admission:
        if round < self._floor:
            return Admission.STALE
        key = (sender, step)
        if key in self._equivocated[round]:
            return Admission.EQUIVOCATION
        seen = self._digests[round].get(key)
        if seen is not None:
            if seen == payload_digest:
                return Admission.DUPLICATE
            del self._digests[round][key]
            self._equivocated[round].add(key)
            log.info("equivocation by %s at round %d step %d", sender, round, step)
            return Admission.EQUIVOCATION
        if self._steps[round][sender] >= self.max_steps_per_round:
            return Admission.OVERFLOW
        self._steps[round][sender] += 1
        self._digests[round][key] = payload_digest
        return Admission.NEW

    def equivocators(self, round: int, step: int) -> frozenset[str]:
        """Senders that equivocated at (round, step): drop whatever of theirs was already accepted."""
        return frozenset(s for s, q in self._equivocated.get(round, ()) if q == step)

    def advance(self, current_round: int) -> None:
        """The caller moved to `current_round`: forget rounds older than the window."""
        self.forget_before(current_round - self.window)

    def forget_before(self, round: int) -> None:
        """Drop everything about rounds < `round`; later envelopes for them are STALE."""
        if round <= self._floor:
            return
        self._floor = round
        for table in (self._digests, self._equivocated, self._steps):
            for old in [r for r in table if r < round]:
                del table[old]

    def __len__(self) -> int:
        return sum(len(d) for d in self._digests.values())
