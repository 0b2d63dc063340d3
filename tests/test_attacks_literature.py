"""Min-Max, Min-Sum, Mimic, the patient and the targeted attacker compute what their docstrings define."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pfed.attacks.agr_agnostic import MinMax, MinSum, perturbation
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.attacks.data_poisoning import LabelFlip
from p2pfed.attacks.mimic import Mimic
from p2pfed.attacks.model_poisoning import IPM
from p2pfed.attacks.patient import Patient
from p2pfed.attacks.targeted import Targeted
from p2pfed.types import FloatMatrix
from p2pfed.wire.identity import Identity

# three honest vectors whose mean lies on the diagonal: every perturbation points along −(1, 1)
CORNERS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=np.float32)


def ctx(
    own: list[float] | None = None,
    *,
    round: int = 0,
    step: int = 0,
    recipient: str = "r",
    received: FloatMatrix | None = None,
    senders: tuple[str, ...] = (),
    honest_seen: FloatMatrix | None = None,
    colluders: frozenset[str] = frozenset({"me"}),
) -> AttackContext:
    own_vec = np.array([7.0, 7.0] if own is None else own, dtype=np.float32)
    return AttackContext(
        round=round,
        step=step,
        recipient=recipient,
        own=own_vec,
        received=np.zeros((0, own_vec.size), np.float32) if received is None else received,
        senders=senders,
        colluders=colluders,
        honest_seen=honest_seen,
        sent_history=(),
        received_history=(),
        rng=np.random.default_rng(0),
    )


def sent(behaviour: Behaviour, context: AttackContext) -> np.ndarray:
    message = behaviour.outgoing(context)
    assert message is not None and message.vector is not None
    assert message.vector.dtype == np.float32
    return message.vector


def test_perturbations_are_minus_unit_mean_minus_sample_std_and_minus_sign() -> None:
    h = np.array([[1.0, -2.0, 0.0], [3.0, -2.0, 0.0]])
    np.testing.assert_allclose(
        perturbation(h, "unit_vec"), -np.array([2.0, -2.0, 0.0]) / math.sqrt(8)
    )
    np.testing.assert_allclose(perturbation(h, "std"), [-math.sqrt(2), 0.0, 0.0])  # ddof = 1
    np.testing.assert_allclose(perturbation(h, "sign"), [-1.0, 1.0, 0.0])


@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
def test_min_max_goes_as_far_as_the_farthest_honest_pair_allows(kind: str) -> None:
    # x = t·(1, 1); its farthest honest vector is (4, 0): (t − 4)² + t² = 32 (= the largest honest
    # distance², between (4, 0) and (0, 4)) gives t = 2 − 2√3
    out = sent(MinMax(perturbation=kind), ctx(honest_seen=CORNERS))
    np.testing.assert_allclose(out, [2 - 2 * math.sqrt(3)] * 2, rtol=1e-6)
    farthest = np.linalg.norm(CORNERS - out, axis=1).max()
    assert farthest == pytest.approx(4 * math.sqrt(2), rel=1e-6)


def test_in_spread_attacks_craft_once_per_step_for_every_recipient() -> None:
    attacker = MinMax()
    first = sent(attacker, ctx(honest_seen=CORNERS, recipient="a"))
    assert sent(attacker, ctx(honest_seen=CORNERS, recipient="b")) is first
    later = sent(attacker, ctx(step=1, honest_seen=CORNERS + 1))
    np.testing.assert_allclose(later, first + 1, rtol=1e-6)  # the spread moved by (1, 1)


def test_min_max_gamma_is_in_units_of_the_perturbation() -> None:
    # the same corners halved: x = (1 − √3)(1, 1); p_std = −(2/√3)(1, 1), μ = (2/3)(1, 1)
    _, gamma = MinMax(perturbation="std").craft(CORNERS.astype(np.float64) / 2)
    assert gamma == pytest.approx((2 / 3 - (1 - math.sqrt(3))) / (2 / math.sqrt(3)), rel=1e-9)


def test_min_sum_matches_its_closed_form_and_is_tight() -> None:
    # γ* = max_i ‖h_i − μ‖ / ‖p‖ = (4/3)√5 for the unit vector
    mean = CORNERS.mean(axis=0)
    out = sent(MinSum(perturbation="unit_vec"), ctx(honest_seen=CORNERS))
    expected = mean - (4 / 3) * math.sqrt(5) * np.array([1.0, 1.0]) / math.sqrt(2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # Σ_i ‖x − h_i‖² reaches max_i Σ_j ‖h_i − h_j‖² = 16 + 32 = 48 (the corner (4, 0))
    assert float((np.linalg.norm(CORNERS - out, axis=1) ** 2).sum()) == pytest.approx(48, rel=1e-5)


def test_in_spread_attacks_send_the_mean_when_the_honest_vectors_do_not_vary() -> None:
    one = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(sent(MinMax(), ctx(honest_seen=one)), [1.0, 2.0])
    np.testing.assert_allclose(sent(MinSum(), ctx(honest_seen=np.vstack([one, one]))), [1.0, 2.0])


def test_a_small_gamma_range_caps_the_search() -> None:
    out = sent(MinMax(perturbation="unit_vec", gamma_max=0.5), ctx(honest_seen=CORNERS))
    np.testing.assert_allclose(out, CORNERS.mean(axis=0) - 0.5 / math.sqrt(2), rtol=1e-6)


def test_mimic_copies_the_peer_standing_out_along_the_top_principal_direction() -> None:
    # warm-up step: the honest vectors vary most along x, where c stands out
    warm = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 0.0]], np.float32)
    first, second = Mimic.group(2, warmup=1)
    context = ctx(received=warm, senders=("a", "b", "c"), honest_seen=warm)
    np.testing.assert_array_equal(sent(first, context), [4.0, 0.0])
    # after the warm-up, c stays the target although a is now the outlier; the second attacker does
    # not hear from c and still sends c's vector of this step, from the shared board
    later = np.array([[10.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    context = ctx(step=1, received=later, senders=("a", "b", "c"), honest_seen=later)
    np.testing.assert_array_equal(sent(first, context), [1.0, 1.0])
    context = ctx(step=1, received=later[:2], senders=("a", "b"), honest_seen=later)
    np.testing.assert_array_equal(sent(second, context), [1.0, 1.0])
    assert first.board.target == "c" and Mimic.waits_for_honest


def test_mimic_sends_its_own_vector_until_it_has_seen_an_honest_one() -> None:
    np.testing.assert_array_equal(sent(Mimic(), ctx([3.0, 4.0])), [3.0, 4.0])


def test_patient_is_honest_until_its_strike_round_and_waits_from_the_striking_step() -> None:
    patient = Patient(IPM(epsilon=1.0), strike_round=2)
    honest = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    waits = []
    for rnd, step in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(sent(patient, ctx(round=rnd, step=step)), [7.0, 7.0])
        waits.append(patient.waits_for_honest)
    # round 0 taught it that a round has two steps: after (1, 1) the next step strikes, so it waits
    assert waits == [False, False, False, True]
    np.testing.assert_allclose(sent(patient, ctx(round=2, honest_seen=honest)), [-1.0, -1.0])


def test_patient_never_waits_for_an_inner_attack_that_does_not() -> None:
    patient = Patient(Behaviour(), strike_round=0)
    patient.outgoing(ctx())
    assert not patient.waits_for_honest


def test_wrappers_refuse_data_poisoning() -> None:
    with pytest.raises(ValueError, match="poisons its training data"):
        Patient(LabelFlip())
    with pytest.raises(ValueError, match="poisons its training data"):
        Targeted(LabelFlip())


class Marker(Behaviour):
    """Sends [-1, -1]: tells the inner attack's messages apart."""

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        return Outgoing(vector=np.full(2, -1.0, np.float32))


