"""Free-riding, replay and Sybil groups."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfed.attacks.base import AttackContext
from p2pfed.attacks.model_poisoning import IPM
from p2pfed.attacks.network import FreeRider, Replay
from p2pfed.attacks.sybil import SybilGroup

OWN = np.array([1.0, 1.0], dtype=np.float32)


def ctx(
    *,
    round: int = 2,
    step: int = 0,
    recipient: str = "r",
    own: np.ndarray = OWN,
    sent: tuple[tuple[int, int, bytes], ...] = (),
    history: tuple[tuple[int, int, str, np.ndarray], ...] = (),
    honest_seen: np.ndarray | None = None,
) -> AttackContext:
    return AttackContext(
        round=round,
        step=step,
        recipient=recipient,
        own=own,
        received=np.zeros((0, 2), np.float32),
        senders=(),
        colluders=frozenset({"me", "me2"}),
        honest_seen=honest_seen,
        sent_history=sent,
        received_history=history,
        rng=np.random.default_rng(0),
    )


HISTORY = (
    (1, 0, "a", np.array([5.0, 5.0], np.float32)),
    (1, 0, "me2", np.array([9.0, 9.0], np.float32)),
    (2, 0, "r", np.array([7.0, 7.0], np.float32)),
)


def test_free_rider_echoes_the_latest_honest_vector_from_someone_else() -> None:
    message = FreeRider().outgoing(ctx(history=HISTORY))
    np.testing.assert_array_equal(message.vector, [5, 5])
    alone = FreeRider().outgoing(ctx(step=1, history=HISTORY[2:]))
    np.testing.assert_array_equal(alone.vector, [7, 7])  # only the recipient's own vector is known


def test_free_rider_picks_the_same_vector_whatever_the_arrival_order() -> None:
    history = (
        (2, 1, "b", np.array([1.0, 1.0], np.float32)),
        (2, 1, "c", np.array([2.0, 2.0], np.float32)),
        (2, 0, "d", np.array([3.0, 3.0], np.float32)),
    )
    picks = {
        tuple(FreeRider().outgoing(ctx(round=2, step=2, history=order)).vector)
        for order in (history, history[::-1], history[1:] + history[:1])
    }
    assert picks == {(2.0, 2.0)}  # newest (round, step), then sender ID
    early = FreeRider().outgoing(ctx(round=2, step=1, history=history)).vector
    np.testing.assert_array_equal(early, [3, 3])  # step 1 may still be arriving: not used yet


def test_stale_free_rider_sends_its_first_vector_forever() -> None:
    rider = FreeRider(mode="stale")
    rider.outgoing(ctx(own=np.zeros(2, np.float32)))
    later = rider.outgoing(ctx(own=np.full(2, 3.0, np.float32), history=HISTORY))
    np.testing.assert_array_equal(later.vector, [0, 0])


def test_replay_resends_an_old_envelope_verbatim() -> None:
    sent = ((0, 0, b"r0s0"), (0, 1, b"r0s1"), (1, 0, b"r1s0"), (2, 0, b"r2s0"))
    assert Replay(lag=1).outgoing(ctx(round=2, sent=sent)).raw == b"r1s0"
    assert Replay(lag=2).outgoing(ctx(round=2, sent=sent)).raw == b"r0s1"
    first = Replay().outgoing(ctx(round=0, sent=()))
    assert first.raw is None and first.vector is OWN


def test_replay_can_claim_an_old_round() -> None:
    message = Replay(mode="claim", lag=2).outgoing(ctx(round=5))
    assert message.round == 3 and message.vector is OWN


def test_bad_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="echo"):
        FreeRider(mode="x")
    with pytest.raises(ValueError, match="envelope"):
        Replay(mode="x")


def test_sybil_members_share_state_and_send_one_crafted_vector() -> None:
    calls: list[str] = []

    class Counting(IPM):
        def outgoing(self, c: AttackContext):  # type: ignore[no-untyped-def]
            calls.append(c.recipient)
            return super().outgoing(c)

    group = SybilGroup(Counting(epsilon=1.0), size=3)
    seen = np.array([[1.0, 3.0], [3.0, 1.0]], np.float32)
    messages = [
        m.outgoing(ctx(honest_seen=seen, own=np.full(2, float(i), np.float32)))
        for i, m in enumerate(group.members)
    ]
    assert calls == ["r"]  # crafted once
    assert all(m is messages[0] for m in messages)
    assert messages[0] is not None and messages[0].vector is not None
    np.testing.assert_allclose(messages[0].vector, [-2, -2])
    assert all(m.waits_for_honest for m in group.members)
    group.members[0].outgoing(ctx(honest_seen=seen, step=1))
    assert calls == ["r", "r"]  # a new step, a new vector


def test_a_sybil_group_delegates_label_poisoning() -> None:
    from p2pfed.attacks.data_poisoning import LabelFlip

    group = SybilGroup(LabelFlip(), size=2)
    labels = np.array([0, 2], np.int64)
    np.testing.assert_array_equal(
        group.members[1].poison_labels(labels, 3, np.random.default_rng(0)), [2, 0]
    )
