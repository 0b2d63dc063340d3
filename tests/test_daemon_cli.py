"""`p2pfed keygen | init | join | status` without a network: files, refusals and what a user reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.config import GossipConfig, RunManifest
from p2pfed.daemon.files import claim_directory
from p2pfed.daemon.node import Node, NodeConfig
from p2pfed.daemon.runfile import RunFile
from p2pfed.daemon.status import format_status
from p2pfed.errors import CheckpointError, ConfigError
from p2pfed.wire import Identity


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_keygen_writes_a_private_key_and_prints_its_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    result = invoke("keygen", "--out", str(path))
    assert result.exit_code == 0
    assert result.output.strip() == Identity.load(path).peer_id
    assert result.output.startswith("12D3KooW")
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = invoke("keygen", "--out", str(path))
    assert again.exit_code == 2 and "exists" in again.output


def test_init_pins_the_base_model_hash_labels_and_schedule(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    result = invoke("init", str(path), "--task", "sms-spam", "--seed", "3", "--rounds", "4", "-Q", "2")
    assert result.exit_code == 0, result.output
    run = RunFile.load(path)
    assert run.manifest.labels == ("ham", "spam")
    assert len(run.manifest.base_hash) == 64
    assert run.manifest.seed == 3
    assert (run.gossip.rounds, run.gossip.gossip_steps) == (4, 2)
    assert RunManifest.load(path) == run.manifest  # the [run] table is a plain manifest
    assert run.manifest.topic in result.output


def test_init_needs_labels_for_a_custom_task(tmp_path: Path) -> None:
    result = invoke("init", str(tmp_path / "run.toml"), "--task", "tickets")
    assert result.exit_code == 2 and "--labels" in result.output


def test_join_refuses_a_run_pinned_to_another_base_model(tmp_path: Path) -> None:
    run = RunFile(RunManifest(base_hash="0" * 64, labels=("ham", "spam")), GossipConfig())
    run.save(tmp_path / "run.toml")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"text": "hi", "label": "ham"}\n')
    result = invoke("join", "--run", str(tmp_path / "run.toml"), "--data", str(data), "--out", str(tmp_path / "n"))
    assert result.exit_code == 2
    assert "content hash" in result.output and "pins 0000000000000000" in result.output


def test_an_out_directory_serves_one_run(tmp_path: Path) -> None:
    identity = Identity.for_peer(1, 0)
    claim_directory(tmp_path, RunManifest(seed=1), identity)
    claim_directory(tmp_path, RunManifest(seed=1), identity)
    with pytest.raises(CheckpointError, match="another run"):
        claim_directory(tmp_path, RunManifest(seed=2), identity)


def test_status_prints_round_neighbours_evaluation_traffic_and_rejections(tmp_path: Path) -> None:
    now = time.time()
    status = {
        "peer_id": "12D3KooWSelf", "pid": 42, "run": "/p2pfed/run/abc", "state": "running", "message": "",
        "round": 3, "rounds": 6, "resumed_from": 2, "listen_addrs": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWSelf"],
        "neighbours": {"12D3KooWGood": {"reputation": 0.6, "degree": 3},
                       "12D3KooWBad": {"reputation": 0.05, "degree": 3}},
        "last_eval": {"round": 2, "accuracy": 0.9512, "loss": 0.2}, "bytes_in": 2_500_000, "bytes_out": 1_200_000,
        "rejections": {"bad_signature": 4, "stale_round": 1}, "transport": {"recv_fail.truncated": 1},
        "started": now - 60, "updated": now,
    }
    (tmp_path / "status.json").write_text(json.dumps(status))
    result = invoke("status", "--out", str(tmp_path))
    assert result.exit_code == 0
    text = result.output
    assert "round    3/6  (resumed from round 2)" in text
    assert "accuracy 0.9512" in text and "in 2.5 MB, out 1.2 MB" in text
    assert text.index("12D3KooWGood") < text.index("12D3KooWBad")  # best reputation first
    assert "bad_signature" in text and "recv_fail.truncated 1" in text
    assert format_status(status, now=now) in text


def test_status_without_a_node_says_how_to_start_one(tmp_path: Path) -> None:
    result = invoke("status", "--out", str(tmp_path))
    assert result.exit_code == 2 and "p2pfed join" in result.output


def test_a_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    RunFile(RunManifest(), GossipConfig()).save(tmp_path / "run.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        Node.load(NodeConfig(run_file=tmp_path / "run.toml", data=tmp_path / "nope.jsonl", out=tmp_path / "n"))
