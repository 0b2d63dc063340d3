"""What kind of attack a behaviour is (does it poison its training data?), and the check the wrappers
that carry an inner attack (patient, targeted) make with it."""

from __future__ import annotations

from p2pfed.attacks.base import Behaviour
from p2pfed.attacks.sybil import SybilMember


def poisons_labels(behaviour: Behaviour) -> bool:
    """Whether `behaviour` changes its training labels (a Sybil member: whether its group's attack does)."""
    if isinstance(behaviour, SybilMember):
        return poisons_labels(behaviour.group.inner)
    return type(behaviour).poison_labels is not Behaviour.poison_labels


def poisons_rows(behaviour: Behaviour) -> bool:
    """Whether `behaviour` changes its instruction rows (a Sybil member: whether its group's attack does)."""
    if isinstance(behaviour, SybilMember):
        return poisons_rows(behaviour.group.inner)
    return type(behaviour).poison_rows is not Behaviour.poison_rows


def poisons_data(behaviour: Behaviour) -> bool:
    """Whether `behaviour` is a data-poisoning attack (labels or instruction rows)."""
    return poisons_labels(behaviour) or poisons_rows(behaviour)


def refuse_label_poisoning(inner: Behaviour, wrapper: str) -> None:
    """Training data is poisoned once, before round 0, for every recipient: a wrapper that must behave
    honestly for some rounds or toward some peers cannot carry a data-poisoning attack."""
    if poisons_data(inner):
        raise ValueError(
            f"{wrapper} wraps model-level attacks only: {inner.name!r} poisons its training data, "
            "which happens once before round 0 and for every recipient"
        )
