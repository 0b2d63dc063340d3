"""`p2pfed join --metrics`: what a Prometheus scrape of a node shows after its rounds."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from p2pfed.cli.main import main
from p2pfed.daemon.metrics import NodeMetrics, parse_address, serving
from p2pfed.errors import ConfigError
from p2pfed.peer.peer import RoundReport


def _report(round_: int, **changes) -> RoundReport:  # type: ignore[no-untyped-def]
    fields = dict(
        round=round_,
        peer="12D3KooWSelf",
        index=0,
        byzantine=False,
        vector=np.zeros(4, np.float32),
        train_loss=0.5,
        accuracy=0.75,
        loss=0.6,
        bytes_sent=1000,
        bytes_received=3000,
        seconds=1.0,
        outcomes={"kept": 2},
        rejections={"bad_signature": 1},
        reputation={"12D3KooWA": 0.8, "12D3KooWB": 0.2},
    )
    return RoundReport(**(fields | changes))


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_shows_the_rounds_figures_and_each_node_serves_its_own() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.observe(_report(0), ["12D3KooWA", "12D3KooWB"])
    first.observe(
        _report(
            1,
            train_loss=0.25,
            accuracy=None,
            loss=None,
            rejections={"bad_signature": 3, "wrong_run": 1},
        ),
        ["12D3KooWA"],
        transport={"evict": 2, "refused.streams_per_peer": 728, "recv_fail.over_budget": 1, "dial_fail.timeout": 3},
    )
    second.observe(_report(0, reputation={"12D3KooWC": 0.5}), ["12D3KooWC"])
    with serving(first, "127.0.0.1:0") as (_, port), serving(second, "127.0.0.1:0") as (_, other):
        seen, theirs = _scrape(port), _scrape(other)
    assert seen[("p2pfed_round", ())] == 2
    assert seen[("p2pfed_local_loss", ())] == 0.25
    assert seen[("p2pfed_test_accuracy", ())] == 0.75  # round 1 did not evaluate: round 0's stays
    assert seen[("p2pfed_test_loss", ())] == 0.6
    assert seen[("p2pfed_bytes_sent_total", ())] == 2000
    assert seen[("p2pfed_bytes_received_total", ())] == 6000
    assert seen[("p2pfed_rejections_total", (("reason", "bad_signature"),))] == 3
    assert seen[("p2pfed_rejections_total", (("reason", "wrong_run"),))] == 1
    assert seen[("p2pfed_neighbours", ())] == 1
    assert seen[("p2pfed_reputation", (("peer", "12D3KooWA"),))] == 0.8
    assert seen[("p2pfed_rewires_total", ())] == 2
    assert theirs[("p2pfed_rewires_total", ())] == 0
    refused = {k[1]: v for k, v in seen.items() if k[0] == "p2pfed_transport_refusals_total"}
    assert refused == {
        (("reason", "refused.streams_per_peer"),): 728,
        (("reason", "recv_fail.over_budget"),): 1,
    }  # a failed dial of ours is not a peer's misbehaviour
    assert theirs[("p2pfed_round", ())] == 1
    assert [k for k in theirs if k[0] == "p2pfed_reputation"] == [
        ("p2pfed_reputation", (("peer", "12D3KooWC"),))
    ]


def test_a_peer_the_reputation_table_forgot_leaves_the_scrape() -> None:
    metrics = NodeMetrics()
    metrics.observe(_report(0), [])
    metrics.observe(_report(1, reputation={"12D3KooWA": 0.9}), [])
    assert b'p2pfed_reputation{peer="12D3KooWA"} 0.9' in metrics.text()
    assert b"12D3KooWB" not in metrics.text()


@pytest.mark.parametrize(
    "address", ["9100", "localhost", "127.0.0.1:", "127.0.0.1:http", "1.2.3.4:70000"]
)
def test_an_address_that_is_not_host_and_port_is_a_clear_error(address: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address(address)


def test_ipv6_addresses_take_brackets() -> None:
    assert parse_address("[::1]:9100") == ("::1", 9100)


def test_join_refuses_a_bad_metrics_address_before_loading_anything(tmp_path: Path) -> None:
    run, data = tmp_path / "run.toml", tmp_path / "data.jsonl"
    run.write_text("")
    data.write_text("")
    result = CliRunner().invoke(
        main,
        [
            "join",
            "--run",
            str(run),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "n"),
            "--metrics",
            "9100",
        ],
    )
    assert result.exit_code == 2
    assert "HOST:PORT" in result.output
    assert not (tmp_path / "n").exists()


@pytest.mark.slow
@pytest.mark.network
def test_a_scrape_after_a_round_of_a_real_join_shows_it(tmp_path: Path) -> None:
    import dataclasses

    import trio

    from p2pfed.config import GossipConfig, RunManifest
    from p2pfed.daemon.node import Node, NodeConfig
    from p2pfed.daemon.runfile import RunFile
    from p2pfed.learn import LearnConfig, TaskModel
    from p2pfed.wire import Identity

    contract = RunManifest(task="sms-spam", gossip_steps=1)
    model = TaskModel.load(LearnConfig(run=contract))
    manifest = dataclasses.replace(contract, base_hash=model.base_hash, labels=("ham", "spam"))
    run = RunFile(manifest, GossipConfig(rounds=1, local_steps=1, step_timeout=15))

    def node(i: int, bootstrap: tuple[str, ...] = ()) -> Node:
        cfg = NodeConfig(
            run_file=tmp_path / "run.toml",
            data=tmp_path / "unused.jsonl",
            out=tmp_path / f"n{i}",
            listen=("/ip4/127.0.0.1/tcp/0",),
            bootstrap=bootstrap,
            defence="mean",
            index=i,
        )
        return Node(cfg, run, Identity.for_peer(9, i), model, None, progress=lambda line: None)

    first = node(0)
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def main() -> None:
        with serving(first.metrics, "127.0.0.1:0") as (_, port), trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                await nursery.start(node(1, tuple(first.transport.listen_addrs[:1])).run)
            scraped.update(await trio.to_thread.run_sync(_scrape, port))

    trio.run(main)
    assert scraped[("p2pfed_round", ())] == 1
    assert 0.0 <= scraped[("p2pfed_test_accuracy", ())] <= 1.0
    assert scraped[("p2pfed_bytes_sent_total", ())] > 0
    assert scraped[("p2pfed_bytes_received_total", ())] > 0
    other = Identity.for_peer(9, 1).peer_id
    assert {dict(labels)["peer"] for name, labels in scraped if name == "p2pfed_reputation"} <= {
        other
    }
