"""A tiny stand-in for a peer's model, shared by the Peer tests: every round is instant and exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Eval:
    accuracy: float
    loss: float


@dataclass
class FakeLocal:
    """Training pulls the vector halfway to a private target; accuracy is closeness to the global optimum."""

    target: np.ndarray

    def train(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        new = (vector + 0.5 * (self.target - vector)).astype(np.float32)
        return new, float(np.linalg.norm(new - self.target))

    def validation_scores(self, vectors: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(vectors - self.target, axis=1, keepdims=True).astype(np.float32)

    validation_classes = None  # a loss-like score, as for instruction data

    def evaluate(self, vector: np.ndarray) -> Eval:
        loss = float(np.linalg.norm(vector))
        return Eval(accuracy=1.0 / (1.0 + loss), loss=loss)
