"""Model- and data-poisoning attacks produce what their papers define."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from p2pfed.attacks.adaptive import DefenceAware, largest_scale
from p2pfed.attacks.base import AttackContext
from p2pfed.attacks.data_poisoning import LabelFlip
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.model_poisoning import ALIE, IPM, GaussianNoise, SignFlip, alie_z
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.bristle import Bristle
from p2pfed.robust.mean import Mean
from p2pfed.types import FloatMatrix, Outcome

HONEST = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, 1.0], [2.0, 5.0, -1.0]], dtype=np.float32)


def ctx(
    own: list[float] | np.ndarray | None = None,
    *,
    received: FloatMatrix | None = None,
    senders: tuple[str, ...] = (),
    honest_seen: FloatMatrix | None = None,
    recipient: str = "r",
    colluders: frozenset[str] = frozenset({"me"}),
    seed: int = 0,
) -> AttackContext:
    own_vec = np.array([0.5, -0.5, 2.0] if own is None else own, dtype=np.float32)
    return AttackContext(
        round=3,
        step=1,
        recipient=recipient,
        own=own_vec,
        received=np.zeros((0, own_vec.size), np.float32) if received is None else received,
        senders=senders,
        colluders=colluders,
        honest_seen=honest_seen,
        sent_history=(),
        received_history=(),
        rng=np.random.default_rng(seed),
    )


def sent(behaviour, context: AttackContext) -> np.ndarray:  # type: ignore[no-untyped-def]
    message = behaviour.outgoing(context)
    assert message is not None and message.vector is not None
    assert message.vector.dtype == np.float32
    return message.vector


def test_sign_flip_sends_minus_s_times_its_own_vector() -> None:
    np.testing.assert_allclose(sent(SignFlip(scale=3.0), ctx([1, -2, 0])), [-3, 6, 0])


def test_gaussian_noise_is_centred_on_its_own_vector_with_sigma() -> None:
    own = np.zeros(20_000)
    out = sent(GaussianNoise(sigma=2.0), ctx(own, seed=1))
    assert abs(out.mean()) < 0.05 and out.std() == pytest.approx(2.0, rel=0.03)
    again = sent(GaussianNoise(sigma=2.0), ctx(own, seed=1))
    np.testing.assert_array_equal(out, again)


def test_alie_z_follows_the_paper_formula() -> None:
    # n = 20, f = 4: s = floor(11) - 4 = 7 supporters, z = Phi^-1((20 - 7) / 20)
    assert alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(0.65))
    assert alie_z(20, 4) == pytest.approx(0.38532, abs=1e-4)


def test_alie_sends_mean_minus_z_std_of_the_honest_vectors() -> None:
    out = sent(ALIE(n=20, f=4), ctx(honest_seen=HONEST))
    expected = HONEST.mean(axis=0) - alie_z(20, 4) * HONEST.std(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert ALIE.waits_for_honest


def test_alie_defaults_n_and_f_from_what_it_sees() -> None:
    context = ctx(honest_seen=HONEST, colluders=frozenset({"me", "other"}))
    expected = HONEST.mean(axis=0) - alie_z(3 + 2, 2) * HONEST.std(axis=0)
    np.testing.assert_allclose(sent(ALIE(), context), expected, rtol=1e-6)


def test_ipm_sends_minus_epsilon_times_the_honest_mean() -> None:
    np.testing.assert_allclose(
        sent(IPM(epsilon=0.5), ctx(honest_seen=HONEST)), -0.5 * HONEST.mean(axis=0)
    )


def test_omniscient_attacks_fall_back_to_received_then_to_own() -> None:
    received = np.vstack([HONEST[:2], np.full((1, 3), 99.0, np.float32)])
    context = ctx(received=received, senders=("h0", "h1", "me"))
    # the colluder's row is excluded
    np.testing.assert_allclose(sent(IPM(epsilon=1.0), context), -HONEST[:2].mean(axis=0))
    np.testing.assert_allclose(sent(IPM(epsilon=1.0), ctx([1, 2, 3])), [-1, -2, -3])


def test_label_flip_maps_y_to_c_minus_1_minus_y() -> None:
    labels = np.array([0, 1, 2, 3, 1], dtype=np.int64)
    flipped = LabelFlip().poison_labels(labels, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, [3, 2, 1, 0, 2])


def test_dissensus_sends_x_i_minus_epsilon_times_the_honest_pull() -> None:
    x_i = HONEST[0]
    context = ctx(received=HONEST, senders=("r", "h1", "h2"), honest_seen=HONEST)
    expected = x_i - 1.5 * ((HONEST[1] - x_i) + (HONEST[2] - x_i))
    np.testing.assert_allclose(sent(Dissensus(epsilon=1.5), context), expected, rtol=1e-6)


def test_dissensus_pushes_plain_gossip_away_from_consensus() -> None:
    context = ctx(received=HONEST, senders=("r", "h1", "h2"), honest_seen=HONEST)
    byz = sent(Dissensus(epsilon=1.5), context)
    # the recipient mixes itself, its two honest neighbours and the attacker with equal weights
    inp = DefenceInput(
        own=HONEST[0],
        received=np.vstack([HONEST[1:], byz[None, :]]),
        senders=("h1", "h2", "me"),
        mixing_weights=np.full(4, 0.25, np.float32),
        reputation={},
        evaluate=None,
        rng=np.random.default_rng(0),
    )
    centre = HONEST.mean(axis=0)
    after = Mean()(inp).mixed
    assert np.linalg.norm(after - centre) > np.linalg.norm(HONEST[0] - centre)


def test_adaptive_attack_stays_just_inside_the_kept_radius_and_points_against_the_mean() -> None:
    rng = np.random.default_rng(3)
    honest = (np.ones(16) + 0.3 * rng.standard_normal((9, 16))).astype(np.float32)
    recipient = honest[0]
    context = ctx(
        np.zeros(16),
        received=honest,
        senders=tuple(f"h{i}" for i in range(9)),
        recipient="h0",
        honest_seen=honest,
    )
    out = sent(DefenceAware(quantile=0.5, slack=0.95), context)
    spread = np.linalg.norm(honest[1:] - recipient, axis=1)
    radius = 0.95 * np.median(spread)
    assert 0.99 * radius <= np.linalg.norm(out - recipient) <= radius * (1 + 1e-5)
    mean = honest.mean(axis=0)
    assert float((out - mean) @ mean) < 0  # it moves against the honest direction

    inp = DefenceInput(
        own=recipient,
        received=np.vstack([honest[1:], out[None, :]]),
        senders=(*[f"h{i}" for i in range(1, 9)], "me"),
        mixing_weights=np.full(10, 0.1, np.float32),
        reputation={},
        evaluate=None,
        rng=np.random.default_rng(0),
    )
    verdict = [v for v in Bristle(keep=9)(inp).verdicts if v.sender == "me"][0]
    assert verdict.outcome is Outcome.KEPT  # distance alone cannot catch it


def test_largest_scale_bisects_to_the_acceptance_boundary() -> None:
    assert largest_scale(lambda s: s <= 2.5, 0.0, 10.0) == pytest.approx(2.5, abs=1e-9)
    assert largest_scale(lambda s: False, 1.0, 10.0) == 1.0
    assert largest_scale(lambda s: True, 0.0, 10.0) == 10.0


def test_dissensus_pulls_as_hard_as_the_recipients_neighbours_not_the_whole_network() -> None:
    x_i = HONEST[0]
    seen = np.vstack(
        [HONEST, HONEST[1:] + 1.0, HONEST[1:] - 1.0]
    )  # colluders saw six more honest peers
    context = ctx(received=HONEST, senders=("r", "h1", "h2"), honest_seen=seen)
    # two honest neighbours of ours besides the recipient: k = 2 times the mean pull of what was seen
    expected = x_i - 1.5 * 2 * (seen[1:] - x_i).mean(axis=0)
    np.testing.assert_allclose(sent(Dissensus(epsilon=1.5), context), expected, rtol=1e-5)
