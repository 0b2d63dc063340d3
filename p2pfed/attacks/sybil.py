"""A Sybil attacker: one adversary behind many identities, all sending the same crafted vector.

`SybilGroup(inner, size).members` are `size` Behaviours (one per identity/peer) sharing one state: the
first member asked for (round, step, recipient) crafts the message with `inner`, the others send a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.types import Context

Key = tuple[int, int, str]


class SybilGroup:
    def __init__(self, inner: Behaviour, size: int) -> None:
        if size < 1:
            raise ValueError(f"a Sybil group needs at least one identity, got {size}")
        self.inner = inner
        self._crafted: dict[Key, Outgoing | None] = {}
        self.members: list[Behaviour] = [SybilMember(self, i) for i in range(size)]

    def message(self, ctx: AttackContext) -> Outgoing | None:
        key = (ctx.round, ctx.step, ctx.recipient)
        if key not in self._crafted:
            for old in [k for k in self._crafted if k[:2] < key[:2]]:
                del self._crafted[old]
            self._crafted[key] = self.inner.outgoing(ctx)
        return self._crafted[key]


class SybilMember(Behaviour):
    name = "sybil"

    def __init__(self, group: SybilGroup, index: int) -> None:
        self.group = group
        self.index = index
        self.waits_for_honest = group.inner.waits_for_honest
        self.uses_model = group.inner.uses_model

    def poison_labels(
        self, labels: npt.NDArray[np.int64], num_classes: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        return self.group.inner.poison_labels(labels, num_classes, rng)

    def poison_rows(
        self, rows: Sequence[tuple[Context, str]], rng: np.random.Generator
    ) -> Sequence[tuple[Context, str]]:
        return self.group.inner.poison_rows(rows, rng)

    def outgoing(self, ctx: AttackContext) -> Outgoing | None:
        return self.group.message(ctx)
