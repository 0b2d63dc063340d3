"""`p2pfed experiment` on the command line: help, listing cells, clear errors, rebuilding a report."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_experiment_grid import Recorder, fake_summary, small

from p2pfed.cli.main import main
from p2pfed.sims.grid_runner import RESULTS, run_grid
from p2pfed.sims.report import load_results

GRID = ["--attacks", "none,ipm", "--defences", "mean,bristle", "--byzantine", "1", "--peers", "6"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["experiment", *args])
    return result.exit_code, result.output


def test_help_explains_the_grid_and_resuming() -> None:
    code, out = invoke("--help")
    assert code == 0
    for words in ("--attacks", "--defences", "--byzantine", "--seeds", "--workers", "--config", "resume"):
        assert words in out


def test_list_shows_every_cell_with_flags_overriding_the_toml(tmp_path: Path) -> None:
    config = tmp_path / "grid.toml"
    config.write_text('[base]\npeers = 8\n[grid]\nseeds = [0, 1]\nattacks = ["none", "alie"]\n')
    code, out = invoke("--config", str(config), *GRID, "--out", str(tmp_path / "out"), "--list")
    assert code == 0, out
    assert out.count(" to do ") == 8 and "ipm/bristle byz=1 seed=1" in out and "alie" not in out
    assert "8 cells, 8 to run" in out


def test_a_chat_task_grid_defaults_to_the_attacks_that_fit_chat_data(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(30))
    (tmp_path / "qa.jsonl").write_text(rows)
    code, out = invoke("--task", str(tmp_path / "qa.jsonl"), "--defences", "mean", "--list", "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "wrong_answers/mean" in out and "backdoor/mean" in out and "label_flip" not in out
    code, out = invoke("--defences", "mean", "--list", "--out", str(tmp_path / "trec"))
    assert "label_flip/mean" in out and "backdoor" not in out  # trec: class labels


def test_an_unknown_defence_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    code, out = invoke("--defences", "mean,krumm", "--list", "--out", str(tmp_path))
    assert code == 2
    assert "unknown defence 'krumm'; choose one of" in out and "Traceback" not in out


def test_an_unknown_toml_key_names_the_file_and_the_valid_keys(tmp_path: Path) -> None:
    config = tmp_path / "grid.toml"
    config.write_text("[base]\npeer = 8\n")
    code, out = invoke("--config", str(config), "--list")
    assert code == 2
    assert f"{config} [base]: unknown key(s) ['peer']" in out and "peers" in out


def test_report_only_rebuilds_the_report_from_results(tmp_path: Path) -> None:
    cfg = small(attacks=("none", "ipm"), defences=("mean", "bristle"))  # 6 peers, 2 rounds, seeds 0 and 1
    run_grid(cfg, tmp_path, runner=Recorder(), progress=False, report=False)
    assert (tmp_path / RESULTS).exists() and not (tmp_path / "report.md").exists()
    code, out = invoke(*GRID, "--rounds", "2", "--seeds", "0,1", "--out", str(tmp_path), "--report-only")
    assert code == 0, out
    assert "8 of 8 cells" in out
    assert "| ipm |" in (tmp_path / "report.md").read_text()


def test_out_alone_finds_the_grid_of_its_directory(tmp_path: Path) -> None:
    cfg = small(attacks=("none", "ipm"), defences=("mean", "bristle"))
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, tmp_path, runner=Recorder(interrupt_after=3), progress=False)
    code, out = invoke("--out", str(tmp_path), "--list")
    assert code == 0, out
    assert "8 cells, 5 to run" in out and out.count("      ok  ") == 3


def test_attack_params_from_flags_reach_the_cells_and_bad_ones_are_clear(tmp_path: Path) -> None:
    def listed(*extra: str) -> str:
        code, out = invoke("--attacks", "alie", "--defences", "mean", "--list", "--out", str(tmp_path), *extra)
        assert code == 0, out
        return out

    default, four, eight = listed(), listed("--attack-param", "alie.z=4"), listed("--attack-param", "alie.z=8")
    assert len({default, four, eight}) == 3  # the parameter is part of every alie cell's identity
    code, out = invoke("--attacks", "alie", "--list", "--out", str(tmp_path), "--attack-param", "z=4")
    assert code == 2 and "expected NAME.KEY=VALUE" in out
    code, out = invoke("--attacks", "alie", "--list", "--out", str(tmp_path), "--attack-param", "alie.zz=4")
    assert code == 2 and "alie" in out and "Traceback" not in out


def test_sigterm_stops_the_grid_like_ctrl_c_keeping_finished_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service manager or `kill` sends SIGTERM: the grid must stop as on Ctrl-C (its workers are
    terminated, not orphaned), say how to resume, and keep the cells already done."""
    import p2pfed.sims.grid_runner as grid_runner

    real_run_grid = grid_runner.run_grid
    ran: list[str] = []

    def run_grid_then_terminated(cfg, out, keep_runs=False, **options):  # type: ignore[no-untyped-def]
        def runner(cell):  # type: ignore[no-untyped-def]
            if ran:
                os.kill(os.getpid(), signal.SIGTERM)
            ran.append(cell.id)
            return fake_summary(cell)

        return real_run_grid(cfg, out, runner=runner, progress=False)

    monkeypatch.setattr(grid_runner, "run_grid", run_grid_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, out = invoke(*GRID, "--rounds", "2", "--workers", "1", "--out", str(tmp_path))
    assert code == 130 and "interrupted" in out and "To resume" in out
    assert [r["status"] for r in load_results(tmp_path / RESULTS)] == ["ok"]
    assert signal.getsignal(signal.SIGTERM) == before
