"""What an omniscient attacker knows of the honest peers this step."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2pfed.attacks.base import AttackContext


def honest_vectors(ctx: AttackContext) -> npt.NDArray[np.float64]:
    """`honest_seen` (union over colluders) when available, else what this attacker received from
    non-colluders, else its own vector alone. Always at least one row, float64."""
    if ctx.honest_seen is not None and ctx.honest_seen.shape[0]:
        return ctx.honest_seen.astype(np.float64)
    rows = [i for i, s in enumerate(ctx.senders) if s not in ctx.colluders]
    if rows:
        return ctx.received[rows].astype(np.float64)
    return ctx.own.astype(np.float64)[None, :]


def recipient_vector(ctx: AttackContext) -> npt.NDArray[np.float64] | None:
    """The recipient's own vector this step, if it sent one to us."""
    if ctx.recipient in ctx.senders:
        return ctx.received[ctx.senders.index(ctx.recipient)].astype(np.float64)
    return None
