from __future__ import annotations

from p2pfed.wire import Admission, Inbox

A, B = b"\x01" * 32, b"\x02" * 32


def test_first_delivery_is_new_and_identical_redelivery_is_a_duplicate() -> None:
    inbox = Inbox()
    assert inbox.admit("alice", 1, 0, A) is Admission.NEW
    assert inbox.admit("alice", 1, 0, A) is Admission.DUPLICATE
    assert inbox.admit("alice", 1, 1, A) is Admission.NEW
    assert inbox.admit("bob", 1, 0, A) is Admission.NEW
    assert inbox.equivocators(1, 0) == frozenset()


def test_different_payload_for_the_same_key_is_equivocation_and_stays_so() -> None:
    inbox = Inbox()
    assert inbox.admit("mallory", 2, 3, A) is Admission.NEW
    assert inbox.admit("mallory", 2, 3, B) is Admission.EQUIVOCATION
    assert (
        inbox.admit("mallory", 2, 3, A) is Admission.EQUIVOCATION
    )  # the first copy is tainted too
    assert inbox.equivocators(2, 3) == frozenset({"mallory"})
    assert inbox.equivocators(2, 4) == frozenset()
    assert inbox.admit("mallory", 2, 4, B) is Admission.NEW


def test_memory_is_bounded_by_the_round_window_and_steps_per_round() -> None:
    inbox = Inbox(window=1, max_steps_per_round=3)
    for round_ in range(100):
        inbox.advance(round_)
        for step in range(3):
            assert inbox.admit("alice", round_, step, A) is Admission.NEW
        assert inbox.admit("alice", round_, 99, A) is Admission.OVERFLOW
    assert len(inbox) <= 2 * 3
    assert inbox.floor == 98
    assert inbox.admit("alice", 50, 0, B) is Admission.STALE
