"""The hooks a Byzantine behaviour can override. The honest `Behaviour` is the identity on all of them.

A Byzantine peer runs the same `Peer` round loop as an honest one; only these hooks differ:
- `poison_labels`: data-level attacks on classification data, applied once to the peer's training labels;
- `poison_rows`: data-level attacks on instruction data, applied once to the peer's (context, answer) rows;
- `outgoing`: what to send to one recipient in one gossip step (model- and network-level attacks);
- `waits_for_honest`: if True, the peer first collects this step's updates from its neighbours (and, when
  colluding, the other attackers' observations), so that omniscient attacks can use them;
- `uses_model`: if True, `outgoing` calls the model (`ctx.evaluate`) and so runs in the peer's worker
  thread, behind the same compute limiter as training (white-box attacks).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pfed.robust.base import Defence, Evaluator
from p2pfed.types import Context, FloatMatrix, FloatVector


@dataclass
class Collusion:
    """A board shared by colluding attackers in one simulation: the honest vectors any of them received."""

    honest: dict[tuple[int, int], dict[str, FloatVector]] = field(default_factory=dict)
    shared: dict[Hashable, Any] = field(default_factory=dict)  # what one colluder computed for all
    # white-box knowledge of the victims: peer ID -> classes in its validation split (see
    # `DefenceInput.validation_classes`), filled in by the simulation that builds the peers
    validation_classes: dict[str, int | None] = field(default_factory=dict)

    def post(self, round: int, step: int, vectors: dict[str, FloatVector]) -> None:
        self.honest.setdefault((round, step), {}).update(vectors)

    def seen(self, round: int, step: int) -> FloatMatrix | None:
        got = self.honest.get((round, step))
        if not got:
            return None
        return np.stack([got[k] for k in sorted(got)])


@dataclass(frozen=True)
class Outgoing:
    """One message to send: a vector signed for the claimed (round, step), or raw bytes sent verbatim."""

    vector: FloatVector | None = None
    round: int | None = None  # None = the current round
    step: int | None = None  # None = the current step
    raw: bytes | None = None  # replay: an old signed envelope, sent as is


@dataclass(frozen=True)
class AttackContext:
    round: int
    step: int
    recipient: str  # peer ID this message is for
    own: FloatVector  # the attacker's own vector after local training (on its possibly poisoned data)
    received: FloatMatrix  # (n, d) what the attacker received this step (empty (0, d) unless waits_for_honest)
    senders: tuple[str, ...]
    colluders: frozenset[str]  # peer IDs of all attackers in the same collusion (Sybil identities included)
    honest_seen: FloatMatrix | None  # union of honest vectors all colluders received this step (omniscient)
    sent_history: Sequence[tuple[int, int, bytes]]  # (round, step, envelope) this peer sent before
    received_history: Sequence[tuple[int, int, str, FloatVector]]  # (round, step, sender, vector) received before
    rng: np.random.Generator
    # white-box knowledge: the defence the honest peers run, this attacker's own validation scores (a
    # stand-in for its victims' data), and the Collusion board (shared computations)
    defence: Defence | None = None
    evaluate: Evaluator | None = None
    anchor: FloatVector | None = None  # this attacker's vector at the start of the round
    collusion: Collusion | None = None


class Behaviour:
    """Honest behaviour. Subclass and override hooks to build an attack (see p2pfed.attacks)."""

    name = "honest"
    waits_for_honest = False
    uses_model = False

    def poison_labels(
        self, labels: npt.NDArray[np.int64], num_classes: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        return labels

    def poison_rows(
        self, rows: Sequence[tuple[Context, str]], rng: np.random.Generator
    ) -> Sequence[tuple[Context, str]]:
        """The instruction rows to train on; returning `rows` itself means "unchanged"."""
        return rows

    def outgoing(self, ctx: AttackContext) -> Outgoing | None:
        """What to send to `ctx.recipient`; None sends nothing (a silent peer)."""
        return Outgoing(vector=ctx.own)
