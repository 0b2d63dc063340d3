"""Six `p2pfed join` processes, each in its own network namespace behind one router (tests/netns.py), meet
the faults of a real network: a partition into two halves that later heals, 10% random packet loss on
every link, and a 200 ms round trip on every link (a delaying proxy in the router: the kernel has no
netem). What a user would notice is checked: rounds keep finishing within their deadlines, the halves come
back together, checkpoints stay whole, and lost or slow packets are never counted as misbehaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed.daemon.status import read_metrics
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.peer.intake import LATE
from p2pfed.sims.processes import export_shards
from p2pfed.sims.simulate import SimConfig
from tests.netns import Lab, can_run, lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(can_run() is not None, reason=str(can_run())),
]

PEERS = 6
HALVES = ([0, 1, 2], [3, 4, 5])
Q = 2
K = 4
STEP_TIMEOUT = 8.0
CLI = [sys.executable, "-m", "p2pfed.cli.main"]


def poll(condition: Callable[[], Any], timeout: float, what: str, *, every: Callable[[], None] | None = None) -> Any:
    """Bounded polling of the files the join processes write (they offer no other channel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if every is not None:
            every()
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def status(node: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((node / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def make_run(root: Path, rounds: int) -> Path:
    export_shards(SimConfig(peers=PEERS, partition="iid"), root / "data", eval_rows=100, max_rows=150)
    subprocess.run(
        [*CLI, "init", str(root / "run.toml"), "--task", "sms-spam", "--rounds", str(rounds), "-K", str(K),
         "-Q", str(Q), "--step-timeout", str(STEP_TIMEOUT)],
        check=True, capture_output=True, timeout=300,
    )
    return root


class Network:
    """The join processes of one run, host i of the lab running peer i."""

    def __init__(self, net: Lab, root: Path) -> None:
        self.net, self.root = net, root
        self.nodes = [root / f"node-{i}" for i in range(PEERS)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.vectors: dict[int, dict[int, np.ndarray]] = {i: {} for i in range(PEERS)}  # peer -> round -> vector

    def start(self) -> None:
        self.procs.append(self._join(0, None))
        first = poll(lambda: (status(self.nodes[0]).get("listen_addrs") or [None])[0], 400, "peer 0 to listen")
        self.procs += [self._join(i, first) for i in range(1, PEERS)]

    def _join(self, i: int, bootstrap: str | None) -> subprocess.Popen[bytes]:
        node = self.nodes[i]
        node.mkdir(exist_ok=True)
        command = [*CLI, "join", "--run", str(self.root / "run.toml"),
                   "--data", str(self.root / "data" / f"peer-{i:02d}.jsonl"),
                   "--eval", str(self.root / "data" / "eval.jsonl"), "--listen", f"/ip4/{self.net.address(i)}/tcp/0",
                   "--out", str(node), "--min-neighbours", str(PEERS - 1), "--wait", "400", "--threads", "1",
                   "--index", str(i)]
        command += ["--bootstrap", bootstrap] if bootstrap else []
        with (node / "stderr.txt").open("ab") as err:
            return self.net.hosts[i].popen(command, stdout=subprocess.DEVNULL, stderr=err)

    def rounds(self) -> list[int]:
        """Rounds each peer has completed."""
        return [int(status(n).get("round", 0)) for n in self.nodes]

    def record(self) -> None:
        """Keep every round's checkpointed vector: a checkpoint lasts a whole round, polling sees each one."""
        for i, node in enumerate(self.nodes):
            state = load_checkpoint(node)  # raises CheckpointError if one were ever corrupt
            if state is not None:
                self.vectors[i].setdefault(state.round - 1, state.vector.copy())

    def wait_rounds(self, at_least: int, timeout: float) -> None:
        poll(lambda: min(self.rounds()) >= at_least, timeout, f"every peer to finish {at_least} rounds",
             every=self.record)

    def consensus_distance(self, rnd: int) -> float:
        """Mean squared distance of the peers' vectors after round `rnd` to their mean."""
        stacked = np.stack([self.vectors[i][rnd] for i in range(PEERS)])
        return float(np.mean(np.sum((stacked - stacked.mean(axis=0)) ** 2, axis=1)))

    def stop(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        return [proc.wait(timeout=120) for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def stderr(self, i: int) -> str:
        return (self.nodes[i] / "stderr.txt").read_text()[-3000:]


@pytest.fixture
def network(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Network]:
    make_run(tmp_path, rounds=request.param)
    with lab(PEERS) as net:
        started = Network(net, tmp_path)
        try:
            yield started
        finally:
            started.kill()


def round_bound(rows: list[dict[str, Any]]) -> float:
    """The longest a round may take while a neighbour is unreachable: every gossip step waits at most its
    deadline, on top of the slowest training + evaluation seen on this machine in a fault-free round."""
    return Q * STEP_TIMEOUT + max(r["seconds"] for r in rows) + 5.0


PRE, CUT, AFTER = 3, 2, 3  # rounds before the partition, rounds partitioned, rounds allowed to reconverge
# Training keeps the consensus distance moving round to round even without faults (0.011 then 0.015 before
# the cut here), and after a heal the floor it settles to varies run to run with the timing (the lowest of
# the 3 healed rounds, in seven runs: 0.0012 to 0.023). So "back to its pre-partition level" means back
# within a band: at most this many times the largest distance before the cut. The cut moves it to 7-12.
BAND = 2.0


@pytest.mark.parametrize("network", [PRE + CUT + AFTER + 2], indirect=True)
def test_halves_keep_training_through_a_partition_and_reconverge_after_it_heals(network: Network) -> None:
    network.start()
    network.wait_rounds(PRE, 600)
    before = max(network.consensus_distance(r) for r in range(PRE))
    fault_free = [r for n in network.nodes for r in read_metrics(n)]
    bound = round_bound(fault_free)

    network.net.partition(*HALVES)
    cut_from = max(network.rounds())  # the first round any peer runs partitioned
    network.wait_rounds(cut_from + CUT, CUT * bound + 60)
    assert network.net.dropped() > 0  # the partition really cut traffic
    network.net.heal()
    healed_from = max(network.rounds())
    network.wait_rounds(healed_from + AFTER, AFTER * bound + 120)
    assert set(network.stop()) == {0}, network.stderr(0)

    distances = {r: network.consensus_distance(r) for r in range(healed_from + AFTER)}
    print("consensus distance by round:", {r: f"{d:.3g}" for r, d in distances.items()},
          f"partitioned from round {cut_from + 1}, healed from round {healed_from + 1}")
    for i, node in enumerate(network.nodes):
        rows = read_metrics(node)
        assert max(r["seconds"] for r in rows) <= bound, (i, [r["seconds"] for r in rows])
        cut = [r for r in rows if cut_from <= r["round"] < cut_from + CUT]
        assert cut and all(r["outcomes"].get("kept", 0) > 0 for r in cut), (i, cut)  # its half still mixed
        # After the heal, an update the partition held up may arrive rounds late (stale_round), and one may
        # race the hello that makes its sender our neighbour again (not_a_neighbour): both are turned away
        # at no cost to the sender. Any other reason would be a false accusation.
        harmless = {reason.value for reason in LATE} | {"not_a_neighbour"}
        assert all(set(r["rejections"]) <= harmless for r in rows), (i, rows[-1]["rejections"])
        assert not {"evict", "refuse"} & set(status(node).get("transport", {})), i  # nobody was expelled
    worst_cut = max(distances[r] for r in range(cut_from, cut_from + CUT))
    assert worst_cut > 10 * BAND * before  # the halves drifted apart while cut
    assert min(distances[r] for r in range(healed_from, healed_from + AFTER)) <= BAND * before


LOSS = 0.1
LOSS_ROUNDS = 4


def finish_cleanly(network: Network, rounds: int) -> list[list[dict[str, Any]]]:
    """Wait for every join process to exit and check what a user would see on each node: it exited 0, it
    finished every round with a whole checkpoint, some updates got through, no bad message was counted and
    nobody was expelled. Returns each node's metrics rows."""
    codes = [proc.wait(timeout=rounds * (Q * STEP_TIMEOUT + 120) + 400) for proc in network.procs]
    assert codes == [0] * PEERS, [network.stderr(i) for i, c in enumerate(codes) if c][:1]
    every_node_rows = []
    for node in network.nodes:
        final = status(node)
        assert final["state"] == "finished" and final["round"] == rounds
        checkpoint = load_checkpoint(node)
        assert checkpoint is not None and checkpoint.round == rounds and np.isfinite(checkpoint.vector).all()
        rows = read_metrics(node)
        assert [r["round"] for r in rows] == list(range(rounds))
        assert sum(r["outcomes"].get("kept", 0) for r in rows) > 0  # updates got through the faulty links
        assert final["rejections"] == {}, final["rejections"]  # a lost or slow packet is not a bad message
        assert not {"evict", "refuse"} & set(final["transport"]), final["transport"]  # nobody was expelled
        every_node_rows.append(rows)
    return every_node_rows


@pytest.mark.parametrize("network", [LOSS_ROUNDS], indirect=True)
def test_rounds_complete_under_ten_percent_loss_and_loss_is_not_misbehaviour(network: Network) -> None:
    network.net.lose(LOSS)
    network.start()
    finish_cleanly(network, LOSS_ROUNDS)
    assert network.net.dropped() > 0
    for node in network.nodes:
        assert (node / "adapter" / "adapter_model.safetensors").is_file()


DELAY = 0.1  # seconds each way: a 200 ms round trip, an intercontinental link
DELAY_ROUNDS = 3


@pytest.mark.parametrize("network", [DELAY_ROUNDS], indirect=True)
def test_rounds_complete_over_slow_links_and_no_update_misses_its_deadline(network: Network) -> None:
    network.net.delay(DELAY)
    network.start()
    every_node_rows = finish_cleanly(network, DELAY_ROUNDS)
    carried = network.net.delayed()
    assert carried["connections"] >= PEERS - 1 and carried["bytes"] > 0, carried  # the delay was in the path
    for rows in every_node_rows:
        assert sum(r["outcomes"].get("missing", 0) for r in rows) == 0, rows  # slow, but always in time
