"""`p2pfed sim` end to end on the real MiniLM and the real SMS-spam data (small and seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.config import GossipConfig, RunManifest
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.sims.simulate import SimConfig, SimResult, run_simulation

MAJORITY = 0.874  # SMS spam: share of "ham" in the test set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> TaskModel:
    return TaskModel.load(LearnConfig(run=RunManifest(seed=3)))


def small(**changes: object) -> SimConfig:
    base = SimConfig(
        peers=4,
        degree=2,
        learn=LearnConfig(run=RunManifest(seed=3)),
        gossip=GossipConfig(rounds=4, local_steps=10, gossip_steps=2),
    )
    return SimConfig(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run_dir(model: TaskModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimResult]:
    out = tmp_path_factory.mktemp("sim")
    return out, run_simulation(small(), out=out, model=model)


def test_a_small_non_iid_network_beats_the_majority_baseline(run_dir: tuple[Path, SimResult]) -> None:
    _, result = run_dir
    final = result.summary["final"]
    assert final["honest_accuracy_mean"] > MAJORITY + 0.04
    assert len(result.summary["curve"]) == 4


def test_the_summary_reports_the_worst_honest_peer_and_the_majority_baseline(
    run_dir: tuple[Path, SimResult],
) -> None:
    _, result = run_dir
    final = result.summary["final"]
    assert final["majority_baseline"] == pytest.approx(MAJORITY, abs=0.005)
    assert final["honest_accuracy_min"] == result.summary["curve"][-1]["honest_accuracy_min"]
    assert final["majority_baseline"] < final["honest_accuracy_min"] <= final["honest_accuracy_mean"]


def test_run_directory_has_every_output(run_dir: tuple[Path, SimResult]) -> None:
    out, _ = run_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4
    for key in ("round", "peer", "accuracy", "loss", "consensus_distance", "bytes_sent", "bytes_received", "seconds"):
        assert all(key in row for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert {"honest_accuracy_mean", "honest_accuracy_std"} <= set(summary["final"])
    assert summary["wall_seconds"] > 0
    assert json.loads((out / "config.json").read_text())["peers"] == 4
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [f"peer-{i:02d}" for i in range(4)]


def test_saved_adapter_is_a_peft_directory_that_reproduces_the_peer(
    run_dir: tuple[Path, SimResult], model: TaskModel
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from p2pfed.learn.models import resolve_model

    out, result = run_dir
    directory = resolve_model("minilm").directory
    base = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, out / "adapters" / "peer-00").eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = np.arange(0, 400, 4)
    batch = tokenizer(model.pool_texts(rows), padding=True, truncation=True, max_length=64, return_tensors="pt")
    loaded = peft_model(**batch).logits.argmax(-1).numpy()
    expected = model.logits(result.vectors[0], rows).argmax(-1)
    assert (loaded == expected).mean() >= 0.99


def test_same_seed_same_numbers(model: TaskModel, run_dir: tuple[Path, SimResult]) -> None:
    _, first = run_dir
    again = run_simulation(small(), model=model)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in first.rows]
    assert [r["consensus_distance"] for r in again.rows] == [r["consensus_distance"] for r in first.rows]


def test_byzantine_peers_are_excluded_and_listed(model: TaskModel) -> None:
    result = run_simulation(small(peers=6, byzantine=1, attack="sign_flip", defence="mean"), model=model)
    byzantine = result.summary["byzantine_peers"]
    assert len(byzantine) == 1
    assert all(row["accuracy"] is None for row in result.rows if row["peer"] in byzantine)
    honest = [r["accuracy"] for r in result.rows if r["round"] == 3 and r["peer"] not in byzantine]
    assert result.summary["final"]["honest_accuracy_mean"] == pytest.approx(np.mean(honest))


def test_rows_record_each_peers_share_of_byzantine_neighbours(model: TaskModel) -> None:
    cfg = small(peers=6, byzantine=1, attack="sign_flip", defence="mean", placement="eclipse",
                gossip=GossipConfig(rounds=2, local_steps=4, gossip_steps=1))
    result = run_simulation(cfg, model=model)
    victims = result.summary["eclipse_victims"]
    assert victims and result.summary["placement"] == "eclipse"
    shares = {(r["round"], r["peer"]): r["byzantine_neighbour_share"] for r in result.rows}
    assert len(shares) == 2 * 6
    assert all(shares[rnd, v] == 0.5 for rnd in (0, 1) for v in victims)  # degree 2: one of two Byzantine
    final = result.summary["final"]
    assert final["byzantine_share_max"] == 0.5 and final["byzantine_share_max_peer"] in victims


def test_cli_reports_bad_options_without_a_traceback() -> None:
    result = CliRunner().invoke(main, ["sim", "--peers", "4", "--degree", "4", "--rounds", "1"])
    assert result.exit_code == 2
    assert "no 4-regular graph on 4 peers" in result.output
    assert "Traceback" not in result.output


def test_processes_refuse_a_topology_they_would_not_follow(tmp_path: Path) -> None:
    """`--processes` peers link as `p2pfed join` does; a topology asked for explicitly is refused, not
    silently ignored, before anything starts."""
    out = tmp_path / "run"
    args = ["sim", "--transport", "libp2p", "--processes", "--topology", "ring", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--topology complete" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_help_explains_the_options() -> None:
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    for option in ("--peers", "--gossip-steps", "--rho", "--attack", "--defence", "--out"):
        assert option in result.output


def test_cli_optimizer_option_reaches_the_run(tmp_path: Path) -> None:
    """`--optimizer sgd` reaches the run's LearnConfig: the run finishes and its config.json records sgd."""
    out = tmp_path / "run"
    args = ["sim", "--peers", "3", "--rounds", "1", "-K", "2", "-Q", "1", "--optimizer", "sgd", "--lr", "0.5",
            "--no-adapters", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["learn"]["optimizer"] == "sgd"
