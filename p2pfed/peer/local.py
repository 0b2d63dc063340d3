"""One peer's view of the shared model: its own shard, its validation split, its (possibly poisoned) labels.

The frozen base lives once per process in a `TaskModel`; a `LocalModel` only holds index arrays, so a
simulation of many peers costs one model plus a flat vector per peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from p2pfed.config import GossipConfig
from p2pfed.learn import EvalResult, TaskModel
from p2pfed.types import FloatMatrix, FloatVector


@dataclass
class LocalModel:
    model: TaskModel
    train_indices: npt.NDArray[np.int64]
    val_indices: npt.NDArray[np.int64]
    gossip: GossipConfig
    labels: npt.NDArray[np.int64] | None = None  # overrides the true training labels (label-flip attacks)
    # positions into the global test set that evaluate() scores on; None = all of it. A simulation of
    # many peers evaluates each round on a fixed sample and on the full set only at the end.
    test_sample: npt.NDArray[np.int64] | None = None

    def train(self, vector: FloatVector, rng: np.random.Generator) -> tuple[FloatVector, float]:
        return self.model.train(
            vector,
            self.train_indices,
            steps=self.gossip.local_steps,
            lr=self.gossip.lr,
            rho=self.gossip.rho,
            rng=rng,
            labels=self.labels,
            logit_adjust=self.gossip.logit_adjust,
        )

    def validation_scores(self, vectors: FloatMatrix) -> FloatMatrix:
        return self.model.score(vectors, self.val_indices)

    @cached_property  # the split never changes, and the defence asks every gossip step
    def validation_classes(self) -> int | None:
        """Classes with rows in our validation split (true labels: the split is ours), None for instruction
        data, whose score is a loss over all of it."""
        if self.model.kind != "classification":
            return None
        return int(np.unique(self.model.train_labels[self.val_indices]).size)

    def evaluate(self, vector: FloatVector) -> EvalResult:
        if self.test_sample is None:
            return self.model.evaluate(vector)
        return self.model.evaluate_many(vector[None], self.test_sample)[0]
