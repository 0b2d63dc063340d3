"""`p2pfed sim --transport libp2p --processes`: N `p2pfed join` OS processes on 127.0.0.1.

The run directory gets what the memory simulation would use: the same test set (eval.jsonl), the same
shards (peer-NN.jsonl), a run file (run.toml), and one node directory per peer. Peer 0 starts first and is
everyone's bootstrap; the others find each other by peer exchange. Metrics of all peers are gathered into
the run directory's metrics.jsonl and summary.json, like the memory path's.

With `churn` > 0 the supervisor plays a hostile environment (a churn soak): each time a peer finishes a
round, with probability `churn` it is SIGKILLed a random moment into its next round and restarted at once
from its node directory (same identity, checkpoint and port), bootstrapping from up to three live peers. Every
killed peer's checkpoint is loaded right after the kill; summary.json's "churn" table counts the kills,
the checks and any corrupt checkpoint, and gives the slowest round of any peer (a stall would show there).
The last CALM_ROUNDS rounds are churn-free, so a peer restarted near the end still has neighbours to
finish with.

With `cfg.byzantine` > 0 the peers `placement_of(cfg)` names (random placement) run `join --attack`: a
model-level attack that needs no colluders (`p2pfed.daemon.node.node_attack` says which). Honest peers find
them as they find anyone, so whether they keep them is up to their defence, reputation and membership:
each metrics row names the neighbours the peer ended its round with, and summary.json gives every honest
peer's share of Byzantine neighbours per round and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.config import RunManifest, write_atomic
from p2pfed.daemon.node import node_attack
from p2pfed.daemon.runfile import RunFile, create_manifest
from p2pfed.daemon.status import STATUS_FILE, read_metrics, read_status
from p2pfed.errors import CheckpointError, NetworkError
from p2pfed.learn.data import load_task, split_test, test_size_for
from p2pfed.learn.partition import partition
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.seeds import Seed, partition_rng
from p2pfed.sims.oracle import ORACLE
from p2pfed.sims.simulate import SimConfig, SimResult, placement_of

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0  # model loading on a busy machine
ANY_PORT = "/ip4/127.0.0.1/tcp/0"
RESTART_BOOTSTRAPS = 3  # live peers a restarted peer is given: one of them may be restarting itself
CALM_ROUNDS = 2  # churn spares the last rounds: a peer restarted then still finds neighbours to finish with
POLL_S = 0.2


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
               "--out", str(out), "--listen", ANY_PORT]
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


def run_processes(cfg: SimConfig, out: Path, *, eval_rows: int | None = None, max_rows: int | None = None,
                  threads: int = 1, timeout_s: float = 3600.0, churn: float = 0.0) -> SimResult:
    """Run the simulation as cfg.peers `p2pfed join` processes, the Byzantine ones with `join --attack`
    (blocking). `churn`: the probability, per peer and round, of a SIGKILL and restart (see the module docstring);
    `eval_rows`, `max_rows`: smaller test set and shards (each process embeds its rows once)."""
    byzantine = set(placement_of(cfg).byzantine)
    if byzantine:
        node_attack(cfg.attack, cfg.attack_params)  # refused here, before any process starts
    if cfg.defence == ORACLE:
        raise NetworkError("the oracle defence is a reference for in-process simulations; pick a real defence")
    if not 0.0 <= churn <= 1.0:
        raise NetworkError(f"--churn is a probability per peer and round, between 0 and 1, not {churn}")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    shards, eval_file = export_shards(cfg, out / "data", eval_rows=eval_rows, max_rows=max_rows)
    run_file = out / "run.toml"
    RunFile(manifest_for(cfg), cfg.gossip).save(run_file)
    extra = ["--defence", cfg.defence, "--max-neighbours", str(max(cfg.peers - 1, 1)), "--threads", str(threads)]
    for key, value in cfg.defence_params.items():
        extra += ["--defence-param", f"{key}={json.dumps(value)}"]
    attack = ["--attack", cfg.attack]
    for key, value in cfg.attack_params.items():
        attack += ["--attack-param", f"{key}={json.dumps(value)}"]
    peers = [_Peer(i, out / f"peer-{i:02d}", join_command(
                 run_file, shard, out / f"peer-{i:02d}", eval_file=eval_file,
                 extra=[*extra, "--index", str(i), *(attack if i in byzantine else [])]))
             for i, shard in enumerate(shards)]
    min_neighbours = min(cfg.peers - 1, cfg.degree)
    supervisor = _Supervisor(peers, rounds=cfg.gossip.rounds, churn=churn, rng=np.random.default_rng([cfg.seed, Seed.CHURN]))
    try:
        peers[0].start(["--min-neighbours", str(min_neighbours)])
        address = wait_for_address(peers[0].node, peers[0].require(), STARTUP_TIMEOUT_S)
        for peer in peers[1:]:
            peer.start(["--min-neighbours", str(min_neighbours), "--bootstrap", address])
        supervisor.run(deadline=time.monotonic() + timeout_s)
    finally:
        for peer in peers:
            peer.stop()
    result = gather(cfg, out, [p.node for p in peers], wall=time.perf_counter() - started, byzantine=byzantine,
                    majority_baseline=majority_share(eval_file))
    if churn > 0:
        result.summary["churn"] = {**supervisor.report(result.rows), **_killed_against_calm(peers, byzantine)}
        write_atomic(out / "summary.json", json.dumps(result.summary, indent=2).encode())
    return result


def _killed_against_calm(peers: list[_Peer], byzantine: set[int]) -> dict[str, Any]:
    """How far the killed peers end from the ones never killed, beside how far those are from each other:
    the never-killed honest peers' spread is the normal consensus distance of this network under this
    load, measured side by side (squared L2 distance to their mean, as `consensus_distance`)."""
    vectors = {p.index: c.vector for p in peers if p.index not in byzantine and (c := load_checkpoint(p.node)) is not None}
    calm = [i for i in vectors if not next(p for p in peers if p.index == i).kills]
    killed = [i for i in vectors if i not in calm]
    if not calm or not killed:
        return {}
    centre = np.mean([vectors[i] for i in calm], axis=0)
    distance = {i: float(np.sum((vectors[i] - centre) ** 2)) for i in vectors}
    worst = max(killed, key=distance.__getitem__)
    return {
        "distance_never_killed_max": max(distance[i] for i in calm),
        "distance_killed_max": distance[worst],
        "distance_killed_max_peer": worst,
    }


@dataclass
class _Peer:
    """One `p2pfed join` process of the run, restartable from its node directory."""

    index: int
    node: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self, extra: list[str], *, listen: str | None = None) -> None:
        """Start the process; `listen` replaces the command's listen address (a restart keeps its port)."""
        self.node.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [listen if listen is not None and arg == ANY_PORT else arg for arg in self.command]
        with (self.node / "stderr.txt").open("ab") as err:
            self.process = subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=err, env=env)

    def require(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise NetworkError(f"the node in {self.node} was never started")
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.node / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def address(self) -> str | None:
        """The listen address of the running process, read from status.json only once that process wrote
        it: a peer restarted a moment ago still has its previous incarnation's file, with a dead port."""
        status = self.status()
        addrs = status.get("listen_addrs")
        if not self.alive() or not addrs or status.get("pid") != self.require().pid:
            return None
        return str(addrs[0])

    def kill(self) -> None:
        process = self.require()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        if self.alive():
            self.require().terminate()
            try:
                self.require().wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.require().kill()
                self.require().wait(timeout=30)


@dataclass
class _Supervisor:
    """Waits for every peer to finish; with churn, kills and restarts them at random meanwhile."""

    peers: list[_Peer]
    rounds: int
    churn: float
    rng: np.random.Generator
    checked: int = 0  # checkpoints loaded right after a kill
    corrupt: list[str] = field(default_factory=list)
    _seen: dict[int, tuple[int, float]] = field(default_factory=dict)  # peer -> (round, when it was reached)
    _due: dict[int, float] = field(default_factory=dict)  # peer -> when to kill it
    clock: Callable[[], float] = time.monotonic

    def run(self, *, deadline: float) -> None:
        while any(p.alive() for p in self.peers):
            if self.clock() > deadline:
                raise NetworkError("the run did not finish before its timeout; see the peers' stderr.txt")
            for peer in self.peers:
                self._check_exit(peer)
                if self.churn > 0 and peer.alive():
                    self._churn(peer)
            time.sleep(POLL_S)
        for peer in self.peers:
            self._check_exit(peer)

    def _check_exit(self, peer: _Peer) -> None:
        code = peer.require().poll()
        if code not in (None, 0):
            raise NetworkError(f"the node in {peer.node} exited with {code}; see {peer.node / 'stderr.txt'}")

    def _churn(self, peer: _Peer) -> None:
        now = self.clock()
        done = int(peer.status().get("round", 0))
        last_round, reached = self._seen.get(peer.index, (0, now))
        if done > last_round:
            took = now - reached
            self._seen[peer.index] = (done, now)
            if done < self.rounds - CALM_ROUNDS and self.rng.random() < self.churn:
                self._due[peer.index] = now + self.rng.uniform(0.0, max(took, 1.0))
        due = self._due.get(peer.index)
        if due is not None and now >= due:
            del self._due[peer.index]
            # rounds may have sped up while the kill waited: it must not land in a calm round
            if done < self.rounds - CALM_ROUNDS:
                self._restart(peer)

    def _restart(self, peer: _Peer) -> None:
        """SIGKILL and restart `peer` on the address it had, as a daemon under a process manager comes back
        on its configured port: the addresses its neighbours and restarting peers hold stay valid."""
        address = peer.address()
        peer.kill()
        log.info("churn: killed peer %d at round %s", peer.index, peer.status().get("round"))
        try:
            load_checkpoint(peer.node)
            self.checked += 1
        except CheckpointError as exc:
            self.checked += 1
            self.corrupt.append(str(exc))
        live = [a for a in (p.address() for p in self.peers if p is not peer) if a is not None]
        extra = ["--min-neighbours", "1"]
        for i in self.rng.permutation(len(live))[:RESTART_BOOTSTRAPS]:
            extra += ["--bootstrap", live[int(i)]]
        peer.start(extra, listen=address.split("/p2p/")[0] if address is not None else None)

    def report(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        slowest = max(rows, key=lambda r: r["seconds"]) if rows else None
        return {
            "rate": self.churn,
            "kills": sum(p.kills for p in self.peers),
            "killed_peers": sorted(p.index for p in self.peers if p.kills),
            "checkpoints_checked_after_kill": self.checked,
            "corrupt_checkpoints": self.corrupt,
            "slowest_round_seconds": None if slowest is None else slowest["seconds"],
            "slowest_round_peer": None if slowest is None else slowest["peer"],
        }


def majority_share(eval_file: Path) -> float:
    """The test-set share of its most common label: what always answering that class scores."""
    labels = [json.loads(line)["label"] for line in eval_file.read_text().splitlines() if line.strip()]
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


def gather(cfg: SimConfig, out: Path, nodes: list[Path], *, wall: float, byzantine: set[int] | None = None,
           majority_baseline: float | None = None) -> SimResult:
    """Merge the nodes' metrics into the run directory (metrics.jsonl, summary.json): accuracy over the
    honest peers only, and each honest peer's share of Byzantine neighbours (from the IDs in its rows)."""
    byzantine = byzantine or set()
    ids = [str(read_status(node).get("peer_id", "")) if (node / STATUS_FILE).exists() else "" for node in nodes]
    byzantine_ids = {ids[i] for i in byzantine}
    rows: list[dict[str, Any]] = []
    for i, node in enumerate(nodes):
        for row in read_metrics(node):
            neighbours = row.get("neighbour_ids", [])
            share = sum(n in byzantine_ids for n in neighbours) / len(neighbours) if neighbours else 0.0
            rows.append({**row, "peer": i, "byzantine": i in byzantine, "byzantine_neighbour_share": round(share, 4)})
    rows.sort(key=lambda r: (r["round"], r["peer"]))
    honest_rows = [r for r in rows if not r["byzantine"]]
    rounds = sorted({r["round"] for r in honest_rows})
    curve = []
    for rnd in rounds:
        accuracies = [r["accuracy"] for r in honest_rows if r["round"] == rnd and r["accuracy"] is not None]
        if accuracies:
            curve.append({
                "round": rnd,
                "honest_accuracy_mean": float(np.mean(accuracies)),
                "honest_accuracy_std": float(np.std(accuracies)),
                "honest_accuracy_min": float(np.min(accuracies)),
                "honest_accuracy_max": float(np.max(accuracies)),
                "peers_reporting": len(accuracies),
            })
    honest = [i for i in range(len(nodes)) if i not in byzantine]
    finals = [c for c in (load_checkpoint(nodes[i]) for i in honest) if c is not None]
    consensus = worst = None
    if finals:
        stacked = np.stack([c.vector for c in finals])
        distances = np.sum((stacked - stacked.mean(axis=0)) ** 2, axis=1)
        consensus, worst = float(np.mean(distances)), float(np.max(distances))
    last_share = {r["peer"]: r["byzantine_neighbour_share"] for r in honest_rows}  # rows are in round order
    worst_off = max(last_share, key=lambda i: last_share[i]) if last_share else None
    final = curve[-1] if curve else {}
    summary = {
        "final": {
            "round": final.get("round"),
            "honest_accuracy_mean": final.get("honest_accuracy_mean"),
            "honest_accuracy_std": final.get("honest_accuracy_std"),
            "honest_accuracy_min": final.get("honest_accuracy_min"),
            "consensus_distance": consensus,
            "consensus_distance_max": worst,  # the peer farthest from the mean
            "majority_baseline": majority_baseline,
            # the worst-off honest peer's share of Byzantine neighbours at the end, and who that is
            "byzantine_share_max": None if worst_off is None else last_share[worst_off],
            "byzantine_share_max_peer": worst_off,
        },
        "curve": [{**c, "consensus_distance": consensus if c is curve[-1] else float("nan")} for c in curve],
        "byzantine_peers": sorted(byzantine),
        "byzantine_peer_ids": [ids[i] for i in sorted(byzantine)],
        "neighbourhoods": {
            "byzantine_share_mean_by_round": [
                round(float(np.mean([r["byzantine_neighbour_share"] for r in honest_rows if r["round"] == rnd])), 4)
                for rnd in rounds
            ],
            # honest peers that still had a Byzantine neighbour when they finished
            "honest_peers_with_byzantine_neighbours": sorted(i for i, share in last_share.items() if share > 0),
        },
        "attack": cfg.attack,
        "defence": cfg.defence,
        "peers": cfg.peers,
        "transport": "libp2p-processes",
        "wall_seconds": round(wall, 2),
    }
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    return SimResult(summary=summary, rows=rows, out=out)
