"""Circuit relay v2 on 127.0.0.1: a peer that says it is behind NAT reserves a slot on a relay peer,
announces only its relayed address, and its neighbours reach it (and send it adapters) through the
relay; a relay grants no more reservations than its limit."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pfed.daemon.metrics import NodeMetrics
from p2pfed.net.libp2p_relay import RelayRules
from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.peer.peer import RoundReport
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-relay").digest()
BASE = Libp2pConfig(run_digest=RUN, relay_interval_s=0.5, announce_interval_s=1.0)


@asynccontextmanager
async def started(configs: Sequence[tuple[Identity, Libp2pConfig]]) -> AsyncIterator[list[Libp2pTransport]]:
    transports = [Libp2pTransport(identity, config) for identity, config in configs]
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        yield transports
        nursery.cancel_scope.cancel()


def relay_gauges(transport: Libp2pTransport) -> dict[str, float]:
    """`p2pfed_relay{kind}` as a scrape of a node with this transport shows it after a round."""
    report = RoundReport(
        round=0, peer=transport.local_id, index=0, byzantine=False, vector=np.zeros(2, np.float32),
        train_loss=0.5, accuracy=None, loss=None, bytes_sent=0, bytes_received=0, seconds=1.0,
        outcomes={}, rejections={}, reputation={},
    )
    metrics = NodeMetrics()
    metrics.observe(report, transport.neighbours(), transport.counters, transport.relay_use())
    families = text_string_to_metric_families(metrics.text().decode())
    return {s.labels["kind"]: s.value for f in families if f.name == "p2pfed_relay" for s in f.samples}


def test_private_peers_train_through_a_relay_when_no_direct_path_is_tried() -> None:
    async def main() -> None:
        relay_cfg = dataclasses.replace(BASE, relay_service=True)
        async with started([(Identity.for_peer(31, 0), relay_cfg)]) as (relay,):
            private = dataclasses.replace(
                BASE, private=True, hole_punch=False, bootstrap=(relay.listen_addrs[0],)
            )
            peers = [(Identity.for_peer(32, i), private) for i in range(2)]
            async with started(peers) as (dest, source):
                with trio.fail_after(40):
                    await dest.wait_counter("relay_reserved")
                    await source.wait_counter("relay_reserved")
                    await dest.wait_neighbours(2)
                    await source.wait_neighbours(2)
                # each announces only its address through the relay
                for peer in (dest, source):
                    assert peer.announced_addrs()
                    assert all(relay.local_id in a and "/p2p-circuit/" in a for a in peer.announced_addrs())
                assert source.path_to(dest.local_id) == "relayed"
                adapter = bytes(range(256)) * 4096  # 1 MiB, about a small model's LoRA adapter
                with trio.fail_after(60):
                    assert await source.send(dest.local_id, adapter)
                    delivery = await dest.incoming.receive()
                assert (delivery.remote, b"".join(delivery.chunks)) == (source.local_id, adapter)
                assert source.path_to(dest.local_id) == "relayed"  # the path that carried it
                assert source.relay_use()["relayed_neighbours"] == 1
                assert relay.relay_use()["circuits_served"] >= 1
                # what an operator's scrape shows
                assert relay_gauges(source) == {"relayed_neighbours": 1.0, "direct_neighbours": 1.0,
                                                "reservations": 1.0, "circuits_served": 0.0,
                                                "hole_punched": 0.0, "behind_nat": 1.0}
                assert relay_gauges(relay)["circuits_served"] >= 1

    trio.run(main)


def test_a_relay_grants_no_more_reservations_than_its_limit() -> None:
    async def main() -> None:
        rules = RelayRules(max_reservations=1)
        relay_cfg = dataclasses.replace(BASE, relay_service=True, relay=rules)
        async with started([(Identity.for_peer(33, 0), relay_cfg)]) as (relay,):
            private = dataclasses.replace(
                BASE, private=True, hole_punch=False, bootstrap=(relay.listen_addrs[0],)
            )
            async with started([(Identity.for_peer(34, 0), private)]) as (first,):
                with trio.fail_after(30):
                    await first.wait_counter("relay_reserved")
                async with started([(Identity.for_peer(34, 1), private)]) as (second,):
                    with trio.fail_after(30):
                        await second.wait_counter("relay_reserve_fail")
                    assert second.counters["relay_reserved"] == 0
                    assert second.announced_addrs() == ()  # nothing to announce without a slot
                    assert first.relay_use()["reservations"] == 1

    trio.run(main)
