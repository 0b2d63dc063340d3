"""The fuzz command's core, with a small case count: every decoder survives, no mutation gets through."""

from __future__ import annotations

import pytest

from benchmarks.fuzz_wire import fuzz_live, fuzz_offline


def test_offline_fuzzing_finds_no_crash_and_accepts_no_mutation() -> None:
    report = fuzz_offline(400, seed=3)
    assert report.crashes == []
    assert report.accepted_mutations == 0
    assert report.kinds["mutated"] > 100
    assert 0 < report.valid == report.valid_accepted  # the control: intact envelopes still get in


@pytest.mark.network
def test_a_live_host_fed_fuzzed_streams_keeps_working() -> None:
    report = fuzz_live(40, seed=3)
    assert report.crashes == []
    assert report.accepted_mutations == 0
    assert 0 < report.valid == report.valid_accepted  # the last one sent after all the abuse
