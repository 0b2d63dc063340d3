"""A real (tiny) experiment grid end to end: MiniLM on SMS spam, 4 peers, 2 attacks × 2 defences."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfed.sims.experiment import ExperimentConfig, Grid, base_from_mapping
from p2pfed.sims.grid_runner import RESULTS, run_grid
from p2pfed.sims.report import load_results


@pytest.mark.slow
def test_a_tiny_real_grid_writes_a_report_of_honest_accuracy(tmp_path: Path) -> None:
    base = base_from_mapping(
        {"peers": 4, "degree": 2, "rounds": 1, "local_steps": 2, "gossip_steps": 1, "task": "sms-spam",
         "model": "minilm", "test_size": 100},
        source="test",
    )
    cfg = ExperimentConfig(
        base=base,
        grid=Grid(attacks=("none", "sign_flip"), defences=("mean", "median"), byzantine=(1,), workers=1),
    )
    result = run_grid(cfg, tmp_path, progress=False)
    rows = load_results(tmp_path / RESULTS)
    assert result.failed == 0, [r["error"] for r in rows]
    assert len(rows) == 4
    for row in rows:
        assert 0.0 <= row["final"]["honest_accuracy_mean"] <= 1.0
        assert len(row["byzantine_peers"]) == (0 if row["attack"] == "none" else 1)
    report = (tmp_path / "report.md").read_text()
    assert "| no attack |" in report and "| sign_flip |" in report and "**" in report
    assert (tmp_path / "heatmap.png").stat().st_size > 0
    assert (tmp_path / "curves" / "sign_flip.png").stat().st_size > 0
    assert run_grid(cfg, tmp_path, progress=False).ran == 0
