"""Four `p2pfed join` processes on loopback train sms-spam together; one is killed with SIGKILL mid-round,
the others finish that round within its deadline, and the restarted peer resumes from its checkpoint and
exchanges updates with them again; then SIGTERM stops everyone cleanly, with valid checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from p2pfed.daemon.status import read_metrics
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.sims.processes import export_shards
from p2pfed.sims.simulate import SimConfig

pytestmark = [pytest.mark.slow, pytest.mark.network]

PEERS = 4
ROUNDS = 60  # more than the test lets run: it stops the network (SIGTERM) once the restarted peer is back
Q = 2
STEP_TIMEOUT = 30.0
MAJORITY_BASELINE = 0.87  # share of "ham" in sms-spam
CLI = [sys.executable, "-m", "p2pfed.cli.main"]


def poll(condition, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Bounded polling of files the subprocesses write (there is no other channel to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def status(node: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((node / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    export_shards(SimConfig(peers=PEERS, partition="iid"), root / "data", eval_rows=200, max_rows=300)
    subprocess.run(
        [*CLI, "init", str(root / "run.toml"), "--task", "sms-spam", "--rounds", str(ROUNDS), "-K", "20",
         "-Q", str(Q), "--step-timeout", str(STEP_TIMEOUT)],
        check=True, capture_output=True,
    )
    return root


def start(root: Path, i: int, bootstrap: str | None, min_neighbours: int = PEERS - 1) -> subprocess.Popen[bytes]:
    node = root / f"node-{i}"
    node.mkdir(exist_ok=True)
    command = [*CLI, "join", "--run", str(root / "run.toml"), "--data", str(root / "data" / f"peer-{i:02d}.jsonl"),
               "--eval", str(root / "data" / "eval.jsonl"), "--listen", "/ip4/127.0.0.1/tcp/0",
               "--out", str(node), "--min-neighbours", str(min_neighbours), "--wait", "400", "--threads", "1"]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    with (node / "stderr.txt").open("ab") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def test_four_processes_survive_a_kill_and_resume(run_dir: Path) -> None:
    nodes = [run_dir / f"node-{i}" for i in range(PEERS)]
    procs = [start(run_dir, 0, None)]
    try:
        address = poll(lambda: (status(nodes[0]).get("listen_addrs") or [None])[0], 400, "the bootstrap address")
        procs += [start(run_dir, i, address) for i in range(1, PEERS)]

        victim = PEERS - 1
        poll(lambda: status(nodes[victim]).get("round", 0) >= 2, 600, "two rounds on the victim")
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[victim].wait(timeout=10)
        interrupted = load_checkpoint(nodes[victim]).round  # the round it was in when killed
        assert interrupted >= 2

        procs[victim] = start(run_dir, victim, address, min_neighbours=1)  # rejoin: one neighbour is enough
        survivors = nodes[:victim]
        poll(lambda: all(status(n).get("round", 0) > interrupted for n in survivors),
             Q * STEP_TIMEOUT + 30, "the survivors to finish the interrupted round")
        assert time.monotonic() - killed_at < Q * STEP_TIMEOUT + 30

        def rejoined() -> bool:  # a round after the resume in which neighbours' updates reached it
            after = [r for r in read_metrics(nodes[victim]) if r["round"] >= interrupted]
            return any(r["outcomes"].get("kept", 0) + r["outcomes"].get("dropped", 0) > 0 for r in after)

        poll(rejoined, 600, "the restarted peer to exchange updates with the others again")
        poll(lambda: all(status(n).get("round", 0) >= 3 for n in nodes), 600, "three rounds everywhere")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(procs):
            assert proc.wait(timeout=120) == 0, (nodes[i] / "stderr.txt").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    for node in nodes:
        rows = read_metrics(node)
        final = status(node)
        assert final["state"] == "stopped" and final["round"] >= 3
        assert rows[-1]["accuracy"] > MAJORITY_BASELINE, (node, [r["accuracy"] for r in rows])
        checkpoint = load_checkpoint(node)
        assert checkpoint is not None and checkpoint.round >= rows[-1]["round"] + 1
        assert np.isfinite(checkpoint.vector).all()
        assert (node / "adapter" / "adapter_model.safetensors").is_file()

    resumed = status(nodes[victim])
    assert resumed["resumed_from"] == interrupted
    after = [r for r in read_metrics(nodes[victim]) if r["round"] >= interrupted]
    assert after and sum(r["outcomes"].get("kept", 0) + r["outcomes"].get("dropped", 0) for r in after) > 0
    assert sum(r["bytes_received"] for r in after) > 0  # it rejoined: neighbours' updates reached it
    assert os.stat(nodes[0] / "identity.key").st_mode & 0o777 == 0o600


def test_sigterm_stops_a_waiting_node_cleanly(run_dir: Path) -> None:
    node = run_dir / "lonely"
    proc = subprocess.Popen(
        [*CLI, "join", "--run", str(run_dir / "run.toml"), "--data", str(run_dir / "data" / "peer-00.jsonl"),
         "--listen", "/ip4/127.0.0.1/tcp/0", "--out", str(node), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        poll(lambda: status(node).get("state") == "waiting", 120, "the node to listen")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"SIGTERM: stopping" in err
    assert status(node)["state"] == "stopped"
