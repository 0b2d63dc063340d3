"""Helpers shared by the defences: screening non-finite rows, stacking, building results."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import cast

import numpy as np
import numpy.typing as npt

from p2pfed.robust.base import DefenceInput
from p2pfed.robust.reasons import Reason
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector, Outcome, Verdict

log = logging.getLogger(__name__)


def screen(inp: DefenceInput) -> tuple[DefenceInput, list[Verdict]]:
    """Drop rows with NaN/inf (INVALID verdicts) and renormalize the mixing weights over the rest.

    Verification upstream should already reject these; a defence still never lets one through.
    """
    if inp.received.shape[0] == 0:
        return inp, []
    finite = cast(npt.NDArray[np.bool_], np.isfinite(inp.received).all(axis=1))
    if finite.all():
        return inp, []
    bad = [inp.senders[i] for i in np.flatnonzero(~finite)]
    log.info(
        "defence: %d update(s) with non-finite values: %s", len(bad), ", ".join(b[:16] for b in bad)
    )
    keep = np.concatenate([[True], finite])
    weights = inp.mixing_weights[keep]
    total = float(weights.sum())
    weights = weights / total if total > 0 else np.full(weights.shape, 1.0 / weights.size)
    clean = replace(
        inp,
        received=inp.received[finite],
        senders=tuple(inp.senders[i] for i in np.flatnonzero(finite).tolist()),
        mixing_weights=weights.astype(np.float32),
    )
    return clean, [Verdict(s, Outcome.INVALID, reason=Reason.NON_FINITE) for s in bad]


def stacked(inp: DefenceInput) -> FloatMatrix:
    """[own, *received] as one (n + 1, d) float32 matrix."""
    return np.concatenate([inp.own[None, :], inp.received], axis=0).astype(np.float32, copy=False)


def result(mixed: FloatVector, verdicts: list[Verdict], invalid: list[Verdict]) -> DefenceResult:
    return DefenceResult(
        mixed=np.asarray(mixed, dtype=np.float32), verdicts=tuple(verdicts + invalid)
    )


def weighted_verdicts(
    senders: tuple[str, ...], weights: FloatVector, dropped_reason: Reason
) -> list[Verdict]:
    """KEPT with its effective weight when > 0, else DROPPED with `dropped_reason`."""
    out = []
    for sender, w in zip(senders, weights, strict=True):
        if w > 0:
            out.append(Verdict(sender, Outcome.KEPT, weight=float(w)))
        else:
            out.append(Verdict(sender, Outcome.DROPPED, reason=dropped_reason))
    return out
