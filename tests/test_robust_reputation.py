"""The reputation table: slow to earn, quick to lose, forgets, quarantines with a cooldown, round-trips."""

from __future__ import annotations

import json

import pytest

from p2pfed.robust import reasons
from p2pfed.robust.reputation import DEFAULT_PRIOR, ReputationConfig, ReputationTable
from p2pfed.types import Outcome, Verdict

KEPT = Verdict("x", Outcome.KEPT, weight=0.2)


def verdict(sender: str, outcome: Outcome, reason: str = "") -> Verdict:
    return Verdict(sender, outcome, weight=0.2 if outcome is Outcome.KEPT else 0.0, reason=reason)


def run_rounds(table: ReputationTable, rounds: range, steps: int, verdicts: list[Verdict]) -> None:
    for r in rounds:
        for _ in range(steps):
            table.update(verdicts, r)
        table.end_round(r)


def test_new_identities_start_low_and_grow_only_with_kept_updates() -> None:
    table = ReputationTable()
    assert table.score("new") == DEFAULT_PRIOR and not table.is_quarantined("new")
    run_rounds(table, range(3), 5, [verdict("good", Outcome.KEPT)])
    assert DEFAULT_PRIOR < table.score("good") < 0.7


def test_a_persistent_attacker_falls_into_quarantine() -> None:
    table = ReputationTable()
    for _ in range(6):
        assert not table.is_quarantined("bad")
        table.update([verdict("bad", Outcome.DROPPED, reasons.HARMFUL)], 0)
    assert table.is_quarantined("bad") and "bad" in table.quarantined()


def test_an_honest_peer_recovers_from_one_bad_round() -> None:
    table = ReputationTable()
    honest = verdict("h", Outcome.KEPT)
    run_rounds(table, range(20), 5, [honest])
    trusted = table.score("h")
    table.update([verdict("h", Outcome.DROPPED, reasons.HARMFUL)], 20)
    assert table.score("h") < trusted - 0.1
    assert not table.is_quarantined("h")
    run_rounds(table, range(20, 30), 5, [honest])
    assert table.score("h") == pytest.approx(trusted, abs=0.01)


def test_far_costs_little_worse_a_bit_and_harmful_a_lot() -> None:
    table = ReputationTable()
    ids = ("far", "worse", "harmful")
    run_rounds(table, range(10), 5, [verdict(i, Outcome.KEPT) for i in ids])
    table.update(
        [
            verdict("far", Outcome.DROPPED, reasons.FAR),
            verdict("worse", Outcome.DROPPED, reasons.WORSE),
            verdict("harmful", Outcome.DROPPED, reasons.HARMFUL),
        ],
        10,
    )
    far, worse, harmful = (table.score(i) for i in ids)
    assert far > worse > harmful + 0.1


def test_a_peer_that_is_merely_worse_now_and_then_keeps_a_good_reputation() -> None:
    table = ReputationTable()
    pattern = [Outcome.KEPT, Outcome.DROPPED, Outcome.KEPT, Outcome.KEPT, Outcome.DROPPED]
    for r in range(40):
        for outcome in pattern:
            table.update([verdict("h", outcome, reasons.WORSE)], r)
        table.end_round(r)
    assert table.score("h") > 0.6 and not table.is_quarantined("h")


def test_missing_drifts_toward_the_prior() -> None:
    table = ReputationTable()
    run_rounds(table, range(10), 5, [verdict("m", Outcome.KEPT)])
    high = table.score("m")
    for _ in range(20):
        table.update([verdict("m", Outcome.MISSING)], 10)
    assert DEFAULT_PRIOR < table.score("m") < high


def test_invalid_is_a_big_hit_and_equivocation_quarantines_at_once() -> None:
    table = ReputationTable()
    run_rounds(table, range(10), 5, [verdict("i", Outcome.KEPT), verdict("e", Outcome.KEPT)])
    before = table.score("i")
    table.update([verdict("i", Outcome.INVALID), verdict("e", Outcome.EQUIVOCATED)], 10)
    assert table.score("i") == pytest.approx(0.25 * before)
    assert table.is_quarantined("e") and not table.is_quarantined("i")