def test_targeted_attacks_the_named_victim_only() -> None:
    attacker = Targeted(Marker(), victim="v")
    np.testing.assert_array_equal(sent(attacker, ctx(recipient="v")), [-1.0, -1.0])
    np.testing.assert_array_equal(sent(attacker, ctx(recipient="w")), [7.0, 7.0])


def test_a_victim_index_is_the_simulations_peer_of_that_index() -> None:
    assert Targeted(victim=3, seed=5).victim == Identity.for_peer(5, 3).peer_id
    with pytest.raises(ValueError, match="victim"):
        Targeted(victim=-1)


def test_targeted_default_victim_is_the_honest_peer_with_most_byzantine_neighbours() -> None:
    first, second = Targeted.group([Marker(), Marker()])
    colluders = frozenset({"m1", "m2"})
    # round 0: everyone gets an honest message while the attackers record whom they send to
    for attacker, recipients in ((first, ["v1", "v2", "m2"]), (second, ["v3", "v2", "m1"])):
        for to in recipients:
            out = sent(attacker, ctx(recipient=to, colluders=colluders))
            np.testing.assert_array_equal(out, [7.0, 7.0])
    # round 1: v2 neighbours both attackers; the others one each
    for attacker in (first, second):
        assert sent(attacker, ctx(round=1, recipient="v2", colluders=colluders))[0] == -1.0
        assert sent(attacker, ctx(round=1, recipient="v1", colluders=colluders))[0] == 7.0
    assert first.board.victim == "v2"


def test_targeted_ties_go_to_the_smallest_peer_id() -> None:
    attacker = Targeted(Marker())
    for to in ["pb", "pa", "pc"]:
        attacker.outgoing(ctx(recipient=to))
    assert sent(attacker, ctx(round=1, recipient="pa"))[0] == -1.0
    assert attacker.waits_for_honest is False  # follows the inner attack


def test_targeted_follows_a_patient_inner_attack_in_waiting() -> None:
    attacker = Targeted(Patient(IPM(), strike_round=1), victim="v")
    assert not attacker.waits_for_honest
    attacker.outgoing(ctx(recipient="v"))
    attacker.outgoing(ctx(round=1, recipient="v"))
    assert attacker.waits_for_honest
