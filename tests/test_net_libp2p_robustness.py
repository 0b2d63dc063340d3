"""A hostile or broken remote must not kill, hang or fool a libp2p transport."""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import multiaddr
import numpy as np
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import encode_uvarint

from p2pfed.net.libp2p_transport import UPDATE_PROTOCOL, Libp2pConfig, Libp2pTransport
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Accepted, Identity, Limits, Schema, open_envelope, seal

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-robustness").digest()
CONFIG = Libp2pConfig(run_digest=RUN, dial_timeout_s=2.0, stall_timeout_s=3.0)
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


@asynccontextmanager
async def _attacker() -> AsyncIterator[object]:
    """A plain libp2p host that speaks whatever bytes it likes."""
    host = new_host(key_pair=create_new_key_pair(b"\x07" * 32), listen_addrs=[LOOPBACK])
    async with host.run(listen_addrs=[LOOPBACK]):
        try:
            yield host
        finally:
            with trio.move_on_after(5):
                await host.close()


async def _still_exchanges(victim: Libp2pTransport, honest: Libp2pTransport) -> None:
    """Both directions still work after the abuse, verified end to end."""
    tensors = {"w": np.arange(1000, dtype=np.float32)}
    schema = Schema.from_tensors(tensors)
    with trio.fail_after(20):
        for sender, receiver in ((honest, victim), (victim, honest)):
            envelope = seal(sender.identity, run_digest=RUN, round=0, step=0, tensors=tensors)
            assert await sender.send(receiver.local_id, envelope)
            delivery = await receiver.incoming.receive()
            result = open_envelope(
                delivery.data,
                remote=delivery.remote,
                run_digest=RUN,
                schema=schema,
                limits=Limits(),
                round_window=None,
                now=None,
            )
            assert isinstance(result, Accepted) and result.sender == sender.local_id


def _garbage(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        encode_uvarint(64) + b"\xff" * 64,  # framed, not protobuf: killed the host (defect 1)
        rng.bytes(4096),
        encode_uvarint(1000) + rng.bytes(10),  # truncated frame
        encode_uvarint(1 << 40) + rng.bytes(100),  # absurd length
        struct.pack(">Q", 1 << 62) + rng.bytes(100),
        b"",
    ]


def test_garbage_on_every_protocol_does_not_kill_the_host() -> None:
    async def main() -> None:
        async with (
            loopback_transports([Identity.for_peer(21, i) for i in range(2)], CONFIG) as (
                victim,
                honest,
            ),
            _attacker() as attacker,
        ):
            protocols = sorted(str(p) for p in victim._host.get_mux().handlers if p is not None)
            assert {"/meshsub/1.0.0", "/meshsub/1.1.0", "/meshsub/1.2.0"} <= set(protocols)
            assert {"/ipfs/id/1.0.0", str(UPDATE_PROTOCOL)} <= set(protocols)
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim.listen_addrs[0])))
            peer = ID.from_base58(victim.local_id)
            for index, protocol in enumerate(protocols):
                for blob in _garbage(index):
                    with trio.move_on_after(5):
                        try:
                            stream = await attacker.new_stream(peer, [TProtocol(protocol)])
                            await stream.write(blob)
                            await stream.close()
                        except Exception:
                            pass  # the victim may reset us: that is its right
            # raw TCP garbage on the listening port
            port = int(multiaddr.Multiaddr(victim.listen_addrs[0]).value_for_protocol("tcp"))
            for blob in (b"GET / HTTP/1.1\r\n\r\n", b"/multistream/1.0.0\n" * 3, b"\x00" * 5000):
                with trio.move_on_after(2):
                    tcp = await trio.open_tcp_stream("127.0.0.1", port)
                    await tcp.send_all(blob)
                    await tcp.aclose()
            await _still_exchanges(victim, honest)
            assert victim.counters["recv_fail.pubsub_garbage"] >= 1  # the meshsub guard was hit

    trio.run(main)


def test_truncated_and_oversized_frames_are_detected_and_dropped() -> None:
    async def main() -> None:
        config = Libp2pConfig(run_digest=RUN, max_frame_bytes=2_000_000, stall_timeout_s=3.0)
        async with (
            loopback_transports([Identity.for_peer(22, i) for i in range(2)], config) as (
                victim,
                honest,
            ),
            _attacker() as attacker,
        ):
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim.listen_addrs[0])))
            peer = ID.from_base58(victim.local_id)
            # a sender killed mid-frame: the prefix promises 1 MB, 100 kB arrive, then EOF
            stream = await attacker.new_stream(peer, [UPDATE_PROTOCOL])
            await stream.write(struct.pack(">Q", 1_000_000) + b"\x01" * 100_000)
            await stream.close()
            stream = await attacker.new_stream(peer, [UPDATE_PROTOCOL])
            await stream.write(struct.pack(">Q", 3_000_000) + b"\x01" * 1000)
            with trio.fail_after(10):
                await victim.wait_counter("recv_fail.truncated")
                await victim.wait_counter("recv_fail.oversized")
            assert victim.counters["frames_in"] == 0
            assert await honest.send(victim.local_id, b"\x02" * 1_500_000)
            assert not await honest.send(victim.local_id, b"\x02" * 2_500_000)  # over our own cap
            delivery = victim.incoming.receive_nowait()
            assert delivery.data == b"\x02" * 1_500_000 and delivery.remote == honest.local_id

    trio.run(main)


def test_a_silent_listener_costs_seconds_not_minutes() -> None:
    async def main() -> None:
        async def never_speak(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, never_speak, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            async with loopback_transports([Identity.for_peer(23, 0)], CONFIG, mesh=False) as (
                transport,
            ):
                ghost = Identity.for_peer(23, 1).peer_id
                started = time.perf_counter()
                assert not await transport.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{ghost}")
                assert not await transport.send(ghost, b"hello")
                assert time.perf_counter() - started < 4 * CONFIG.dial_timeout_s
                assert transport.counters["dial_fail.timeout"] >= 1
            nursery.cancel_scope.cancel()

    trio.run(main)
