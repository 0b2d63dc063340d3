"""The run contract (`RunManifest`): what its digest binds, the one topic every view shows, old files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import trio
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.config import GossipConfig, RunManifest
from p2pfed.daemon.node import Node, NodeConfig
from p2pfed.daemon.runfile import RunFile
from p2pfed.errors import ConfigError
from p2pfed.wire import Identity


@pytest.mark.parametrize("change", [{"gossip_steps": 2}, {"round_window": 3}])
def test_q_and_the_round_window_are_part_of_the_digest_and_topic(change: dict[str, int]) -> None:
    base = RunManifest(base_hash="0" * 64, labels=("ham", "spam"))
    other = dataclasses.replace(base, **change)
    assert other.digest() != base.digest()
    assert other.topic != base.topic


def test_the_run_file_fixes_q_whatever_schedule_it_is_given(tmp_path: Path) -> None:
    run = RunFile(RunManifest(gossip_steps=2, round_window=1), GossipConfig(rounds=3, gossip_steps=7))
    assert (run.gossip.rounds, run.gossip.gossip_steps, run.gossip.round_window) == (3, 2, 1)
    run.save(tmp_path / "run.toml")
    assert RunFile.load(tmp_path / "run.toml") == run


def test_an_old_run_file_says_to_rerun_init(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"  # as protocol version 1 wrote it: Q in [gossip], no version 2 fields
    path.write_text(
        '[run]\nmodel = "minilm"\nbase_hash = ""\ntask = "sms-spam"\nlabels = ["ham", "spam"]\n'
        'lora_mode = "shared-a"\nlora_rank = 8\nlora_alpha = 16.0\nadapt_layers = 1\nmax_tokens = 64\n'
        "seed = 0\nprotocol_version = 1\n\n[gossip]\nrounds = 6\ngossip_steps = 4\nround_window = 2\n"
    )
    for load in (RunFile.load, RunManifest.load):
        with pytest.raises(ConfigError, match=r"protocol version 1.*re-run `p2pfed init`"):
            load(path)


def test_schedule_keys_of_the_contract_are_refused_in_the_gossip_table(tmp_path: Path) -> None:
    RunFile(RunManifest()).save(tmp_path / "run.toml")
    text = (tmp_path / "run.toml").read_text().replace("[gossip]\n", "[gossip]\ngossip_steps = 1\n")
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\['gossip_steps'\] belong to the \[run\] contract"):
        RunFile.load(tmp_path / "run.toml")


class _NoModel:
    """What a Node needs of its model before the first round."""

    dim = 4
    pool_size = 20

    def initial_vector(self) -> np.ndarray:
        return np.zeros(self.dim, np.float32)


@pytest.mark.network
def test_init_join_status_and_status_json_show_the_topic_the_transport_subscribes_to(tmp_path: Path) -> None:
    runner = CliRunner()
    run_file = tmp_path / "run.toml"
    init = runner.invoke(main, ["init", str(run_file), "--task", "sms-spam", "-Q", "2"], catch_exceptions=False)
    assert init.exit_code == 0, init.output
    run = RunFile.load(run_file)
    out = tmp_path / "node"
    cfg = NodeConfig(run_file=run_file, data=tmp_path / "unused.jsonl", out=out, listen=("/ip4/127.0.0.1/tcp/0",))
    node = Node(cfg, run, Identity.for_peer(0, 0), _NoModel(), None)  # type: ignore[arg-type]
    subscribed: list[str] = []

    async def start_then_stop() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)  # listening, subscribed, status.json written
            subscribed.extend(node.transport._pubsub.topic_ids)
            nursery.cancel_scope.cancel()

    trio.run(start_then_stop)
    assert subscribed == [node.transport.topic]
    topic = subscribed[0]
    assert topic in init.output
    assert json.loads((out / "status.json").read_text())["run"] == topic
    status = runner.invoke(main, ["status", "--out", str(out)], catch_exceptions=False)
    assert f"topic    {topic}" in status.output
