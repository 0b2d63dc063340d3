"""How an honest peer mixes what it kept: self-centred clipping, near-duplicate groups, weight caps.

Pure numpy on stacked flat vectors. Bristle (`p2pfed.robust.bristle`) composes these; each is small enough
to test alone (tests/test_robust_bristle.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2pfed.types import FloatMatrix, FloatVector

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]


def offsets_and_gram(
    vectors: FloatMatrix, own: FloatVector
) -> tuple[npt.NDArray[np.floating], Floats]:
    """(x_j − own for every row; their Gram matrix G). One matrix product gives every distance a step
    needs: ‖x_j − own‖² = G_jj, ‖x_i − x_j‖² = G_ii + G_jj − 2·G_ij. Offsets from our own vector, not
    the vectors themselves, keep float32 precise enough (no large norms cancel); a hostile vector large
    enough to overflow it is handled in float64, where float32 inputs cannot."""
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        offsets: npt.NDArray[np.floating] = np.subtract(vectors, own[None, :], dtype=np.float32)
        gram = (offsets @ offsets.T).astype(np.float64)  # numpy runs x·xᵀ as one symmetric product
    if not np.isfinite(gram).all():
        offsets = vectors.astype(np.float64) - own.astype(np.float64)[None, :]
        gram = offsets @ offsets.T
    return offsets, gram


def clipped_mix(
    own: FloatVector,
    offsets: npt.NDArray[np.floating],
    norms: Floats,
    weights: Floats,
    radius: float | Floats,
) -> FloatVector:
    """own + Σ_j w_j · clip(x_j − own, r_j), clip(v, r) = v · min(1, r / ‖v‖), with `offsets` the
    x_j − own, `norms` their lengths and `radius` one r for all or one per row: self-centred clipping (He, Karimireddy & Jaggi, 2022) of
    what the candidates pull us by. With `weights` summing to at most 1 and no clipping this is the
    plain convex mix (1 − Σw)·own + Σ w_j x_j; a row with weight 0 does not count."""
    if offsets.shape[0] == 0:
        return own.copy()
    factors = np.minimum(1.0, radius / np.maximum(norms, 1e-30))
    pull = (weights * factors).astype(offsets.dtype) @ offsets  # in the offsets' precision
    return (own + pull).astype(own.dtype)


def duplicate_groups(gram: Floats, within: float) -> Indices:
    """A group label per row of the Gram matrix `gram` (of the vectors, or of their offsets from one
    common point): rows linked by distances ≤ `within` share one (connected components).

    Honest peers train on different data, so their vectors are never this close; colluding identities
    that send one crafted vector (Sybil, omniscient attackers) are."""
    k = gram.shape[0]
    group = np.arange(k)
    if k < 2 or within <= 0:
        return group
    squares = np.diag(gram)
    close = squares[:, None] + squares[None, :] - 2 * gram <= within**2
    for _ in range(k):  # label propagation to connected components (k is small)
        smallest = np.min(np.where(close, group[None, :], k), axis=1)
        if np.array_equal(smallest, group):
            break
        group = smallest
    return group


def group_sizes(labels: Indices) -> Floats:
    """For each entry, how many entries share its (non-negative) label. Dividing each member's weight
    by the size of its near-duplicate group (`duplicate_groups`) makes the group count as one
    neighbour."""
    return np.bincount(labels)[labels].astype(np.float64)


def cap_share(weights: Floats, members: npt.NDArray[np.bool_], cap: float) -> Floats:
    """Rescale `members` so their share of the (normalized) weights is at most `cap`."""
    total = weights.sum()
    w = weights / total
    share = w[members].sum()
    if share <= cap or share >= 1.0:
        return w
    w[members] *= cap * (1 - share) / (share * (1 - cap))
    return w / w.sum()


def mix_weights(
    mh: Floats, perf: Floats, rep: Floats, newcomer_below: float, newcomer_cap: float
) -> Floats:
    """Weights over [self, *kept]: the kept candidates share their total Metropolis-Hastings mass in
    proportion to MH weight × performance weight × trust, trust = reputation / the best kept reputation
    (relative, so in a fresh network where everyone is new nobody is starved); dropped candidates' mass
    stays with us. When established candidates (reputation ≥ `newcomer_below`) are kept, newcomers
    together get at most `newcomer_cap` of the mix."""
    if mh.size == 1 or mh[1:].sum() <= 0:
        return np.eye(1, mh.size)[0]
    trust = rep / rep.max() if rep.max() > 0 else np.ones_like(rep)
    raw = mh[1:] * perf * trust
    kept = raw * mh[1:].sum() / raw.sum() if raw.sum() > 0 else np.zeros_like(raw)
    weights = np.concatenate([[max(0.0, mh.sum() - kept.sum())], kept])
    weights /= weights.sum()
    established = rep >= newcomer_below
    if established.any():
        weights = cap_share(weights, np.concatenate([[False], ~established]), newcomer_cap)
    return weights


def cap_weights(weights: Floats, caps: Floats) -> Floats:
    """Weights over [self, *kept] with each kept one at most its cap; the excess stays with us."""
    capped = np.minimum(weights[1:], caps)
    return np.concatenate([[1.0 - capped.sum()], capped])