def test_quarantine_expires_after_the_cooldown_and_doubles_for_repeat_offenders() -> None:
    table = ReputationTable(ReputationConfig(cooldown=3))
    table.update([verdict("q", Outcome.EQUIVOCATED)], 5)
    for r in (5, 6, 7):
        table.end_round(r)
        assert table.is_quarantined("q"), r  # quarantined for rounds 6, 7, 8
    table.end_round(8)
    assert not table.is_quarantined("q")
    assert table.score("q") == pytest.approx(ReputationConfig().probation, abs=0.01)
    table.update([verdict("q", Outcome.EQUIVOCATED)], 9)
    for r in range(9, 15):
        table.end_round(r)
        assert table.is_quarantined("q"), r  # six rounds this time: 10..15
    table.end_round(15)
    assert not table.is_quarantined("q")


def test_quarantined_verdicts_do_not_change_the_score() -> None:
    table = ReputationTable()
    table.update([verdict("z", Outcome.QUARANTINED)], 0)
    assert table.score("z") == DEFAULT_PRIOR


def test_forgetting_pulls_every_score_toward_the_prior() -> None:
    table = ReputationTable()
    run_rounds(table, range(10), 5, [verdict("f", Outcome.KEPT)])
    high = table.score("f")
    run_rounds(table, range(10, 60), 1, [])
    assert DEFAULT_PRIOR < table.score("f") < high - 0.3


def test_more_rounds_of_kept_updates_earn_more_reputation() -> None:
    table = ReputationTable()
    run_rounds(table, range(3), 5, [verdict("b", Outcome.KEPT)])
    run_rounds(table, range(3, 4), 5, [verdict("a", Outcome.KEPT)])
    assert table.score("b") > table.score("a") > table.score("new") == DEFAULT_PRIOR


def test_state_round_trips_through_json() -> None:
    table = ReputationTable(ReputationConfig(cooldown=5))
    run_rounds(table, range(4), 2, [verdict("a", Outcome.KEPT)])
    table.update([verdict("b", Outcome.EQUIVOCATED)], 4)
    restored = ReputationTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert restored.snapshot() == table.snapshot()
    assert restored.is_quarantined("b") and restored.config.cooldown == 5
    assert ReputationTable.from_dict({}).snapshot() == {}


def test_snapshot_is_a_plain_score_mapping() -> None:
    table = ReputationTable()
    table.update([KEPT, verdict("y", Outcome.MISSING)], 0)
    snap = table.snapshot()
    assert set(snap) == {"x", "y"} and all(isinstance(v, float) for v in snap.values())


def test_a_neighbour_dropped_as_far_every_step_is_low_trust_after_three_rounds_but_never_quarantined() -> None:
    table = ReputationTable()
    far = verdict("flip", Outcome.DROPPED, reasons.FAR)
    for r in range(2):
        run_rounds(table, range(r, r + 1), 4, [far])
        assert table.low_trust() == {}
    run_rounds(table, range(2, 3), 4, [far])
    assert table.low_trust() == {"flip": 3}
    assert not table.is_quarantined("flip")


def test_an_honest_neighbour_kept_once_a_round_is_never_low_trust_however_often_it_is_dropped() -> None:
    table = ReputationTable()
    for r in range(20):  # non-IID: far or worse on our validation in 3 of 4 steps, kept in one
        table.update([verdict("noniid", Outcome.DROPPED, reasons.FAR)], r)
        table.update([verdict("noniid", Outcome.DROPPED, reasons.WORSE)], r)
        table.update([verdict("noniid", Outcome.DROPPED, reasons.FAR)], r)
        table.update([verdict("noniid", Outcome.KEPT)], r)
        table.end_round(r)
        assert table.low_trust() == {}


def test_silence_is_not_low_trust_and_an_absent_identity_is_not_accused_again() -> None:
    table = ReputationTable()
    run_rounds(table, range(10), 4, [verdict("quiet", Outcome.MISSING)])
    assert table.low_trust() == {}
    run_rounds(table, range(10, 13), 4, [verdict("flip", Outcome.DROPPED, reasons.FAR)])
    assert "flip" in table.low_trust()
    table.end_round(13)  # evicted: it sent nothing this round
    assert table.low_trust() == {}
    table.update([verdict("flip", Outcome.DROPPED, reasons.FAR)], 14)  # back after its cooldown, still flipping
    table.end_round(14)
    assert table.low_trust() == {"flip": 4}  # the table remembered it: accused after one round back


def test_low_trust_survives_a_restart() -> None:
    table = ReputationTable()
    run_rounds(table, range(2), 4, [verdict("flip", Outcome.DROPPED, reasons.FAR)])
    restored = ReputationTable.from_dict(json.loads(json.dumps(table.to_dict())))
    run_rounds(restored, range(2, 3), 4, [verdict("flip", Outcome.DROPPED, reasons.FAR)])
    assert restored.low_trust() == {"flip": 3}
