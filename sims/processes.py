"""`p2pfed sim --transport libp2p --processes`: N `p2pfed join` OS processes on 127.0.0.1.

The run directory gets what the memory simulation would use: the same test set (eval.jsonl), the same
shards (peer-NN.jsonl), a run file (run.toml), and one node directory per peer. Peer 0 starts first and is
everyone's bootstrap; the others find each other by peer exchange. Metrics of all peers are gathered into
the run directory's metrics.jsonl and summary.json, like the memory path's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.config import RunManifest, write_atomic
from p2pfed.daemon.runfile import RunFile, create_manifest
from p2pfed.daemon.status import read_metrics
from p2pfed.errors import NetworkError
from p2pfed.learn.data import load_task, split_test, test_size_for
from p2pfed.learn.partition import partition
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.seeds import Seed, partition_rng
from p2pfed.sims.oracle import ORACLE
from p2pfed.sims.simulate import SimConfig, SimResult

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0  # model loading on a busy machine


def export_shards(
    cfg: SimConfig, directory: Path, *, eval_rows: int | None = None, max_rows: int | None = None
) -> tuple[list[Path], Path]:
    """Write the memory simulation's shards and test set as .jsonl files: (peer files, eval file).

    `eval_rows` keeps only that many test rows (stratified order is kept); `max_rows` caps each shard.
    """
    data = load_task(cfg.learn.source)
    pool, test = split_test(data.labels, test_size_for(data, cfg.learn), cfg.seed)
    rng = partition_rng(cfg.seed)
    shards = partition(
        data.labels[pool], cfg.peers, cfg.partition, alpha=cfg.alpha, classes_per_peer=cfg.classes_per_peer, rng=rng
    )
    directory.mkdir(parents=True, exist_ok=True)

    def write(path: Path, rows: np.ndarray) -> Path:
        lines = [json.dumps({"text": data.texts[r], "label": data.label_names[data.labels[r]]}) for r in rows]
        write_atomic(path, ("\n".join(lines) + "\n").encode())
        return path

    if eval_rows is not None:
        test = np.random.default_rng([cfg.seed, Seed.EVAL_SAMPLE]).permutation(test)[:eval_rows]
    files = [write(directory / f"peer-{i:02d}.jsonl", pool[s[:max_rows]]) for i, s in enumerate(shards)]
    return files, write(directory / "eval.jsonl", np.sort(test))


def manifest_for(cfg: SimConfig) -> RunManifest:
    return create_manifest(cfg.learn.run)


def join_command(run_file: Path, data: Path, out: Path, *, eval_file: Path | None, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "p2pfed.cli.main", "join", "--run", str(run_file), "--data", str(data),
               "--out", str(out), "--listen", "/ip4/127.0.0.1/tcp/0"]
    if eval_file is not None:
        command += ["--eval", str(eval_file)]
    return command + extra


def wait_for_address(node_dir: Path, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first /p2p/ listen address in a starting node's status.json (polled until the deadline)."""
    deadline = time.monotonic() + timeout_s
    path = node_dir / "status.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NetworkError(f"the node in {node_dir} exited with {process.returncode} before listening")
        try:
            addrs = json.loads(path.read_text()).get("listen_addrs", [])
        except (OSError, ValueError):
            addrs = []
        if addrs:
            return str(addrs[0])
        time.sleep(0.2)
    raise NetworkError(f"the node in {node_dir} did not listen within {timeout_s:.0f} s")


def run_processes(cfg: SimConfig, out: Path, *, eval_rows: int | None = None, threads: int = 1,
                  timeout_s: float = 3600.0) -> SimResult:
    """Run the simulation as cfg.peers `p2pfed join` processes (honest peers only; blocking)."""
    if cfg.byzantine:
        raise NetworkError("--processes runs honest peers only; use the in-process libp2p path for attacks")
    if cfg.defence == ORACLE:
        raise NetworkError("the oracle defence is a reference for in-process simulations; pick a real defence")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shards, eval_file = export_shards(cfg, out / "data", eval_rows=eval_rows)
    run_file = out / "run.toml"
    RunFile(manifest_for(cfg), cfg.gossip).save(run_file)
    extra = ["--defence", cfg.defence, "--min-neighbours", str(min(cfg.peers - 1, cfg.degree)),
             "--max-neighbours", str(max(cfg.peers - 1, 1)), "--threads", str(threads)]
    for key, value in cfg.defence_params.items():
        extra += ["--defence-param", f"{key}={json.dumps(value)}"]
    nodes = [out / f"peer-{i:02d}" for i in range(cfg.peers)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    address = ""
    try:
        for i, (shard, node) in enumerate(zip(shards, nodes, strict=True)):
            node.mkdir(parents=True, exist_ok=True)
            bootstrap = ["--index", str(i)] + ([] if i == 0 else ["--bootstrap", address])
            command = join_command(run_file, shard, node, eval_file=eval_file, extra=extra + bootstrap)
            with (node / "stderr.txt").open("wb") as err:
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env))
            if i == 0:
                address = wait_for_address(node, processes[0], STARTUP_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        for node, process in zip(nodes, processes, strict=True):
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise NetworkError(f"the node in {node} exited with {code}; see {node / 'stderr.txt'}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    return gather(cfg, out, nodes, wall=time.perf_counter() - started)


def gather(cfg: SimConfig, out: Path, nodes: list[Path], *, wall: float) -> SimResult:
    """Merge the nodes' metrics into the run directory (metrics.jsonl, summary.json)."""
    rows: list[dict[str, Any]] = []
    for i, node in enumerate(nodes):
        rows += [{**row, "peer": i, "byzantine": False} for row in read_metrics(node)]
    rows.sort(key=lambda r: (r["round"], r["peer"]))
    curve = []
    for rnd in sorted({r["round"] for r in rows}):
        accuracies = [r["accuracy"] for r in rows if r["round"] == rnd and r["accuracy"] is not None]
        if accuracies:
            curve.append({
                "round": rnd,
                "honest_accuracy_mean": float(np.mean(accuracies)),
                "honest_accuracy_std": float(np.std(accuracies)),
                "honest_accuracy_min": float(np.min(accuracies)),
                "honest_accuracy_max": float(np.max(accuracies)),
                "peers_reporting": len(accuracies),
            })
    finals = [c for c in (load_checkpoint(n) for n in nodes) if c is not None]
    consensus = None
    if finals:
        stacked = np.stack([c.vector for c in finals])
        consensus = float(np.mean(np.sum((stacked - stacked.mean(axis=0)) ** 2, axis=1)))
    final = curve[-1] if curve else {}
    summary = {
        "final": {
            "round": final.get("round"),
            "honest_accuracy_mean": final.get("honest_accuracy_mean"),
            "honest_accuracy_std": final.get("honest_accuracy_std"),
            "honest_accuracy_min": final.get("honest_accuracy_min"),
            "consensus_distance": consensus,
        },
        "curve": [{**c, "consensus_distance": consensus if c is curve[-1] else float("nan")} for c in curve],
        "byzantine_peers": [],
        "byzantine_peer_ids": [],
        "attack": cfg.attack,
        "defence": cfg.defence,
        "peers": cfg.peers,
        "transport": "libp2p-processes",
        "wall_seconds": round(wall, 2),
    }
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    return SimResult(summary=summary, rows=rows, out=out)
