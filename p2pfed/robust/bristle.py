"""Bristle-style defence (Verbraeken, de Vos & Pouwelse, 2021), p2pfed's default, with reputation.

One gossip step of an honest peer i, on what arrived from its neighbours:

1. **Reputation gate.** Senders whose reputation is below `quarantine_below` are QUARANTINED.
   **Amplify rule** (own evidence: needs the round's `anchor` and `trained` vectors). A candidate whose pull
   x_j − x_i has a component of more than `amplify_limit` · u along our own local update û (u its length)
   is DROPPED ("amplifies our update"): a neighbour may undo part of what our own data taught us this
   round — that is consensus — but it knows nothing about our data that we do not, so pushing us further
   the same way is no evidence of anything. Honest neighbours that trained from about where we started
   pull back; dissensus (He, Karimireddy & Jaggi, 2022), which pushes each peer away from consensus, does
   not. No neighbour sets u or û.
2. **Distance prioritizer** (cheap, O(n·d)). Rank candidates by ‖x_j − x_i‖; keep the `keep` nearest, except
   those beyond `far_factor` × min(the lower-median distance, `bound_factor` · u); then draw `explore` of
   the rest at random, so that a useful but different (non-IID) peer is not starved. Everyone else is
   DROPPED ("far"). The u term is new in session 10 (`far_from_update`): where most neighbours are
   Byzantine (3 of 4 on a sparse graph) the lower median is one of theirs, so sign-flipped vectors, ~2‖x‖
   away, set their own limit and all counted as near. Honest neighbours that trained from about where we
   started sit within about √2 · u, well inside 4 · 2u, so an attack-free step is unchanged.
   The scale is also at least `scale_floor` · u (session 12): colluders that echo our own vector sit
   next to us, so the lower median was theirs and honest neighbours at √2 · u were "far" (isolation).
3. **Performance integrator** (one `evaluate` call on [own, *kept] stacked). Per class c, over the
   informative classes (those present in our validation split: some model scores strictly between 0 and
   1), the candidate's Δ_jc = score_jc − ref_c, where ref_c = min(our score, the typical score (the
   `reference_quantile` of [own, *kept]), the score of the round's anchor (our own vector before this
   round's local training)). Our own model is tuned to our own skewed split, so an honest non-IID
   neighbour is often worse there than ours but not worse than the typical neighbour; a poisoned model
   is. The anchor term is new (own evidence): colluders sending copies of our own vector could raise the
   typical score until honest neighbours failed it; they cannot raise the anchor's. An honest neighbour's
   model is about that same start plus an update on its own data. (The anchor alone, without the typical
   term, lost 10 points on non-IID TREC: a neighbour's update on its own data can cost more than
   `margin` on ours. Figures: `docs/robustness.md`.) A candidate whose mean Δ is below −`margin` (about
   two binomial standard errors of a small validation split), or whose mean drop from min(our score, the
   anchor's) exceeds `floor_margin` (so a poisoned majority cannot lower the bar; measured from our score
   alone, as in 0.1, it cut a peer that is an expert on its own 2–3-class split off from every honest
   neighbour), is DROPPED: "harmful on validation" when it is also an outlier among
   the candidates (below their median Δ, capped at 0, by more than max(`harm_margin`, `harm_factor` ×
   their robust spread): strong evidence for the reputation table), else "worse on validation" (a mild
   reputation cost). For scores that are minus a mean token loss, the margins are in units of `loss_unit`
   nats (0.1 → 0.05 nats: a 5 % perplexity increase), not relative to our own loss (issue 15). The
   others get a performance weight 1 + `boost` · mean_c max(0, Δ_jc), capped at `max_boost`: candidates
   that are better where we are weak count more (Bristle's per-class view).
4. **Mix.** x_i ← x_i + Σ_j w_j · clip(x_j − x_i, g_j · τ) over the kept, with τ = `clip_factor` × the
   lower-median candidate distance (self-centred clipping, as in ClippedGossip) and g_j ∈ [0, 1] the
   candidate's standing on our own validation (`evidence.standing`, session 10, `evidence_radius`):
   1 + (its mean drop from min(our score, the anchor's)) / `floor_margin`, clipped. A candidate at least
   as good as where we started this round gets the whole radius, one `floor_margin` below gets none
   (step 3 drops it). Before, every kept candidate got the whole radius, so three sign-flipped
   neighbours that validation kept (just inside the floor, while the typical score they set was low)
   each pulled a full 2u per step. g_j comes from our own scores only, so it grows only with evidence
   from this peer, never with a statistic of the neighbours. Near candidates are
   untouched, so without attack this is the convex mix Σ_j w_j x_j over [self, *kept]; a far candidate
   that exploration and validation let through (dissensus, which sits opposite the consensus, scores
   *well* on our own split) moves us by at most w_j · τ. The kept candidates share their total Metropolis-Hastings
   weight in proportion to MH weight × performance weight × trust (reputation relative to the best kept
   one); the weight of dropped candidates stays with us. So with no attack, honest non-IID neighbours mix
   as in plain D-PSGD. Newcomers (reputation below `newcomer_below`) together get at most `newcomer_cap`
   of a mix that includes established peers; in a fresh network, where everyone is new, no cap applies.
   The weights are non-negative and sum to 1: a convex combination. Kept vectors that are
   near-duplicates of each other (closer than `duplicate_factor` × the lower-median distance: colluding
   identities sending one crafted vector, as a Sybil or the omniscient attacks do) count as one
   neighbour: each member's Metropolis-Hastings weight is divided by the group size, the rest stays
   with us (as FoolsGold does for similar clients).

**The bound** (what changed from 0.1, and why). In 0.1 the clipping radius τ was set by the lower-median
neighbour distance only, a quantity the neighbours set: where most of a peer's neighbours are Byzantine (a
sparse graph) they could widen τ at will, and a neighbour whose trust and validation gain were high could
take any share of the Metropolis-Hastings mass. Now, when the round's own evidence is there
(`DefenceInput.anchor` and `.trained`: u_i = ‖our local update this round‖),

    τ_ij = g_j · min(clip_factor · lower-median distance,  bound_factor · u_i),   0 ≤ g_j ≤ 1,
    and   w_ij ≤ max_boost · m_ij,

with m_ij the Metropolis-Hastings weight (the excess stays with us). Whatever the neighbours send, then:

- one gossip step moves x_i by at most (1 − m_ii) · bound_factor · u_i, however many neighbours lie;
- a single neighbour j's own pull is at most max_boost · m_ij · g_j · bound_factor · u_i, with g_j its
  standing on our own validation (so a neighbour worse on our data than where we started pulls less);
- so, against the vector x_i would reach had j sent nothing, j moves x_i by at most
  B_ij = 2 · (1 − m_ii) · bound_factor · u_i.

u_i is the peer's own: no neighbour can widen it. Honest neighbours that trained from about the same
consensus sit about √2 · u_i apart or closer, so `bound_factor` = 2 leaves them unclipped and an
attack-free run mixes as before. `tests/test_robust_bristle.py` checks all three against adversarial
vectors. Without that evidence (a plug-in caller, a late joiner adopting its neighbours) the radius is the
neighbour-set one alone and no bound is claimed. A caller that gives our own vector no weight (m_ii = 0:
the Peer adopting its neighbours' model after it joined late or was down) means it: the weight of dropped
or capped candidates goes to the kept ones, not back to our stale vector.

Without `evaluate` (no validation data) step 3 is skipped and nothing is explored: distance only. The same
holds when our validation split has rows of fewer than `min_evidence_classes` (2) classes
(`DefenceInput.validation_classes`, our own labels; session 12). Per-class F1 on a split of one class only
measures how often a model predicts that class, so a constant predictor scores best: on the default
simulation (SMS spam, Dirichlet 0.5) one honest peer holds 279 spam rows and 1 ham row, its 50 validation
rows are all spam, and there step 3 dropped its honest neighbours ("worse") and boosted a white-box attacker
that pushed it to answer "spam" to everything (test accuracy 0.13, the minority class). Such a peer mixes
by distance, the amplify rule and the bound alone: each neighbour counts by its Metropolis-Hastings
weight, none by a score that cannot tell good from constant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pfed.robust import reasons
from p2pfed.robust._common import result, screen
from p2pfed.robust.base import DefenceInput, Evaluator
from p2pfed.robust.evidence import LOSS_UNIT, integrate, standing
from p2pfed.robust.mixing import (
    cap_weights,
    clipped_mix,
    duplicate_groups,
    group_sizes,
    mix_weights,
    offsets_and_gram,
)
from p2pfed.robust.reputation import DEFAULT_PRIOR, DEFAULT_QUARANTINE_BELOW
from p2pfed.types import DefenceResult, FloatMatrix, FloatVector, Outcome, Verdict

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]


def prioritize(
    distances: Floats,
    keep: int,
    explore: int,
    far_factor: float,
    rng: np.random.Generator | None,
    groups: Indices | None = None,
    most: float = np.inf,
    least: float = 0.0,
) -> tuple[Indices, Indices]:
    """(kept, dropped) indices: the `keep` nearest within `far_factor` × the lower-median distance
    (raised to `least`, then lowered to `most`), plus `explore` random others when `rng` is given. With
    `groups` (a label per candidate, see `duplicate_groups`), a group of near-duplicates takes one of the
    `keep` places, so that colluders sending copies of one vector near us cannot crowd honest neighbours
    out."""
    n = distances.size
    if n == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    order = np.argsort(distances, kind="stable")
    scale = min(max(float(distances[order[(n - 1) // 2]]), least), most)
    limit = far_factor * scale if scale > 0 else np.inf
    labels = np.arange(n) if groups is None else groups
    admitted: set[int] = set()
    nearest = []
    for i in order[distances[order] <= limit].tolist():
        if labels[i] not in admitted:
            if len(admitted) == keep:
                continue
            admitted.add(int(labels[i]))
        nearest.append(i)
    kept = np.asarray(nearest, dtype=np.intp)
    chosen = np.zeros(n, dtype=bool)
    chosen[kept] = True
    rest = order[~chosen[order]]  # nearest first
    if rng is not None and explore > 0 and rest.size:
        explored = rng.choice(rest, size=min(explore, rest.size), replace=False)
        kept = np.concatenate([kept, np.sort(explored)])
        chosen[explored] = True
        rest = order[~chosen[order]]
    return kept, rest


def lower_median(values: Floats) -> float:
    """The lower median (an actual element, so one outlier more or less cannot move it far); 0 if empty."""
    return float(np.sort(values)[(values.size - 1) // 2]) if values.size else 0.0


def own_unit(inp: DefenceInput) -> float | None:
    """u_i = ‖our local update this round‖, the unit no neighbour sets (None without it, or if 0)."""
    update = inp.local_update
    if update is None:
        return None
    length = float(np.linalg.norm(update))
    return length if length > 0 and np.isfinite(length) else None


@dataclass(frozen=True)
class Bristle:
    keep: int = 10  # nearest candidates evaluated every step
    explore: int = 2  # random others evaluated too: a far but useful (non-IID) peer's chance
    far_factor: float = 4.0  # beyond this × the lower-median distance, a candidate is not "near"
    # tolerated drop of mean F1 over the informative classes: about two binomial standard errors of a
    # 50–100-row validation split, so honest non-IID neighbours are not dropped for noise
    margin: float = 0.1
    # ... and, whatever the neighbours look like, the drop from our own score beyond which a candidate is
    # worse (a majority of poisoned neighbours must not set the reference)
    floor_margin: float = 0.35
    reference_quantile: float = (
        0.5  # the "typical model": this quantile of [own, *candidates], per class
    )
    harm_margin: float = 0.1  # a drop beyond this (and beyond harm_factor × typical) is "harmful"
    harm_factor: float = 3.0
    boost: float = 4.0  # performance weight = 1 + boost · mean per-class gain ...
    max_boost: float = 3.0  # ... capped, so one lucky candidate cannot take over
    quarantine_below: float = DEFAULT_QUARANTINE_BELOW  # reputation gate; as ReputationConfig's
    # each kept candidate pulls us by at most this × the lower-median candidate distance: an explored far
    # vector that validation let through (dissensus scores well on our own split) moves us a bounded step
    clip_factor: float = 1.5
    # kept vectors closer to each other than this × the lower-median candidate distance are one group,
    # weighted as a single neighbour (honest non-IID vectors are ~1× apart; colluders' copies ~0×)
    duplicate_factor: float = 0.05
    # u = ‖our vector after this round's local training − before‖ (own evidence, `DefenceInput.anchor` and
    # `.trained`). A candidate x_j with (x_j − x_i)·û > this × u would push us further where our own data
    # already took us; honest neighbours that trained from about where we started pull us back (≤ 0, up to
    # what gossip has not yet averaged out). Dissensus, which pushes each peer away from consensus, does not.
    amplify_limit: float = 0.5
    # the bound: no neighbour pulls us by more than this × u (our own local update this round), and none
    # weighs more than max_boost × its Metropolis-Hastings weight (see "The bound" above)
    bound_factor: float = 2.0
    # the validation reference is also at most the round's anchor's score, when the anchor is known (step 3);
    # False: min(our score, the typical candidate's) only, as in 0.1
    anchor_reference: bool = True
    # ... and the floor (`floor_margin`) is measured from min(our score, the anchor's), not from ours alone
    floor_from_anchor: bool = True
    # the far limit's scale is at most bound_factor × u: a majority of far neighbours cannot widen it
    far_from_update: bool = True
    # ... and at least this × u: neighbours that sit next to us cannot make honest ones look far
    # (isolation); 0 = off. (The clipping radius has no such floor: on the sparse TREC grid, a floor of u
    # there let sign-flipped neighbours pull more late in a round, 59.2 -> 54.7.)
    scale_floor: float = 1.0
    # each kept candidate's clipping radius × its standing on our own validation (`evidence.standing`)
    evidence_radius: bool = True
    # validation scores count as evidence only when our split has rows of at least this many classes
    min_evidence_classes: int = 2
    # for scores that are minus a mean token loss: nats per unit of margin (margin 0.1 -> 0.05 nats, a 5 %
    # perplexity increase; floor_margin 0.35 -> 19 %), see `evidence.loss_scale`
    loss_unit: float = LOSS_UNIT
    # > 0: the floor's tolerated drop is also at most this × our own (or the anchor's) mean F1, so that a
    # peer whose F1 is still low has a floor that bites (`evidence.integrate`). Off by default until the
    # complete-graph grid is rerun with it (docs/robustness.md, session 25)
    relative_floor: float = 0.0
    new_reputation: float = DEFAULT_PRIOR  # reputation of a sender absent from the table
    newcomer_below: float = 0.5  # under this reputation a sender counts as a newcomer ...
    newcomer_cap: float = 0.5  # ... and get at most this share of a mix with established peers
    name: str = field(default="bristle", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        inp, invalid = screen(inp)
        n = len(inp.senders)
        verdicts: dict[int, Verdict] = {}
        rep = np.array(
            [inp.reputation.get(s, self.new_reputation) for s in inp.senders], dtype=np.float64
        )
        for i in np.flatnonzero(rep < self.quarantine_below).tolist():
            verdicts[i] = Verdict(
                inp.senders[i], Outcome.QUARANTINED, score=float(rep[i]), reason=reasons.Reason.REPUTATION
            )
        amplifies = self.amplifies(inp)
        for i in np.flatnonzero(amplifies & (rep >= self.quarantine_below)).tolist():
            verdicts[i] = Verdict(inp.senders[i], Outcome.DROPPED, reason=reasons.AMPLIFIES)
        candidates = np.flatnonzero((rep >= self.quarantine_below) & ~amplifies)

        vectors = inp.received if candidates.size == n else inp.received[candidates]
        offsets, gram = offsets_and_gram(vectors, inp.own)
        distances = np.sqrt(np.diag(gram))
        evaluate = inp.evaluate if self.has_evidence(inp) else None
        rng = inp.rng if evaluate is not None else None
        scale = lower_median(distances)
        unit = own_unit(inp)
        most = self.bound_factor * unit if self.far_from_update and unit is not None else np.inf
        least = min(self.scale_floor * unit, most) if unit is not None else 0.0
        groups = duplicate_groups(gram, self.duplicate_factor * scale)
        near, far = prioritize(distances, self.keep, self.explore, self.far_factor, rng, groups, most, least)
        for i, dist in zip(candidates[far].tolist(), distances[far].tolist(), strict=True):
            ratio = dist / scale if scale > 0 else 0.0
            verdicts[i] = Verdict(inp.senders[i], Outcome.DROPPED, score=ratio, reason=reasons.FAR)

        perf = np.ones(near.size)
        mean_delta = np.zeros(near.size)
        grant = np.ones(near.size)
        if evaluate is not None and near.size:
            kept = candidates[near]
            anchor = inp.anchor if self.anchor_reference and unit is not None else None
            worse, harmful, perf, mean_delta, grant = self._evaluate(
                evaluate, inp.own, inp.received, kept, anchor
            )
            for i, d, h in zip(
                kept[worse].tolist(),
                mean_delta[worse].tolist(),
                harmful[worse].tolist(),
                strict=True,
            ):
                reason = reasons.HARMFUL if h else reasons.WORSE
                verdicts[i] = Verdict(inp.senders[i], Outcome.DROPPED, score=d, reason=reason)
            near, perf, mean_delta, grant = near[~worse], perf[~worse], mean_delta[~worse], grant[~worse]
        kept = candidates[near]

        mh = inp.mixing_weights.astype(np.float64)
        copies = group_sizes(groups[near])
        mh_kept = mh[1 + kept] / copies  # near-identical vectors from several identities count once
        mh = np.concatenate([[mh.sum() - mh_kept.sum()], mh_kept])
        weights = mix_weights(mh, perf, rep[kept], self.newcomer_below, self.newcomer_cap)
        weights = cap_weights(weights, self.max_boost * inp.mixing_weights[1 + kept].astype(np.float64))
        if inp.mixing_weights[0] == 0 and weights[1:].sum() > 0:  # adopting: our vector is stale
            weights = np.concatenate([[0.0], weights[1:] / weights[1:].sum()])
        radius = self.clip_factor * scale if scale > 0 else np.inf
        if unit is not None:
            radius = min(radius, self.bound_factor * unit)
        offset_weights = np.zeros(candidates.size)  # 0 for the candidates not kept
        offset_weights[near] = weights[1:]
        radii = np.full(candidates.size, radius)
        if self.evidence_radius and unit is not None:
            radii[near] = radius * grant
        mixed = clipped_mix(inp.own, offsets, distances, offset_weights, radii)
        for i, w, d in zip(kept.tolist(), weights[1:].tolist(), mean_delta.tolist(), strict=True):
            verdicts[i] = Verdict(inp.senders[i], Outcome.KEPT, weight=w, score=d)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "bristle: %d kept, %d far, %d worse or harmful, %d quarantined; self weight %.3f",
                kept.size,
                far.size,
                sum(v.reason in (reasons.WORSE, reasons.HARMFUL) for v in verdicts.values()),
                sum(v.outcome is Outcome.QUARANTINED for v in verdicts.values()),
                weights[0],
            )
        return result(mixed, [verdicts[i] for i in range(n)], invalid)

    def has_evidence(self, inp: DefenceInput) -> bool:
        """Whether our validation scores can be evidence this step: there is an evaluator, and our split
        has rows of at least `min_evidence_classes` classes (or its class count is unknown)."""
        if inp.evaluate is None:
            return False
        return inp.validation_classes is None or inp.validation_classes >= self.min_evidence_classes

    def amplifies(self, inp: DefenceInput) -> npt.NDArray[np.bool_]:
        """Which candidates would push us further along our own local update û = (trained − anchor) / u,
        u = ‖trained − anchor‖, by more than `amplify_limit` · u. All False without that evidence."""
        n = len(inp.senders)
        length, update = own_unit(inp), inp.local_update
        if length is None or update is None or n == 0:
            return np.zeros(n, dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow (a hostile huge vector): NaN drops it
            along = (inp.received @ update - float(inp.own @ update)) / length**2
        return np.nan_to_num(along, nan=np.inf) > self.amplify_limit

    def _evaluate(
        self,
        evaluate: Evaluator,
        own: FloatVector,
        received: FloatMatrix,
        kept: Indices,
        anchor: FloatVector | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], Floats, Floats, Floats]:
        """integrate()'s (worse, harmful, performance weight, evidence score) and standing()'s grant
        for the `kept` rows of `received`, from one `evaluate` call on [own, *kept, anchor?]."""
        extra = 0 if anchor is None else 1
        stacked = np.empty((1 + kept.size + extra, own.size), dtype=np.float32)  # [own, *kept, anchor?]
        stacked[0] = own
        np.take(received, kept, axis=0, out=stacked[1 : 1 + kept.size])
        if anchor is not None:
            stacked[-1] = anchor
        scores = evaluate(stacked)
        if scores.ndim != 2 or scores.shape[0] != stacked.shape[0]:
            shape, count = scores.shape, stacked.shape[0]
            raise ValueError(f"evaluate returned shape {shape} for {count} vectors")
        baseline = None
        if anchor is not None:
            scores, baseline = scores[:-1], scores[-1]
        start = baseline if self.floor_from_anchor else None
        grant = standing(scores, floor_margin=self.floor_margin, baseline=start, loss_unit=self.loss_unit)
        return *integrate(
            scores,
            baseline=baseline,
            floor_from_anchor=self.floor_from_anchor,
            margin=self.margin,
            floor_margin=self.floor_margin,
            reference_quantile=self.reference_quantile,
            harm_margin=self.harm_margin,
            harm_factor=self.harm_factor,
            boost=self.boost,
            max_boost=self.max_boost,
            loss_unit=self.loss_unit,
            relative_floor=self.relative_floor,
        ), grant
