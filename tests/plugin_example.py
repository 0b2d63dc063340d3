"""The user-defined attack shown in docs/plugins.md (loaded by import path in test_attacks_registry.py)."""

from __future__ import annotations

import numpy as np

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing


class ShrinkToZero(Behaviour):
    """Sends its own vector scaled by `factor`: a slow, quiet pull of its neighbours toward zero."""

    name = "shrink_to_zero"

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        return Outgoing(vector=(self.factor * ctx.own).astype(np.float32))
