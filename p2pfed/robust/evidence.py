"""Validation evidence: from the scores of [own, *candidates] on our own validation split, which
candidates are worse, which are harmful outliers, and how much each is worth (Bristle's integrator).

Pure numpy. The scores are per-class F1 (classification) or minus a loss (instruction data); see
`p2pfed.robust.base.Evaluator`.
"""

from __future__ import annotations

import warnings
from typing import cast

import numpy as np
import numpy.typing as npt

from p2pfed.types import FloatMatrix, FloatVector

Floats = npt.NDArray[np.float64]


def informative_classes(scores: Floats) -> npt.NDArray[np.bool_]:
    """Classes whose F1 says something: some row scores strictly between 0 and 1. A class absent from
    the validation split scores exactly 0 or 1 for every model (one stray prediction flips it), so it
    is left out; when no class qualifies (e.g. a 1-column loss score), all are used."""
    finite = np.isfinite(scores)
    # numpy types .any(axis=...) `bool | array`: with an axis of a 2-D array it is a 1-D array
    inside = cast(npt.NDArray[np.bool_], (finite & (scores > 0.0) & (scores < 1.0)).any(axis=0))
    return inside if inside.any() else np.ones(scores.shape[1], dtype=bool)


# Nats of mean token loss per unit of margin, for scores that are minus a loss: Bristle's F1 margin of 0.1
# reads as 0.05 nats there, a 5 % increase of held-out perplexity (e^0.05).
LOSS_UNIT = 0.5


def loss_scale(own: Floats, loss_unit: float = LOSS_UNIT) -> float:
    """1 for F1 scores (all in [0, 1]); `loss_unit` for other scores (minus a mean token loss, in nats),
    so that a margin is a fixed perplexity ratio, e^(margin · loss_unit).

    Not relative to our own loss (as it was before issue 15): a causal LM's loss is mostly the entropy of the
    text, so 10 % of it was 0.3 nats, a 35 % perplexity increase, and a sign-flipped LoRA B (its round's
    update reversed, 0.15 nats worse than where the round started) passed validation at every honest
    peer in round 1 (docs/llm.md)."""
    return 1.0 if are_f1(own) else loss_unit


def are_f1(own: Floats) -> bool:
    """Whether our scores are F1 (every finite one in [0, 1]) rather than minus a loss."""
    finite = own[np.isfinite(own)]
    return bool(finite.size == 0 or ((finite >= 0.0) & (finite <= 1.0)).all())


def integrate(
    scores: FloatMatrix,
    *,
    margin: float,
    floor_margin: float,
    reference_quantile: float,
    harm_margin: float,
    harm_factor: float,
    boost: float,
    max_boost: float,
    baseline: FloatVector | None = None,
    floor_from_anchor: bool = False,
    loss_unit: float = LOSS_UNIT,
    relative_floor: float = 0.0,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], Floats, Floats]:
    """From (1 + k, c) validation scores of [own, *candidates], and optionally the (c,) scores of the
    round's anchor (`baseline`): (worse mask, harmful mask, performance weight, evidence score = mean Δ
    over informative classes).

    A candidate whose mean drop from the floor (min(our score, the anchor's) per class) exceeds
    `floor_margin` is worse. With `relative_floor` r > 0 and F1 scores, the tolerated drop is at most
    r × the floor's mean as well: a peer whose own F1 is still low (0.2 early on TREC, or a victim that an
    attacking majority holds down) cannot lose the 0.35 that `floor_margin` allows, so there a
    sign-flipped model passed. The tolerance comes from our own scores only."""
    s = np.asarray(scores, dtype=np.float64)
    informative = informative_classes(s)
    s = s[:, informative]
    finite = bool(np.isfinite(s).all())  # usually; then the masking of non-finite scores is skipped
    if not finite:
        s = np.nan_to_num(s, nan=-np.inf)
    # Our own model is tuned to our own (skewed) split, so an honest non-IID neighbour's model is often
    # worse there than ours; what marks a poisoned model is being worse than the typical model we see,
    # and than where the round started (the anchor's scores, `baseline`), which no neighbour sets.
    reference = s[0]
    if s.shape[0] > 2:
        reference = np.fmin(s[0], typical_scores(s, reference_quantile))
    floor = s[0]
    if baseline is not None:
        # where this round started, before our own data moved us: an honest neighbour's model is that
        # start plus its own update, so it is not worse than it on our split (the anchor is our evidence)
        start = np.asarray(baseline, dtype=np.float64)[informative]
        reference = np.where(np.isfinite(start), np.fmin(reference, start), reference)
        if floor_from_anchor:
            floor = np.where(np.isfinite(start), np.fmin(floor, start), floor)
    if finite:
        delta, own_drop = s[1:] - reference, s[1:] - floor
    else:
        delta = np.where(np.isneginf(s[1:]), -np.inf, np.nan_to_num(s[1:] - reference, nan=0.0))
        own_drop = np.nan_to_num(s[1:] - floor, nan=0.0)
    mean_delta = delta.mean(axis=1)
    own_delta = own_drop.mean(axis=1)
    scale = loss_scale(s[0], loss_unit)
    tolerance = floor_margin * scale
    if relative_floor > 0 and are_f1(s[0]):  # a loss has no natural zero to be relative to
        level = float(floor.mean())
        if np.isfinite(level):
            tolerance = min(tolerance, relative_floor * max(level, 0.0))
    worse = (mean_delta < -margin * scale) | (own_delta < -tolerance)
    harmful = worse.copy()
    if worse.any():  # which of the worse are also outliers
        harmful &= mean_delta < scale * harm_threshold(mean_delta / scale, harm_margin, harm_factor)
    gain = np.clip(delta, 0.0, None).mean(axis=1)
    perf = np.minimum(max_boost, 1.0 + boost * gain)
    return worse, harmful, perf, mean_delta


