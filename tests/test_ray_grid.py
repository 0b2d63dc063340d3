"""`p2pfed experiment --ray`: cells as Ray tasks on a local cluster (127.0.0.1), with the same resumable
results.jsonl; and the error that names the extra when Ray is missing."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.sims.experiment import Cell, ExperimentConfig, Grid, base_from_mapping
from p2pfed.sims.grid_runner import RESULTS, ResultsLog, run_grid
from p2pfed.sims.report import load_results


def small() -> ExperimentConfig:
    grid = Grid(attacks=("none", "ipm"), defences=("mean", "median"), byzantine=(1,), seeds=(0, 1), workers=1)
    return ExperimentConfig(base=base_from_mapping({"peers": 6, "rounds": 2}, source="test"), grid=grid)


def summary_runner() -> Callable[[Cell], dict[str, Any]]:
    """A fake cell runner that Ray ships to its workers by value (a closure, not an importable function):
    a summary derived from the cell, so a row shows which cell produced it."""

    def runner(cell: Cell) -> dict[str, Any]:
        accuracy = 0.9 - 0.1 * cell.byzantine + 0.01 * cell.seed
        return {"final": {"round": 1, "honest_accuracy_mean": accuracy}, "curve": [], "byzantine_peers": []}

    return runner


def test_without_ray_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    args = ["experiment", "--attacks", "none", "--defences", "mean", "--peers", "8", "--ray", "auto",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "pip install 'p2pfed[ray]'" in result.output
    assert not (tmp_path / RESULTS).exists()  # nothing ran


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_an_interrupted_ray_grid_resumes_and_records_every_cell_once(
    tmp_path: Path, local_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small()
    cells = cfg.cells()
    append = ResultsLog.append
    recorded: list[str] = []

    def append_then_interrupt(self: ResultsLog, row: dict[str, Any]) -> None:
        append(self, row)
        recorded.append(row["id"])
        if len(recorded) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the other cells are still on the cluster

    with monkeypatch.context() as patch:
        patch.setattr(ResultsLog, "append", append_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_grid(cfg, tmp_path, runner=summary_runner(), progress=False, report=False, ray_address="auto")
    assert [r["id"] for r in load_results(tmp_path / RESULTS)] == recorded

    resumed = run_grid(cfg, tmp_path, runner=summary_runner(), progress=False, report=False, ray_address="auto")
    rows = load_results(tmp_path / RESULTS)
    assert resumed.skipped == 3 and resumed.ran == len(cells) - 3 and resumed.failed == 0
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in cells)  # each cell exactly once
    by_id = {r["id"]: r for r in rows}
    for cell in cells:
        assert by_id[cell.id]["status"] == "ok"
        expected = 0.9 - 0.1 * cell.byzantine + 0.01 * cell.seed
        assert by_id[cell.id]["final"]["honest_accuracy_mean"] == pytest.approx(expected)


@pytest.mark.slow
def test_a_cell_that_fails_on_ray_is_an_error_row_and_the_grid_goes_on(tmp_path: Path, local_cluster: None) -> None:
    def runner(cell: Cell) -> dict[str, Any]:
        if cell.attack == "ipm":
            raise RuntimeError("ipm exploded")
        return {"final": {"honest_accuracy_mean": 0.5}, "curve": [], "byzantine_peers": []}

    result = run_grid(small(), tmp_path, runner=runner, progress=False, report=False, ray_address="auto")
    rows = load_results(tmp_path / RESULTS)
    failed = [r for r in rows if r["status"] == "error"]
    assert result.failed == len(failed) == sum(1 for c in small().cells() if c.attack == "ipm")
    assert all("ipm exploded" in r["error"] for r in failed)
