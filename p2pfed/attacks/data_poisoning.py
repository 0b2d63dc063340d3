"""Data poisoning: the attacker trains honestly, on flipped labels, and gossips the result."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2pfed.attacks.base import Behaviour


class LabelFlip(Behaviour):
    """y → C − 1 − y on the attacker's local training labels."""

    name = "label_flip"

    def poison_labels(
        self, labels: npt.NDArray[np.int64], num_classes: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        return (num_classes - 1 - labels).astype(np.int64)