def typical_scores(scores: Floats, quantile: float) -> Floats:
    """Per class, the `quantile` of the finite scores (NaN where there are none)."""
    if np.isfinite(scores).all():
        return np.quantile(scores, quantile, axis=0)  # nanquantile is ~6x slower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN class
        return np.nanquantile(np.where(np.isfinite(scores), scores, np.nan), quantile, axis=0)


def harm_threshold(mean_delta: Floats, harm_margin: float, harm_factor: float) -> float:
    """Below this a candidate is an outlier: under the candidates' median Δ (if at least three, and
    never above 0) by more than max(harm_margin, harm_factor × robust spread of Δ)."""
    finite = mean_delta[np.isfinite(mean_delta)]
    if finite.size < 3:
        return -harm_margin
    centre = float(np.median(finite))
    spread = 1.4826 * float(np.median(np.abs(finite - centre)))
    return min(centre, 0.0) - max(harm_margin, harm_factor * spread)


def standing(
    scores: FloatMatrix,
    *,
    floor_margin: float,
    baseline: FloatVector | None = None,
    loss_unit: float = LOSS_UNIT,
) -> Floats:
    """Per candidate, in [0, 1]: how much of the clipping radius our own evidence grants it.

    From (1 + k, c) scores of [own, *candidates]: 1 + (mean drop from min(our score, the anchor's)) /
    `floor_margin`, clipped to [0, 1]. A candidate at least as good as where we stand (or started this
    round) on our own split gets the full radius; one `floor_margin` below gets none (`integrate` drops
    it). Only our scores and the anchor's set the bar, never a statistic of the neighbours, so a
    Byzantine majority cannot raise its own standing by lowering the typical model. A non-finite score
    counts as no standing."""
    raw = np.asarray(scores, dtype=np.float64)
    informative = informative_classes(raw)
    s = np.where(np.isnan(raw[:, informative]), -np.inf, raw[:, informative])
    floor = s[0]
    if baseline is not None:
        start = np.asarray(baseline, dtype=np.float64)[informative]
        floor = np.where(np.isfinite(start), np.fmin(floor, start), floor)
    with np.errstate(all="ignore"):  # -inf - -inf, inf / x: no standing either (NaN -> 0 below)
        grant = 1.0 + (s[1:] - floor).mean(axis=1) / (floor_margin * loss_scale(s[0], loss_unit))
    return np.clip(np.where(np.isnan(grant), 0.0, grant), 0.0, 1.0)
