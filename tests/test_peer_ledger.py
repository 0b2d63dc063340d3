"""The step ledger: what each neighbour has sent per (round, step), and when a step need wait no longer."""

from __future__ import annotations

import numpy as np

from p2pfed.peer.ledger import StepLedger

Q = 2  # gossip steps per round
V = np.ones(3, np.float32)


def test_a_step_is_answered_once_every_expected_sender_has_settled_it() -> None:
    ledger = StepLedger(Q)
    assert ledger.answered(0, 0, [])  # nobody to wait for
    assert not ledger.answered(0, 0, ["a", "b"])
    ledger.update(0, 0, "a", V)
    assert ledger.settled(0, 0, "a") and not ledger.settled(0, 0, "b")
    assert not ledger.answered(0, 0, ["a", "b"])
    ledger.update(0, 0, "b", 2 * V)
    assert ledger.answered(0, 0, ["a", "b"])
    assert not ledger.answered(0, 1, ["a"])  # the next step is its own
    assert sorted(ledger.updates(0, 0)) == ["a", "b"]
    np.testing.assert_array_equal(ledger.updates(0, 0)["b"], 2 * V)


def test_an_equivocator_settles_its_step_and_none_of_its_updates_count() -> None:
    ledger = StepLedger(Q)
    ledger.update(1, 0, "liar", V)
    ledger.equivocation(1, 0, "liar")
    assert ledger.updates(1, 0) == {}
    assert ledger.equivocated(1, 0) == {"liar"}
    assert ledger.settled(1, 0, "liar")
    assert not ledger.update(1, 0, "liar", V)  # a third update is refused too
    assert ledger.updates(1, 0) == {}


def test_invalid_is_remembered_for_reputation_but_does_not_by_itself_settle_a_step() -> None:
    ledger = StepLedger(Q)
    ledger.invalid(0, 1, "junk")
    assert ledger.invalid_senders(0, 1) == {"junk"}
    assert ledger.invalid_senders(0, 0) == set()
    assert not ledger.settled(0, 1, "junk")


def test_an_answer_credits_the_first_step_the_sender_has_not_settled() -> None:
    ledger = StepLedger(Q)
    ledger.update(0, 1, "a", V)  # "a" is a step ahead of us: it already sent for step 1
    assert ledger.answer("a", 0, 0) == (0, 0)  # the step in progress first
    assert ledger.answer("a", 0, 0) == (1, 0)  # step (0, 1) is settled: the next unsettled one
    assert ledger.answer("a", 0, 0) == (1, 1)
    assert ledger.settled(1, 1, "a") and ledger.updates(1, 1) == {}
    # everything up to the end of the next round is settled: the step in progress is credited again
    assert ledger.answer("a", 0, 0) == (0, 0)
    assert ledger.answered(0, 0, ["a"]) and ledger.answered(1, 1, ["a"])


def test_an_answer_never_credits_a_step_before_the_one_in_progress() -> None:
    ledger = StepLedger(Q)
    assert ledger.answer("a", 3, 1) == (3, 1)
    assert not ledger.settled(3, 0, "a")


def test_forgetting_drops_the_rounds_before_and_keeps_the_rest() -> None:
    ledger = StepLedger(Q)
    for rnd in range(4):
        ledger.update(rnd, 0, "a", V)
        ledger.equivocation(rnd, 1, "b")
    ledger.forget_before(2)
    assert ledger.rounds() == {2, 3}
    assert ledger.updates(1, 0) == {} and not ledger.settled(1, 1, "b")
    assert "a" in ledger.updates(2, 0) and ledger.equivocated(3, 1) == {"b"}


def test_reading_a_step_does_not_create_it() -> None:
    ledger = StepLedger(Q)
    ledger.updates(5, 0)
    ledger.answered(5, 1, ["a"])
    ledger.settled(6, 0, "a")
    assert ledger.rounds() == set()


def test_every_neighbour_gets_a_verdict_and_one_that_sent_nothing_is_missing() -> None:
    from p2pfed.types import Outcome, Verdict

    ledger = StepLedger(Q)
    ledger.update(0, 0, "kept", V)
    ledger.equivocation(0, 0, "two-faced")
    ledger.invalid(0, 0, "junk")
    ledger.answer("junk", 0, 0)
    verdicts = ledger.verdicts(
        0, 0, defended=[Verdict("kept", Outcome.KEPT)], quarantined=["shunned"],
        neighbours=["kept", "two-faced", "junk", "shunned", "silent"],
    )
    assert {v.sender: v.outcome for v in verdicts} == {
        "kept": Outcome.KEPT, "shunned": Outcome.QUARANTINED, "two-faced": Outcome.EQUIVOCATED,
        "junk": Outcome.INVALID, "silent": Outcome.MISSING,
    }
    assert len(verdicts) == 5


def test_a_mixed_step_keeps_who_settled_it_but_not_their_vectors() -> None:
    ledger = StepLedger(Q)
    ledger.update(0, 0, "a", V)
    ledger.release(0, 0)
    assert ledger.updates(0, 0) == {}
    assert ledger.settled(0, 0, "a") and ledger.answered(0, 0, ["a"])
    assert ledger.update(0, 0, "late", 2 * V)  # settles the step, the vector is not kept
    assert ledger.settled(0, 0, "late") and ledger.updates(0, 0) == {}
    ledger.equivocation(0, 0, "a")
    assert ledger.equivocated(0, 0) == {"a"} and ledger.settled(0, 0, "a")
    ledger.update(0, 1, "a", V)  # the next step is untouched
    assert sorted(ledger.updates(0, 1)) == ["a"]
