"""What a defence is: a function from what one honest peer received in one gossip step to its new vector."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from p2pfed.types import DefenceResult, FloatMatrix, FloatVector

Evaluator = Callable[[FloatMatrix], FloatMatrix]
"""Scores candidate vectors on the peer's local validation split.

Takes (m, d) stacked vectors and returns (m, c) scores, higher is better: per-class F1 for
classification (c = number of classes), or minus the loss for instruction data (c = 1).
"""


@dataclass(frozen=True)
class DefenceInput:
    own: FloatVector  # (d,) this peer's current vector
    received: FloatMatrix  # (n, d) neighbours' vectors that passed verification and arrived in time
    senders: tuple[str, ...]  # n peer IDs, aligned with the rows of `received`
    mixing_weights: FloatVector  # (n + 1,) Metropolis-Hastings weights, [self, *senders], renormalized to sum to 1
    reputation: Mapping[str, float]  # sender -> reputation in [0, 1]; senders absent from it are new
    evaluate: Evaluator | None  # None when no validation data is available (baselines ignore it)
    rng: np.random.Generator  # seeded per (peer, round, step)
    round: int = 0  # the current round; time-dependent rules (BALANCE) use it
    # The peer's own evidence, which no neighbour sets (Bristle scales its bound and its reference by it):
    anchor: FloatVector | None = None  # our vector at the start of this round, before local training
    trained: FloatVector | None = None  # our vector right after this round's local training
    # how many classes our validation split has rows of (None: unknown, or not classification). Per-class
    # scores on a split of one class measure only how often a model predicts that class: they cannot tell a
    # constant predictor from a good model, so Bristle does not take them as evidence (`min_evidence_classes`).
    validation_classes: int | None = None

    @property
    def local_update(self) -> FloatVector | None:
        """trained − anchor: where our own data moved us this round (None without both)."""
        if self.anchor is None or self.trained is None:
            return None
        return np.subtract(self.trained, self.anchor, dtype=np.float32)


class Defence(Protocol):
    @property
    def name(self) -> str: ...  # read-only, so frozen dataclasses qualify

    def __call__(self, inp: DefenceInput) -> DefenceResult: ...
