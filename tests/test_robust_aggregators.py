"""Every baseline aggregation rule against values worked out by hand on tiny vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.robust import reasons
from p2pfed.robust.balance import Balance
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.clipped_gossip import ClippedGossip, adaptive_tau
from p2pfed.robust.krum import Krum, MultiKrum, krum_scores
from p2pfed.robust.mean import Mean
from p2pfed.robust.median import Median
from p2pfed.robust.registry import DEFENCES, load_defence
from p2pfed.robust.trimmed_mean import TrimmedMean
from p2pfed.types import Outcome


def make_input(
    own: list[float], received: list[list[float]], weights: list[float] | None = None, **kw
) -> DefenceInput:
    n = len(received)
    return DefenceInput(
        own=np.array(own, dtype=np.float32),
        received=np.array(received, dtype=np.float32).reshape(n, len(own)),
        senders=tuple("abcdefgh"[:n]),
        mixing_weights=np.array(
            weights if weights is not None else [1 / (n + 1)] * (n + 1), dtype=np.float32
        ),
        reputation={},
        evaluate=None,
        rng=np.random.default_rng(0),
        **kw,
    )


def outcomes(result) -> dict[str, Outcome]:  # type: ignore[no-untyped-def]
    return {v.sender: v.outcome for v in result.verdicts}


def test_mean_is_the_metropolis_hastings_weighted_average() -> None:
    out = Mean()(make_input([0, 0], [[2, 0], [0, 4]], [0.5, 0.25, 0.25]))
    np.testing.assert_allclose(out.mixed, [0.5, 1.0])
    assert [(v.outcome, v.weight) for v in out.verdicts] == [
        (Outcome.KEPT, 0.25),
        (Outcome.KEPT, 0.25),
    ]


def test_median_is_coordinate_wise_and_credits_the_middle_rows() -> None:
    out = Median()(make_input([0, 0], [[1, 10], [100, 5]]))
    np.testing.assert_allclose(out.mixed, [1, 5])
    assert {v.sender: v.weight for v in out.verdicts} == {"a": 0.5, "b": 0.5}


def test_median_of_an_even_count_averages_the_two_middle_values() -> None:
    out = Median()(make_input([0, 0, 0], [[1, 10, -1], [2, 20, -2], [100, -5, 3]]))
    np.testing.assert_allclose(out.mixed, [1.5, 5, -0.5])


def test_trimmed_mean_drops_b_from_each_side_per_coordinate() -> None:
    out = TrimmedMean(trim=0.2)(make_input([0, 0], [[1, -1], [2, -2], [3, -3], [100, -100]]))
    np.testing.assert_allclose(out.mixed, [2, -2])
    assert outcomes(out) == {
        "a": Outcome.KEPT,
        "b": Outcome.KEPT,
        "c": Outcome.KEPT,
        "d": Outcome.DROPPED,
    }
    assert out.verdicts[3].reason == reasons.TRIMMED
    assert out.verdicts[0].weight == pytest.approx(1 / 3)


def test_trimmed_mean_never_trims_everything() -> None:
    out = TrimmedMean(trim=0.5)(make_input([0], [[4]]))
    np.testing.assert_allclose(out.mixed, [2])


def test_krum_scores_sum_the_nearest_squared_distances() -> None:
    vectors = np.array([[0], [1], [2], [4], [100]], dtype=np.float32)
    np.testing.assert_allclose(krum_scores(vectors, f=1), [5, 2, 5, 13, 96**2 + 98**2])


def test_krum_picks_the_most_central_vector() -> None:
    out = Krum(f=1)(make_input([0], [[1], [2], [4], [100]]))
    np.testing.assert_allclose(out.mixed, [1])
    assert outcomes(out) == {
        "a": Outcome.KEPT,
        "b": Outcome.DROPPED,
        "c": Outcome.DROPPED,
        "d": Outcome.DROPPED,
    }


def test_multi_krum_averages_the_n_minus_f_best() -> None:
    out = MultiKrum(f=1)(make_input([0], [[1], [2], [4], [100]]))
    np.testing.assert_allclose(out.mixed, [(0 + 1 + 2 + 4) / 4])
    assert outcomes(out)["d"] is Outcome.DROPPED
    assert out.verdicts[3].reason == reasons.NOT_SELECTED


def test_clipped_gossip_with_a_fixed_radius() -> None:
    inp = make_input([0, 0], [[3, 4], [0, 1], [0, -2]], [0.25] * 4)
    out = ClippedGossip(tau=1.0)(inp)
    # clip: [3,4] -> [0.6,0.8]; [0,1] stays; [0,-2] -> [0,-1]; times 0.25
    np.testing.assert_allclose(out.mixed, [0.15, 0.2], rtol=1e-6)
    assert [v.reason for v in out.verdicts] == [reasons.CLIPPED, "", reasons.CLIPPED]


def test_clipped_gossip_adaptive_radius_clips_only_the_farthest_by_default() -> None:
    out = ClippedGossip()(make_input([0, 0], [[3, 4], [0, 1], [0, -2]], [0.25] * 4))
    # tau = second-largest distance = 2: [3,4] -> [1.2,1.6]
    np.testing.assert_allclose(out.mixed, [0.3, 0.15], rtol=1e-6)


def test_clipped_gossip_adaptive_radius_clips_the_presumed_byzantine_weight() -> None:
    distances = np.array([5.0, 1.0, 2.0])
    weights = np.array([0.25, 0.25, 0.25])
    assert adaptive_tau(distances, weights, delta=0.5) == 1.0
    assert adaptive_tau(distances, weights, delta=0.25) == 2.0
    assert adaptive_tau(distances, weights, delta=0.0) == math.inf
    out = ClippedGossip(delta=0.5)(make_input([0, 0], [[3, 4], [0, 1], [0, -2]], [0.25] * 4))
    np.testing.assert_allclose(out.mixed, [0.15, 0.2], rtol=1e-6)


def test_balance_accepts_within_its_own_norm_radius_and_mixes_with_alpha() -> None:
    out = Balance()(make_input([3, 4], [[3, 5], [4, 4], [10, 10]]))
    # radius 0.3 * 5 = 1.5: the first two are accepted
    np.testing.assert_allclose(out.mixed, [3.25, 4.25])
    assert outcomes(out) == {"a": Outcome.KEPT, "b": Outcome.KEPT, "c": Outcome.DROPPED}
    assert out.verdicts[0].weight == pytest.approx(0.25)


def test_balance_radius_shrinks_over_rounds() -> None:
    out = Balance(total_rounds=10)(make_input([3, 4], [[3, 5], [4, 4]], round=10))
    # radius 1.5 * exp(-1) = 0.55: nothing accepted, own vector kept
    np.testing.assert_allclose(out.mixed, [3, 4])
    assert set(outcomes(out).values()) == {Outcome.DROPPED}


@pytest.mark.parametrize("name", sorted(DEFENCES))
def test_every_defence_rejects_non_finite_rows_and_survives_no_neighbours(name: str) -> None:
    defence = load_defence(name)
    out = defence(make_input([1, 1], [[1, 1], [np.nan, 0]]))
    assert np.isfinite(out.mixed).all()
    assert outcomes(out)["b"] is Outcome.INVALID
    alone = defence(make_input([1, 2], []))
    np.testing.assert_allclose(alone.mixed, [1, 2])
    assert alone.verdicts == ()


def test_load_defence_by_name_and_import_path() -> None:
    assert load_defence("trimmed-mean", trim=0.1).name == "trimmed_mean"
    assert load_defence("p2pfed.robust.krum:MultiKrum", f=2).name == "multi_krum"


def test_unknown_defence_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="bristle.*median"):
        load_defence("mediam")
    with pytest.raises(ConfigError, match="bad parameters"):
        load_defence("krum", q=3)
    with pytest.raises(ConfigError, match="cannot import"):
        load_defence("no_such_module_xyz:Thing")
