"""The receive rules: what a verified (or rejected) delivery does to the ledger and to the network's round."""

from __future__ import annotations

import numpy as np

from p2pfed.config import GossipConfig
from p2pfed.peer.intake import TENSOR, Intake
from p2pfed.wire import Accepted, Rejected, RejectReason

NEIGHBOURS = {"a", "b", "c"}


def update(sender: str, rnd: int, step: int = 0, value: float = 1.0) -> Accepted:
    vector = np.full(3, value, np.float32)
    digest = vector.tobytes()  # stands in for the payload's SHA-256: equal vectors, equal digests
    return Accepted(sender, rnd, step, 0.0, {TENSOR: vector}, digest, 100)


def intake(**hooks) -> Intake:  # type: ignore[no-untyped-def]
    return Intake(GossipConfig(gossip_steps=2, round_window=2), **hooks)


def receive(it: Intake, remote: str, verdict: Accepted | Rejected, at: tuple[int, int] = (0, 0)) -> bool:
    return it.receive(remote, verdict, at=at, neighbours=NEIGHBOURS, is_neighbour=NEIGHBOURS.__contains__)


def test_junk_from_a_neighbour_answers_its_step_and_costs_reputation_but_a_late_update_only_answers() -> None:
    it = intake()
    assert receive(it, "a", Rejected(RejectReason.BAD_SIGNATURE))
    assert receive(it, "b", Rejected(RejectReason.STALE_ROUND))
    assert it.ledger.answered(0, 0, ["a", "b"])  # nobody waits out the deadline for either
    assert it.ledger.invalid_senders(0, 0) == {"a"}
    assert it.rejections == {"bad_signature": 1, "stale_round": 1}


def test_what_a_stranger_sends_is_counted_and_filed_nowhere() -> None:
    it = intake()
    assert not receive(it, "x", Rejected(RejectReason.MALFORMED))
    assert not receive(it, "x", update("x", 0))
    assert it.rejections == {"malformed": 1, "not_a_neighbour": 1}
    assert it.ledger.rounds() == set() and it.network_round(["x"]) is None


def test_a_replay_answers_the_senders_next_step_and_an_equivocation_drops_both_updates() -> None:
    seen: list[tuple[int, int, str]] = []
    it = intake(on_update=lambda rnd, step, sender, vector: seen.append((rnd, step, sender)))
    receive(it, "a", update("a", 0))
    receive(it, "a", update("a", 0))  # the same envelope again: it answers step (0, 1) for "a"
    assert it.rejections == {"duplicate": 1}
    assert it.ledger.settled(0, 1, "a") and it.ledger.updates(0, 1) == {}
    receive(it, "b", update("b", 0, value=1.0))
    receive(it, "b", update("b", 0, value=-1.0))
    assert sorted(it.ledger.updates(0, 0)) == ["a"] and it.ledger.equivocated(0, 0) == {"b"}
    assert seen == [(0, 0, "a"), (0, 0, "b")]  # the hook saw each first update, nothing rejected


def test_the_networks_round_is_the_median_of_signed_rounds_so_one_liar_cannot_move_it() -> None:
    it = intake()
    receive(it, "a", update("a", 9))
    assert it.network_round(NEIGHBOURS) == 9  # one neighbour heard from
    assert not it.most_are_past(0, NEIGHBOURS)  # but one of three is not most of them
    receive(it, "b", update("b", 1))
    assert it.network_round(NEIGHBOURS) == 1  # of 1 and 9, the lower: a liar cannot pull us ahead
    assert it.most_are_past(0, NEIGHBOURS) and not it.most_are_past(1, NEIGHBOURS)
    receive(it, "c", update("c", 1))
    assert it.network_round(NEIGHBOURS) == 1  # 1, 1, 9: the liar is outvoted
    assert it.network_round(["b"]) == 1


def test_an_update_beyond_the_window_is_evidence_held_until_we_catch_up_to_its_round() -> None:
    it = intake()
    assert receive(it, "a", update("a", 7, step=0))
    assert receive(it, "a", update("a", 7, step=1))
    assert receive(it, "b", update("b", 40))
    assert it.ledger.rounds() == set()  # nothing filed while it is out of our window
    it.catch_up(7)
    # every step of each neighbour's newest round was held: a peer that catches up to it mixes at once
    assert sorted(it.ledger.updates(7, 0)) == sorted(it.ledger.updates(7, 1)) == ["a"]
    assert it.ledger.rounds() == {7}  # round 40 is still beyond the window: dropped


def test_only_the_newest_rounds_steps_are_held_and_no_more_than_a_round_has() -> None:
    it = intake()
    for rnd, step in ((7, 0), (7, 1), (9, 0), (8, 1), (9, 5), (9, -1)):  # step 5 and -1: not steps of a round
        receive(it, "a", update("a", rnd, step=step, value=rnd))
    it.catch_up(9)
    assert it.ledger.rounds() == {9}
    assert sorted(it.ledger.updates(9, 0)) == ["a"] and it.ledger.updates(9, 1) == {}


def test_an_update_that_races_its_senders_hello_is_counted_and_filed_once_it_is_a_neighbour() -> None:
    it = intake()
    members = set(NEIGHBOURS)
    assert not it.receive("d", update("d", 0, step=0), at=(0, 0), neighbours=members, is_neighbour=members.__contains__)
    assert it.rejections == {"not_a_neighbour": 1} and it.ledger.updates(0, 0) == {}
    assert not it.welcome(members.__contains__, at=(0, 0), neighbours=members)  # still a stranger: nothing
    members.add("d")  # its hello arrives
    assert it.welcome(members.__contains__, at=(0, 0), neighbours=members)
    assert sorted(it.ledger.updates(0, 0)) == ["d"]
    assert not it.welcome(members.__contains__, at=(0, 0), neighbours=members)  # filed once


def test_strangers_updates_are_held_for_a_few_senders_only() -> None:
    it = intake()
    for i in range(10):
        it.receive(f"s{i}", update(f"s{i}", 0), at=(0, 0), neighbours=NEIGHBOURS, is_neighbour=NEIGHBOURS.__contains__)
    everyone = {f"s{i}" for i in range(10)}
    assert it.welcome(everyone.__contains__, at=(0, 0), neighbours=everyone)
    assert sorted(it.ledger.updates(0, 0)) == [f"s{i}" for i in range(6, 10)]  # the four heard from last
