"""One peer opening a thousand streams or connections cannot exhaust an honest libp2p transport."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pfed.net.libp2p_limits import OpenStreams
from p2pfed.net.libp2p_transport import UPDATE_PROTOCOL, Libp2pConfig, Libp2pTransport
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-limits").digest()
# The stall timeout outlasts every test's deadline, so the victim resets the attacker's admitted (stalled)
# streams only because they break a cap, never because a loaded machine made the test slow.
CONFIG = Libp2pConfig(run_digest=RUN, dial_timeout_s=2.0, stall_timeout_s=60.0)
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
ATTACK_STREAMS = 1000


@asynccontextmanager
async def _attacker() -> AsyncIterator[object]:
    host = new_host(key_pair=create_new_key_pair(b"\x09" * 32), listen_addrs=[LOOPBACK])
    async with host.run(listen_addrs=[LOOPBACK]):
        try:
            yield host
        finally:
            with trio.move_on_after(5):
                await host.close()


class _Flood:
    """Streams that promise a 1 MB frame, send 10 bytes of it and stay open until the victim resets."""

    def __init__(self, attacker: object, victim: ID) -> None:
        self.attacker = attacker
        self.victim = victim
        self.ended = 0
        self.changed = trio.Event()

    async def hold_one(self) -> None:
        try:
            stream = await self.attacker.new_stream(self.victim, [UPDATE_PROTOCOL])  # type: ignore[attr-defined]
            await stream.write(struct.pack(">Q", 1_000_000) + b"\x01" * 10)
            await stream.read(1)  # returns (or raises) once the victim resets us
        except Exception:
            pass  # the victim refused us: that is its right
        self.ended += 1
        self.changed.set()
        self.changed = trio.Event()

    async def wait_ended(self, count: int) -> None:
        while self.ended < count:
            await self.changed.wait()


async def _honest_updates_arrive(victim: Libp2pTransport, honest: Libp2pTransport, n: int) -> None:
    for step in range(n):
        payload = bytes([step]) * 100_000
        assert await honest.send(victim.local_id, payload)
        delivery = await victim.incoming.receive()
        assert delivery.remote == honest.local_id and delivery.data == payload


def test_a_thousand_streams_from_one_peer_are_refused_while_updates_flow() -> None:
    async def main() -> None:
        async with (
            loopback_transports([Identity.for_peer(31, i) for i in range(2)], CONFIG) as (
                victim,
                honest,
            ),
            _attacker() as attacker,
        ):
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim.listen_addrs[0])))
            target = ID.from_base58(victim.local_id)
            flood = _Flood(attacker, target)
            with trio.fail_after(45):
                async with trio.open_nursery() as nursery:
                    for _ in range(ATTACK_STREAMS):
                        nursery.start_soon(flood.hold_one)
                    # while the victim holds the streams it admitted, an honest neighbour's
                    # updates still arrive
                    await victim.wait_counter("refused.update_streams_per_peer", 100)
                    await _honest_updates_arrive(victim, honest, 3)
                    await flood.wait_ended(ATTACK_STREAMS - CONFIG.max_update_streams_per_peer)
                    # at most the cap is held (exactly the cap on a quiet machine; under heavy load the
                    # connection itself may drop, releasing them: CI once saw 0 of 4 at this instant)
                    held = victim.update_streams.by_peer.get(str(attacker.get_id()), 0)  # type: ignore[attr-defined]
                    assert held <= CONFIG.max_update_streams_per_peer
                    nursery.cancel_scope.cancel()
            refused = sum(n for key, n in victim.counters.items() if key.startswith("refused."))
            assert refused >= ATTACK_STREAMS - CONFIG.max_update_streams_per_peer
            assert set(k for k in victim.counters if k.startswith("refused.")) <= {
                "refused.streams_per_peer",
                "refused.update_streams_per_peer",
            }
            # nothing beyond the caps was ever held open: the attacker's share plus the few streams of
            # the honest neighbour (its update, hello, identify, gossip)
            honest_streams = CONFIG.parallel_sends_per_peer + 4
            assert victim.update_streams.peak <= CONFIG.max_update_streams_per_peer + honest_streams
            assert victim.streams.peak <= CONFIG.max_streams_per_peer + honest_streams

    trio.run(main)


def test_frames_beyond_a_peers_bytes_in_flight_are_refused() -> None:
    async def main() -> None:
        config = dataclasses.replace(CONFIG, max_update_bytes_per_peer=1_500_000)
        async with (
            loopback_transports([Identity.for_peer(33, 0)], config, mesh=False) as (victim,),
            _attacker() as attacker,
        ):
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim.listen_addrs[0])))
            flood = _Flood(attacker, ID.from_base58(victim.local_id))
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood.hold_one)  # 1 MB announced: within the budget
                    nursery.start_soon(flood.hold_one)  # 1 MB more: over it
                    await victim.wait_counter("recv_fail.over_budget")
                    await flood.wait_ended(1)
                    assert victim.update_bytes.by_peer[str(attacker.get_id())] == 1_000_000  # type: ignore[attr-defined]
                    nursery.cancel_scope.cancel()

    trio.run(main)


def test_many_silent_connections_do_not_lock_out_a_new_neighbour() -> None:
    # 200 pass; at 300, py-libp2p 0.8.1 holds ~250 handshakes in progress for its 10 s upgrade timeout
    # (the resource manager's cap on pending inbound connections is not applied before the upgrade)
    # and a new neighbour's dial times out behind them: a known gap, not a guarantee of this test
    async def main() -> None:
        identities = [Identity.for_peer(32, i) for i in range(2)]
        async with loopback_transports(identities, CONFIG, mesh=False) as (victim, honest):
            port = int(multiaddr.Multiaddr(victim.listen_addrs[0]).value_for_protocol("tcp"))
            sockets = []
            with trio.fail_after(30):
                for _ in range(
                    200
                ):  # TCP connections that never start a handshake (see the note above)
                    sockets.append(await trio.open_tcp_stream("127.0.0.1", port))
                assert await honest.connect(victim.listen_addrs[0])
                await _honest_updates_arrive(victim, honest, 3)
            for sock in sockets:
                await sock.aclose()

    trio.run(main)


def test_open_streams_refuse_beyond_each_cap_and_free_slots_on_release() -> None:
    streams = OpenStreams("s", per_peer=2, total=3)
    assert [streams.admit("a"), streams.admit("a"), streams.admit("a")] == [
        None,
        None,
        "s_per_peer",
    ]
    assert streams.admit("b") is None
    assert streams.admit("c") == "s_total"
    streams.release("a")
    assert streams.admit("c") is None
    assert streams.peak == 3 and streams.open_count() == 3
