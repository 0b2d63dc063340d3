"""`p2pfed sim --transport libp2p`: the same simulation over real hosts on 127.0.0.1 — in one process, or
one `p2pfed join` process per peer — ends where the memory transport ends for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfed.config import GossipConfig, RunManifest
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.sims.simulate import SimConfig, run_simulation

pytestmark = [pytest.mark.slow, pytest.mark.network]

NOISE = 0.02  # accuracy on 500 test rows; same seeds, so the paths differ only by float summation order
ROUNDS = 3  # for the Byzantine run: round 0 ends at the majority baseline, so two rounds left one to clear it


@pytest.fixture(scope="module")
def model() -> TaskModel:
    return TaskModel.load(LearnConfig(run=RunManifest(task="sms-spam")))


def curve(summary: dict) -> list[float]:  # type: ignore[type-arg]
    return [row["honest_accuracy_mean"] for row in summary["curve"]]


def test_in_process_hosts_give_the_memory_transports_result(model: TaskModel) -> None:
    cfg = SimConfig(peers=4, topology="ring", partition="iid", save_adapters=False,
                    gossip=GossipConfig(rounds=2, local_steps=5, gossip_steps=2))
    memory = run_simulation(cfg, model=model, transport="memory")
    libp2p = run_simulation(cfg, model=model, transport="libp2p")
    assert len(curve(libp2p.summary)) == 2
    assert curve(libp2p.summary) == pytest.approx(curve(memory.summary), abs=NOISE)
    assert all(row["bytes_received"] > 0 for row in libp2p.rows)
    assert all(row["rejections"] == {} for row in libp2p.rows)


def test_one_process_per_peer_gives_the_memory_transports_result(model: TaskModel, tmp_path: Path) -> None:
    args = ["--peers", "3", "--topology", "complete", "--partition", "iid", "--rounds", "3", "-K", "8", "-Q", "2"]
    out = tmp_path / "procs"
    subprocess.run([sys.executable, "-m", "p2pfed.cli.main", "sim", "--transport", "libp2p", "--processes",
                    *args, "--out", str(out)], check=True, capture_output=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["peer"], r["round"]) for r in rows) == [(p, r) for p in range(3) for r in range(3)]

    cfg = SimConfig(peers=3, topology="complete", partition="iid", save_adapters=False,
                    gossip=GossipConfig(rounds=3, local_steps=8, gossip_steps=2))
    memory = run_simulation(cfg, model=model)
    assert curve(summary) == pytest.approx(curve(memory.summary), abs=NOISE)
    assert summary["final"]["honest_accuracy_mean"] > 0.87


def test_byzantine_join_processes_are_scored_apart_and_their_neighbours_are_named(tmp_path: Path) -> None:
    out = tmp_path / "byz"
    done = subprocess.run([sys.executable, "-m", "p2pfed.cli.main", "sim", "--transport", "libp2p", "--processes",
                           "--peers", "4", "--byzantine", "1", "--attack", "sign_flip", "--rounds", str(ROUNDS), "-K", "5",
                           "-Q", "2", "--no-adapters", "--out", str(out)],
                          check=True, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (bad,) = summary["byzantine_peers"]
    assert all(r["byzantine"] == (r["peer"] == bad) for r in rows)
    assert all(r["accuracy"] is None for r in rows if r["byzantine"])  # scored apart: not an honest peer
    honest_last = [r for r in rows if not r["byzantine"] and r["round"] == ROUNDS - 1]
    assert len(honest_last) == 3
    (bad_id,) = summary["byzantine_peer_ids"]
    for row in honest_last:  # the share is read from the neighbours the node names
        assert row["neighbour_ids"], row
        share = sum(n == bad_id for n in row["neighbour_ids"]) / len(row["neighbour_ids"])
        assert row["byzantine_neighbour_share"] == pytest.approx(share, abs=1e-4)
    # round 0 ends at the majority baseline (five steps predict the majority class); later rounds climb above it
    trace = [(r["peer"], r["round"], r["accuracy"], len(r["neighbour_ids"])) for r in rows]
    assert summary["final"]["honest_accuracy_min"] > summary["final"]["majority_baseline"], (trace, done.stdout)
    assert "honest peers that finished with a Byzantine neighbour" in done.stdout
    assert "Byzantine peers (excluded above): [" in done.stdout
