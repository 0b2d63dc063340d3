"""The oracle: a reference for experiments, not a defence a real peer could run.

It is told which senders are Byzantine (a simulation knows), drops exactly those, and hands the rest to
an ordinary defence (Bristle by default) with the dropped senders' mixing weight moved to the peer itself,
as any defence does with what it drops. What it reaches under attack is what a perfect filter would
reach: the honest peers lose only what the Byzantine peers' data would have taught them. Read a real
defence's drop against the oracle's, not only against the attack-free run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from p2pfed.robust.base import Defence, DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, Outcome, Verdict

ORACLE = "oracle"


@dataclass(frozen=True)
class Oracle:
    byzantine: frozenset[str]  # peer IDs of every Byzantine identity (Sybil identities included)
    inner: Defence  # applied to the honest senders
    name: str = field(default=ORACLE, init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        honest = np.array([s not in self.byzantine for s in inp.senders], dtype=bool)
        weights = inp.mixing_weights.astype(np.float64)
        kept_weights = np.concatenate([[weights[0] + weights[1:][~honest].sum()], weights[1:][honest]])
        inner = self.inner(
            dataclasses.replace(
                inp,
                received=inp.received[honest],
                senders=tuple(s for s, h in zip(inp.senders, honest, strict=True) if h),
                mixing_weights=(kept_weights / kept_weights.sum()).astype(inp.mixing_weights.dtype),
            )
        )
        dropped = [
            Verdict(s, Outcome.DROPPED, reason=Reason.BYZANTINE)
            for s, h in zip(inp.senders, honest, strict=True)
            if not h
        ]
        return DefenceResult(mixed=inner.mixed, verdicts=(*inner.verdicts, *dropped))
