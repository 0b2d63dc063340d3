"""Experiment grids: expansion into cells, TOML loading, and resuming after an interruption."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from p2pfed.attacks.registry import ATTACKS, SYBIL
from p2pfed.errors import ConfigError
from p2pfed.robust.registry import DEFENCES
from p2pfed.sims.experiment import (
    Cell,
    ExperimentConfig,
    Grid,
    base_from_mapping,
    experiment_from_mapping,
    load_experiment,
    to_toml,
)
from p2pfed.sims.grid_runner import RESULTS, available_cores, run_grid
from p2pfed.sims.report import load_results


def small(**grid: Any) -> ExperimentConfig:
    axes = {
        "attacks": ("none", "ipm", "alie"), "defences": ("mean", "median"), "byzantine": (1,), "seeds": (0, 1),
        "workers": 1,  # in this process, so the fake runner sees every call
    }
    return ExperimentConfig(base=base_from_mapping({"peers": 6, "rounds": 2}, source="test"), grid=Grid(**{**axes, **grid}))


def fake_summary(cell: Cell) -> dict[str, Any]:
    acc = 0.9 - 0.1 * cell.byzantine - (0.05 if cell.defence == "mean" else 0.0) + 0.01 * cell.seed
    return {"final": {"round": 1, "honest_accuracy_mean": acc, "honest_accuracy_std": 0.01},
            "curve": [{"round": 0, "honest_accuracy_mean": acc / 2}, {"round": 1, "honest_accuracy_mean": acc}],
            "byzantine_peers": list(range(cell.byzantine))}


def pool_runner(cell: Cell) -> dict[str, Any]:
    """For worker processes: the fake summary plus the pid that ran it; 'alie' kills its worker."""
    if cell.attack == "alie":
        os._exit(3)
    return {**fake_summary(cell), "pid": os.getpid()}


def thread_env_runner(cell: Cell) -> dict[str, Any]:
    """For worker processes: the fake summary, with the OpenBLAS thread count the worker was started with."""
    summary = fake_summary(cell)
    return {**summary, "final": {**summary["final"], "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}}


class Recorder:
    """A fake cell runner: records the cells it runs; can raise on chosen cells."""

    def __init__(self, *, interrupt_after: int | None = None, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.ran: list[str] = []
        self.interrupt_after = interrupt_after
        self.fail = fail

    def __call__(self, cell: Cell) -> dict[str, Any]:
        if self.interrupt_after is not None and len(self.ran) == self.interrupt_after:
            raise KeyboardInterrupt
        self.ran.append(cell.id)
        if cell.attack in self.fail:
            raise RuntimeError(f"{cell.attack} exploded")
        return fake_summary(cell)


def test_default_grid_is_the_issue_grid_from_the_registries() -> None:
    cfg = ExperimentConfig()
    chat_only = {"wrong_answers", "backdoor"}  # they rewrite instruction rows; trec has class labels
    attacks = [a for a in ATTACKS if a != "honest" and a not in chat_only] + [SYBIL]
    assert cfg.base.peers == 16 and cfg.base.learn.run.task == "trec" and cfg.base.partition == "dirichlet"
    assert cfg.grid.attacks == ("none", *attacks)
    assert cfg.base.topology == "complete"
    assert cfg.grid.defences == (*DEFENCES, "oracle")  # the oracle: the reference column
    cells = cfg.cells()
    assert len(cells) == (1 + len(attacks)) * (len(DEFENCES) + 1)
    assert {c.byzantine for c in cells if c.attack != "none"} == {5}


def test_an_instruction_grid_runs_the_attacks_that_fit_chat_data() -> None:
    from p2pfed.sims.experiment import attack_names

    chat = attack_names("instruction")
    assert {"wrong_answers", "backdoor", "sign_flip", "dissensus", SYBIL} <= set(chat)
    assert "label_flip" not in chat  # chat rows have no class label to flip
    assert set(attack_names()) ^ set(chat) == {"label_flip", "wrong_answers", "backdoor"}


def test_cells_cover_the_grid_with_an_attack_free_baseline_per_defence_and_seed() -> None:
    cells = small(byzantine=(1, 2)).cells()
    # none: 2 defences × 2 seeds; ipm, alie: 2 counts × 2 defences × 2 seeds
    assert len(cells) == 4 + 2 * 2 * 2 * 2
    for cell in cells:
        assert cell.config.attack == cell.attack and cell.config.defence == cell.defence
        assert cell.config.byzantine == cell.byzantine and cell.config.seed == cell.seed
    assert all(c.byzantine == 0 for c in cells if c.attack == "none")
    assert all(c.byzantine > 0 for c in cells if c.attack != "none")
    assert len({c.id for c in cells}) == len(cells)


def test_cell_ids_are_stable_and_depend_on_the_whole_config() -> None:
    assert [c.id for c in small().cells()] == [c.id for c in small().cells()]
    reordered = ExperimentConfig(base=base_from_mapping({"rounds": 2, "peers": 6}, source="t"), grid=small().grid)
    assert [c.id for c in reordered.cells()] == [c.id for c in small().cells()]
    other = ExperimentConfig(base=base_from_mapping({"peers": 6, "rounds": 3}, source="t"), grid=small().grid)
    assert not {c.id for c in small().cells()} & {c.id for c in other.cells()}
    assert [c.id for c in small(workers=2).cells()] == [c.id for c in small().cells()]


def test_fractions_count_peers_and_zero_byzantine_collapses_to_the_baseline() -> None:
    cells = small(byzantine=(0.5, 0), seeds=(0,)).cells()
    assert {c.byzantine for c in cells if c.attack != "none"} == {3}
    assert sum(c.attack == "none" for c in cells) == 2


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"attacks": ["ipm", "nope"]}, "unknown attack 'nope'"),
        ({"defences": ["mean", "nope"]}, "unknown defence 'nope'"),
        ({"byzantine": [6]}, "below the peer count"),
        ({"byzantine": [-1]}, "counts (5) or fractions"),
        ({"seeds": []}, "seeds list is empty"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"attack_params": {"gaussian": {"sigma": 1}}}, "does not run"),
    ],
)
def test_bad_grids_say_what_is_wrong(grid: dict[str, Any], message: str) -> None:
    data = {"base": {"peers": 6}, "grid": {"attacks": ["none", "ipm"], "defences": ["mean"], **grid}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        experiment_from_mapping(data, source="grid.toml").cells()


def test_base_rejects_unknown_keys_and_keys_the_grid_owns() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['peer'\]; valid keys: .*peers"):
        base_from_mapping({"peer": 4}, source="grid.toml [base]")
    with pytest.raises(ConfigError, match=r"attack -> \[grid\] attacks"):
        base_from_mapping({"attack": "ipm"}, source="grid.toml [base]")


def test_toml_routes_flat_base_keys_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        '[base]\npeers = 8\nrounds = 3\nlocal_steps = 2\ntask = "sms-spam"\nalpha = 0.3\n'
        '[grid]\nattacks = ["none", "alie"]\ndefences = ["mean", "trimmed-mean"]\nbyzantine = [2]\nseeds = [0, 1]\n'
        "[grid.attack_params.alie]\n"
    )
    cfg = load_experiment(path)
    assert (cfg.base.peers, cfg.base.gossip.rounds, cfg.base.gossip.local_steps) == (8, 3, 2)
    assert (cfg.base.learn.run.task, cfg.base.alpha) == ("sms-spam", 0.3)
    assert cfg.grid.defences == ("mean", "trimmed_mean")
    (tmp_path / "again.toml").write_text(to_toml(cfg))
    assert load_experiment(tmp_path / "again.toml") == cfg


def test_interrupted_grid_resumes_with_only_the_missing_cells(tmp_path: Path) -> None:
    cfg = small()
    cells = cfg.cells()
    first = Recorder(interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, tmp_path, runner=first, progress=False)
    assert len(load_results(tmp_path / RESULTS)) == 5
    with (tmp_path / RESULTS).open("a") as fh:
        fh.write('{"id": "torn by a kill')  # a write cut short by SIGKILL
    second = Recorder()
    result = run_grid(cfg, tmp_path, runner=second, progress=False)
    assert sorted(second.ran) == sorted(c.id for c in cells[5:])
    assert (result.ran, result.skipped, result.failed) == (len(cells) - 5, 5, 0)
    assert {r["id"] for r in load_results(tmp_path / RESULTS)} == {c.id for c in cells}
    assert (tmp_path / "report.md").exists() and (tmp_path / "heatmap.png").exists()
    third = Recorder()
    assert run_grid(cfg, tmp_path, runner=third, progress=False).ran == 0 and third.ran == []


def test_a_failing_cell_is_recorded_and_retried_while_the_grid_goes_on(tmp_path: Path) -> None:
    cfg = small(seeds=(0,))
    runner = Recorder(fail={"alie"})
    result = run_grid(cfg, tmp_path, runner=runner, progress=False)
    assert len(runner.ran) == len(cfg.cells()) and result.failed == 2
    errors = [r for r in load_results(tmp_path / RESULTS) if r["status"] == "error"]
    assert {r["attack"] for r in errors} == {"alie"} and "alie exploded" in errors[0]["error"]
    assert "RuntimeError: alie exploded" in (tmp_path / "report.md").read_text()
    retry = Recorder()
    assert run_grid(cfg, tmp_path, runner=retry, progress=False).failed == 0
    assert sorted(retry.ran) == sorted(r["id"] for r in errors)


def test_results_lines_are_complete_json_with_the_cell_config(tmp_path: Path) -> None:
    cfg = small(seeds=(0,))
    run_grid(cfg, tmp_path, runner=Recorder(), progress=False, report=False)
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == len(cfg.cells())
    row = json.loads(lines[-1])
    assert row["config"]["peers"] == 6 and row["status"] == "ok" and row["curve"]
    assert not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_worker_processes_run_the_cells_and_a_dead_worker_costs_only_its_cells(tmp_path: Path) -> None:
    cfg = small(workers=2, attacks=("none", "ipm", "alie"), defences=("mean",), seeds=(0,))
    result = run_grid(cfg, tmp_path, runner=pool_runner, progress=False, report=False)
    rows = load_results(tmp_path / RESULTS)
    assert len(rows) == len(cfg.cells()) == 3
    errors = [r for r in rows if r["status"] == "error"]
    assert {r["attack"] for r in rows if r["attack"] == "alie" and r["status"] == "error"} == {"alie"}
    # a cell that shared the broken pool with a dying one may be lost with it, never silently
    assert all("worker process died" in r["error"] for r in errors) and result.failed == len(errors) >= 1
    again = run_grid(cfg, tmp_path, runner=fake_summary, progress=False, report=False)
    assert again.ran == len(errors) and again.failed == 0


@pytest.mark.slow
def test_worker_processes_start_numpy_blas_at_their_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers each starting a BLAS thread per core thrash on a 2-core machine (the adaptive attack's
    cells ran 3.7× slower); each worker gets cores // workers threads, and our own environment is kept."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    cfg = small(workers=2, attacks=("none",), defences=("mean", "median"), seeds=(0,))
    run_grid(cfg, tmp_path, runner=thread_env_runner, progress=False, report=False)
    rows = load_results(tmp_path / RESULTS)
    assert [r["final"]["blas_threads"] for r in rows] == [str(max(1, available_cores() // 2))] * 2
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_every_unknown_name_of_a_grid_is_reported_at_once() -> None:
    data = {"base": {"peers": 6}, "grid": {"attacks": ["none", "nope", "ipm"], "defences": ["mean", "krumm"]}}
    with pytest.raises(ConfigError) as error:
        experiment_from_mapping(data, source="grid.toml")
    assert "unknown attack 'nope'" in str(error.value) and "unknown defence 'krumm'" in str(error.value)
