"""Two defects the lossy namespace network (test_netns_faults.py) exposed, reproduced on 127.0.0.1:
a failed bootstrap dial left a peer alone for good, and a lost hello left a connection that was never
greeted again, so the two peers never became neighbours."""

from __future__ import annotations

import hashlib
import logging
import socket
from typing import Any

import pytest
import trio

from p2pfed.net.libp2p_discovery import Discovery
from p2pfed.net.libp2p_guards import quietly
from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-netns-retry").digest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(**kwargs: Any) -> Libp2pConfig:
    return Libp2pConfig(run_digest=RUN, dial_timeout_s=2.0, bootstrap_retry_s=0.5, **kwargs)


def test_a_peer_started_before_its_bootstrap_peer_joins_it_once_it_is_up() -> None:
    first, late = Identity.for_peer(16, 0), Identity.for_peer(16, 1)
    port = free_port()
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{late.peer_id}"

    async def main() -> None:
        early = Libp2pTransport(first, config(bootstrap=(address,)))
        async with trio.open_nursery() as nursery:
            await nursery.start(early.run)
            with trio.fail_after(20):
                await early.wait_counter("dial_fail.error")  # the first dial was refused: nobody listens
            assert early.neighbours() == []
            bootstrap = Libp2pTransport(late, config(listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",)))
            await nursery.start(bootstrap.run)
            with trio.fail_after(20):
                await early.wait_neighbours(1)
                await bootstrap.wait_neighbours(1)
            assert early.neighbours() == [late.peer_id]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_peers_whose_first_hellos_are_lost_still_become_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = Discovery._handle_hello
    lost: set[int] = set()

    async def lose_the_first_hello(self: Discovery, stream: Any) -> None:
        """Each host loses the first hello it receives, as dropped packets would stall it."""
        if id(self) not in lost:
            lost.add(id(self))
            await quietly(stream.reset)
            return
        await answer(self, stream)

    monkeypatch.setattr(Discovery, "_handle_hello", lose_the_first_hello)
    a, b = Identity.for_peer(16, 2), Identity.for_peer(16, 3)

    async def main() -> None:
        host = Libp2pTransport(a, config())
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            joiner = Libp2pTransport(b, config(bootstrap=(host.listen_addrs[0],)))
            await nursery.start(joiner.run)
            with trio.fail_after(30):
                await joiner.wait_neighbours(1)
                await host.wait_neighbours(1)
            assert len(lost) == 2  # both first hellos were lost
            assert joiner.neighbours() == [a.peer_id] and host.neighbours() == [b.peer_id]
            nursery.cancel_scope.cancel()

    trio.run(main)
