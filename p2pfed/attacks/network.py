"""Network-level misbehaviour: free-riding and replay."""

from __future__ import annotations

import numpy as np

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.types import FloatVector


class FreeRider(Behaviour):
    """Contributes nothing of its own: `mode="echo"` sends the latest vector it received from an honest
    neighbour other than the recipient (falling back to any honest one); `mode="stale"` (or when nothing
    was received yet) sends the vector it had at its first step, forever. "Latest" is by the (round,
    step) the vector was signed for, ties broken by sender ID, among the steps before the current one:
    arrival order, and what faster peers already sent for the current step, depend on thread timing,
    and the same seed must give the same run."""

    name = "free_rider"

    def __init__(self, mode: str = "echo") -> None:
        if mode not in ("echo", "stale"):
            raise ValueError(f"free_rider mode must be 'echo' or 'stale', got {mode!r}")
        self.mode = mode
        self._stale: FloatVector | None = None

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        if self._stale is None:
            self._stale = ctx.own.copy()
        if self.mode == "echo":
            done = (ctx.round, ctx.step)  # what faster peers already sent for this step depends on timing
            honest = [h for h in ctx.received_history if h[2] not in ctx.colluders and h[:2] < done]
            others = [h for h in honest if h[2] != ctx.recipient]
            pick = others or honest
            if pick:
                newest = max(pick, key=lambda h: (h[0], h[1], h[2]))
                return Outgoing(vector=np.asarray(newest[3], dtype=np.float32))
        return Outgoing(vector=self._stale)


class Replay(Behaviour):
    """Replays the past. `mode="envelope"`: resend verbatim the newest envelope it signed at least `lag`
    rounds ago (stale round: verification should reject it); `mode="claim"`: sign its current vector but
    claim round − `lag`. Until it has history, it behaves honestly."""

    name = "replay"

    def __init__(self, mode: str = "envelope", lag: int = 1) -> None:
        if mode not in ("envelope", "claim"):
            raise ValueError(f"replay mode must be 'envelope' or 'claim', got {mode!r}")
        self.mode = mode
        self.lag = max(1, lag)

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        if self.mode == "claim":
            if ctx.round < self.lag:
                return Outgoing(vector=ctx.own)
            return Outgoing(vector=ctx.own, round=ctx.round - self.lag)
        old = [env for rnd, _, env in ctx.sent_history if rnd <= ctx.round - self.lag]
        if old:
            return Outgoing(raw=old[-1])
        return Outgoing(vector=ctx.own)
