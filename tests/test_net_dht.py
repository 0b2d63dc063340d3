"""DHT discovery: peers of a run, given only the address of a peer of *another* run, find each other
through the Kademlia provider record under their run digest, and never take the other run's peers
as neighbours."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio

from p2pfed.net.libp2p_dht import run_key
from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN_A = hashlib.sha256(b"test-net-dht-a").digest()
RUN_B = hashlib.sha256(b"test-net-dht-b").digest()


@asynccontextmanager
async def started(configs: Sequence[tuple[Identity, Libp2pConfig]]) -> AsyncIterator[list[Libp2pTransport]]:
    transports = [Libp2pTransport(identity, config) for identity, config in configs]
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        yield transports
        nursery.cancel_scope.cancel()


def run_config(run: bytes, bootstrap: tuple[str, ...] = (), *, dht: bool = True) -> Libp2pConfig:
    return Libp2pConfig(run_digest=run, bootstrap=bootstrap, enable_dht=dht, dht_interval_s=1.0)


def test_a_run_key_is_a_sha256_multihash_of_the_digest() -> None:
    assert run_key(RUN_A) == "1220" + RUN_A.hex()
    assert run_key(RUN_A) != run_key(RUN_B)
    assert len(bytes.fromhex(run_key(b"short"))) == 34  # any digest becomes a well-formed multihash


def test_peers_given_only_another_runs_address_find_their_run_through_the_dht() -> None:
    async def main() -> None:
        b_peers = [(Identity.for_peer(21, i), run_config(RUN_B)) for i in range(2)]
        async with started(b_peers) as run_b:
            await run_b[1].connect(run_b[0].listen_addrs[0])
            boot = (run_b[0].listen_addrs[0],)  # the only address run A's peers are given
            a_peers = [(Identity.for_peer(22, i), run_config(RUN_A, boot)) for i in range(3)]
            async with started(a_peers) as run_a:
                with trio.fail_after(90):  # generous: CI machines are shared
                    for transport in run_a:
                        await transport.wait_neighbours(2)
                a_ids = {t.local_id for t in run_a}
                for transport in run_a:
                    assert set(transport.neighbours()) == a_ids - {transport.local_id}
                assert set(run_b[0].neighbours()) == {run_b[1].local_id}  # run B keeps to itself
                directory = run_a[0]._directory
                assert directory is not None
                # the provider record itself: run A's key lists run A's peers, and no one else
                with trio.fail_after(45):
                    providers = await directory._find_providers()
                assert {p.peer_id.to_base58() for p in providers} <= a_ids
                assert len({p.peer_id.to_base58() for p in providers} - {run_a[0].local_id}) >= 1

    trio.run(main)


def test_without_the_dht_another_runs_address_leads_nowhere() -> None:
    """The control: the same start with the DHT off leaves run A's peers alone (a fixed number of
    hellos is the event waited for, not a time)."""

    async def main() -> None:
        async with started([(Identity.for_peer(23, 0), run_config(RUN_B, dht=False))]) as (other,):
            boot = (other.listen_addrs[0],)
            a_peers = [(Identity.for_peer(24, i), run_config(RUN_A, boot, dht=False)) for i in range(2)]
            async with started(a_peers) as run_a:
                with trio.fail_after(15):
                    for transport in run_a:  # each greeted the bootstrap peer and was turned away
                        await transport.wait_counter("presence_rejected")
                for transport in run_a:
                    assert transport.neighbours() == []

    trio.run(main)
