"""A node that joins a running network late starts at the network's round from its neighbours' adapters.

Three `Node`s (real libp2p hosts on 127.0.0.1) in one process share one loaded model to keep this fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import trio

from p2pfed.config import GossipConfig, RunManifest
from p2pfed.daemon.node import Node, NodeConfig
from p2pfed.daemon.runfile import RunFile
from p2pfed.daemon.status import read_metrics
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.wire import Identity

pytestmark = [pytest.mark.slow, pytest.mark.network]

ROUNDS = 10
JOIN_AFTER = 4  # rounds the first two nodes run before the third one starts


def test_a_late_joiner_starts_at_the_network_round_from_its_neighbours(tmp_path: Path) -> None:
    contract = RunManifest(task="sms-spam", gossip_steps=1)
    model = TaskModel.load(LearnConfig(run=contract))
    manifest = dataclasses.replace(contract, base_hash=model.base_hash, labels=("ham", "spam"))
    run = RunFile(manifest, GossipConfig(rounds=ROUNDS, local_steps=3, step_timeout=15))
    run.save(tmp_path / "run.toml")
    lines: dict[int, list[str]] = {0: [], 1: [], 2: []}

    def node(i: int, bootstrap: tuple[str, ...] = ()) -> Node:
        cfg = NodeConfig(run_file=tmp_path / "run.toml", data=tmp_path / "unused.jsonl", out=tmp_path / f"n{i}",
                         listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=bootstrap, defence="mean", index=i)
        return Node(cfg, run, Identity.for_peer(5, i), model, None, progress=lines[i].append)

    async def main() -> None:
        progressed = trio.Event()
        first = node(0)

        def watch(line: str) -> None:
            lines[0].append(line)
            if line.startswith(f"round {JOIN_AFTER}/"):
                progressed.set()

        first.progress = watch
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            second = node(1, tuple(first.transport.listen_addrs[:1]))
            await nursery.start(second.run)
            with trio.fail_after(400):
                await progressed.wait()
            late = node(2, tuple(first.transport.listen_addrs[:1]))
            await nursery.start(late.run)

    trio.run(main)
    rows = [read_metrics(tmp_path / f"n{i}") for i in range(3)]
    assert [len(r) for r in rows[:2]] == [ROUNDS, ROUNDS]
    late_rows = rows[2]
    assert any("starting there from the neighbours' adapters" in line for line in lines[2])
    assert late_rows[0]["round"] >= JOIN_AFTER - 1  # it did not start from round 0 (rounds count from 0)
    assert late_rows[-1]["round"] == ROUNDS - 1
    same_round = {r["round"]: r["accuracy"] for r in rows[0]}
    # From scratch, 6 local steps leave a peer at the majority baseline; adopting its neighbours' adapters
    # makes it as good as the network within its first two rounds (the very first can miss a step's updates
    # that were sent before it connected).
    assert any(r["accuracy"] >= same_round[r["round"]] - 0.02 for r in late_rows[:2])
    assert all(np.isfinite(r["train_loss"]) for r in late_rows)
