"""Stopping a daemon is not a failure because py-libp2p's own tasks trip over the closed host on the way
out (measured in the partition test: gossipsub's graft asked the closed TCP listener for its address and
raised EBADF out of the transport, and `join` exited 1 after "stopped at round 8")."""

from __future__ import annotations

import hashlib
import logging

import pytest
import trio

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

CONFIG = Libp2pConfig(run_digest=hashlib.sha256(b"test-net-shutdown").digest(), listen_addrs=("/ip4/127.0.0.1/tcp/0",))


def test_an_error_from_libp2p_while_stopping_is_counted_not_raised() -> None:
    transport = Libp2pTransport(Identity.for_peer(9, 0), CONFIG)
    close = transport._host.close

    async def close_then_trip() -> None:
        await close()
        raise OSError(9, "Bad file descriptor")  # what gossipsub's late graft raised

    transport._host.close = close_then_trip  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert transport.counters["shutdown_error"] == 1


def test_an_error_from_libp2p_while_serving_still_raises() -> None:
    transport = Libp2pTransport(Identity.for_peer(9, 1), CONFIG)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            transport._pubsub.manager.run_task(_fails)  # a libp2p task failing mid-run, not at shutdown

    async def _fails() -> None:
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(BaseException) as caught:
        trio.run(main)
    assert "Bad file descriptor" in repr(caught.value) or caught.group_contains(OSError)
