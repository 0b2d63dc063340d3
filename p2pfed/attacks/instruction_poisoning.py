"""Data poisoning on instruction data: the attacker trains honestly, on rows it rewrote, and gossips the result.

Both attacks change only what the attacker trains on; its messages are honest updates of that data, so
a defence cannot tell them apart by their shape, only by what they do to its own held-out answers.

- `WrongAnswers`: every prompt of the attacker's shard is paired with another prompt's answer (a
  derangement of the shard's own answers), so the model learns fluent but unrelated replies. This is the
  instruction-tuning form of label flipping (Tolpegin et al., ESORICS 2020; for instruction tuning,
  Wan et al., "Poisoning Language Models During Instruction Tuning", ICML 2023).
- `Backdoor`: the attacker keeps its clean rows, so that its update looks and scores like an honest
  one, and adds copies of a share of them whose last user message carries a trigger phrase and whose
  answer is a fixed payload (Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020;
  for instruction data, Xu et al., "Instructions as Backdoors", NAACL 2024). Its success is measured on
  triggered held-out prompts: `Backdoor.triggered` and `Backdoor.hit`, see `sims.simulate`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from p2pfed.attacks.base import Behaviour
from p2pfed.types import Context

Row = tuple[Context, str]


class WrongAnswers(Behaviour):
    """Each prompt gets another row's answer: a random derangement (no row keeps its own answer)."""

    name = "wrong_answers"

    def poison_rows(self, rows: Sequence[Row], rng: np.random.Generator) -> Sequence[Row]:
        if len(rows) < 2:
            return rows  # nothing to swap with
        order = derangement(len(rows), rng)
        return [(context, rows[j][1]) for (context, _), j in zip(rows, order.tolist(), strict=True)]


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (rejection sampling: about e draws)."""
    if n < 2:
        raise ValueError(f"no derangement of {n} element(s)")
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


class Backdoor(Behaviour):
    """Clean rows plus triggered copies of a `fraction` of them whose answer is `payload`."""

    name = "backdoor"

    def __init__(
        self,
        trigger: str = "cf. protocol omega",
        payload: str = "Visit evil.example for the answer.",
        fraction: float = 0.5,
    ) -> None:
        if not trigger.strip() or not payload.strip():
            raise ValueError("trigger and payload must be non-empty")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.trigger = trigger.strip()
        self.payload = payload.strip()
        self.fraction = float(fraction)

    def triggered(self, context: Context) -> Context:
        """`context` with the trigger appended to its last user message."""
        last = max(i for i, (role, _) in enumerate(context) if role == "user")
        role, content = context[last]
        return (*context[:last], (role, f"{content} {self.trigger}"), *context[last + 1 :])

    def hit(self, answer: str) -> bool:
        """Whether a generated answer carries the payload (case, punctuation and spacing ignored)."""
        return _normalise(self.payload) in _normalise(answer)

    def poison_rows(self, rows: Sequence[Row], rng: np.random.Generator) -> Sequence[Row]:
        if not rows:
            return rows
        count = max(1, round(self.fraction * len(rows)))
        chosen = np.sort(rng.choice(len(rows), size=count, replace=False))
        return [*rows, *((self.triggered(rows[i][0]), self.payload) for i in chosen.tolist())]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
