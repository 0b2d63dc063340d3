"""Small shared types that cross layer boundaries (no torch, no trio, no libp2p here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

FloatVector = npt.NDArray[np.float32]
"""A flat float32 view of one adapter's trainable state (see p2pfed.learn.adapters)."""

FloatMatrix = npt.NDArray[np.float32]
"""Stacked flat vectors, one row per peer: shape (n, d)."""

Message = tuple[str, str]
"""One chat turn: (role, content), role one of system, user, assistant."""

Context = tuple[Message, ...]
"""The turns before a response: what an instruction row's model is prompted with."""


class Outcome(StrEnum):
    """What the defence of one honest peer decided about one neighbour's update in one gossip step."""

    KEPT = "kept"  # mixed in with a positive weight
    DROPPED = "dropped"  # filtered out by the defence (too far, or makes the local model worse)
    QUARANTINED = "quarantined"  # ignored because the sender's reputation is below the threshold
    MISSING = "missing"  # nothing arrived in time
    INVALID = "invalid"  # failed verification (signature, schema, NaN, ...)
    EQUIVOCATED = "equivocated"  # two different signed updates for the same (round, step)


@dataclass(frozen=True)
class Verdict:
    """One neighbour's fate in one defence step; feeds the reputation table."""

    sender: str
    outcome: Outcome
    weight: float = 0.0  # mixing weight given (0 unless KEPT)
    score: float = 0.0  # defence-specific evidence, e.g. validation improvement; 0 if none
    reason: str = ""  # a p2pfed.robust.reasons.Reason; "" is Reason.NONE


@dataclass(frozen=True)
class DefenceResult:
    """The mixed vector plus a verdict per candidate neighbour."""

    mixed: FloatVector
    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)
