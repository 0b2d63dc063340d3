"""The white-box attacker: the most harmful vector a known defence still accepts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from p2pfed.attacks.base import AttackContext, Collusion
from p2pfed.attacks.whitebox import WhiteBox
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.mean import Mean
from p2pfed.types import DefenceResult, Outcome, Verdict

D = 4
HONEST = np.array([[1.0, 1.0, 0.0, 0.0], [1.2, 0.8, 0.1, 0.0], [0.9, 1.1, 0.0, 0.2]], np.float32)
RECIPIENT = HONEST[0]


@dataclass(frozen=True)
class WithinRadius:
    """Keeps a candidate within `radius` of our vector and averages the kept ones; drops the rest."""

    radius: float = 0.5
    name: str = field(default="within_radius", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        near = np.linalg.norm(inp.received - inp.own[None, :], axis=1) <= self.radius
        kept = inp.received[near]
        mixed = np.vstack([inp.own[None, :], kept]).mean(axis=0)
        verdicts = [
            Verdict(s, Outcome.KEPT, weight=1 / (1 + kept.shape[0]))
            if k
            else Verdict(s, Outcome.DROPPED, reason="far")
            for s, k in zip(inp.senders, near.tolist(), strict=True)
        ]
        return DefenceResult(mixed=mixed.astype(np.float32), verdicts=tuple(verdicts))


@dataclass(frozen=True)
class GroupsCopies(WithinRadius):
    duplicate_factor: float = 0.05  # as Bristle has: copies closer than this are one neighbour


@dataclass(frozen=True)
class DropsAll:
    name: str = field(default="drops_all", init=False)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        verdicts = tuple(Verdict(s, Outcome.DROPPED, reason="far") for s in inp.senders)
        return DefenceResult(mixed=inp.own.copy(), verdicts=verdicts)


def context(defence: object, *, seed: int = 0, collusion: Collusion | None = None) -> AttackContext:
    return AttackContext(
        round=0,
        step=0,
        recipient="r",
        own=np.full(D, 0.5, np.float32),
        received=HONEST,
        senders=("r", "h1", "h2"),
        colluders=frozenset({"me"}),
        honest_seen=HONEST,
        sent_history=(),
        received_history=(),
        rng=np.random.default_rng(seed),
        defence=defence,  # type: ignore[arg-type]
        evaluate=lambda x: -np.linalg.norm(x, axis=1, keepdims=True),
        anchor=np.zeros(D, np.float32),  # round 0: the shared initial vector
        collusion=collusion,
    )


def test_it_sends_the_largest_pull_the_defence_accepts() -> None:
    sent = WhiteBox(iterations=30).outgoing(context(WithinRadius(radius=0.5)))
    assert sent.vector is not None
    distance = float(np.linalg.norm(sent.vector - RECIPIENT))
    assert distance <= 0.5 + 1e-4  # accepted...
    assert distance > 0.49  # ... and at the edge: the largest pull inside the radius


def test_against_plain_mean_the_pull_is_only_limited_by_max_scale() -> None:
    sent = WhiteBox(max_scale=8.0).outgoing(context(Mean()))
    assert sent.vector is not None
    update = np.linalg.norm(RECIPIENT)  # the recipient's first-step vector minus the initial one
    assert np.linalg.norm(sent.vector - RECIPIENT) == pytest.approx(8.0 * update, rel=1e-5)


def test_when_nothing_harmful_is_accepted_it_behaves() -> None:
    sent = WhiteBox().outgoing(context(DropsAll()))
    assert sent.vector is not None
    np.testing.assert_allclose(sent.vector, RECIPIENT, atol=1e-6)


def test_colluders_share_one_search_but_send_distinct_vectors_to_a_defence_that_groups_copies() -> (
    None
):
    board = Collusion()
    defence = GroupsCopies(radius=0.5)
    first = WhiteBox().outgoing(context(defence, seed=1, collusion=board))
    second = WhiteBox().outgoing(context(defence, seed=2, collusion=board))
    assert len(board.shared) == 1
    assert first.vector is not None and second.vector is not None
    assert not np.array_equal(first.vector, second.vector)
    np.testing.assert_allclose(first.vector, second.vector, atol=0.2)


@dataclass(frozen=True)
class RecordsEvidence(WithinRadius):
    """Remembers the validation class count of the inputs it was asked to judge."""

    seen: list[int | None] = field(default_factory=list)

    def __call__(self, inp: DefenceInput) -> DefenceResult:
        self.seen.append(inp.validation_classes)
        return super().__call__(inp)


def test_it_models_the_victims_validation_class_count_from_the_collusion_board() -> None:
    board = Collusion()
    board.validation_classes["r"] = 1
    defence = RecordsEvidence()
    WhiteBox(iterations=3).outgoing(context(defence, collusion=board))
    assert defence.seen and set(defence.seen) == {1}
    unknown = RecordsEvidence()
    WhiteBox(iterations=3).outgoing(context(unknown, collusion=Collusion()))
    assert set(unknown.seen) == {None}
