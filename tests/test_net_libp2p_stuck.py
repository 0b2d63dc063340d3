"""A connection whose writes block for good (the remote stopped reading, or a partition drops every
packet and TCP has not given up yet) must cost a send its caller's deadline, not minutes.

py-libp2p cleans up a failed stream open under a shield and that cleanup waits for the connection's
write lock, so before the fix a gossip step to a cut-off neighbour hung until TCP gave up (the
partition test of tests/test_netns_faults.py found it). Here, on 127.0.0.1, the sender's stream
opens to one peer hang the way py-libp2p's do there: shielded, until the connection is closed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Identity, seal

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-stuck").digest()
CONFIG = Libp2pConfig(
    run_digest=RUN, dial_timeout_s=1.0, stall_timeout_s=1.0, open_timeout_s=1.0, close_timeout_s=1.0
)
STEP_S = 2.0  # the caller's deadline for one send, like a gossip step's
STEPS = 4
TCP_GIVES_UP_S = 30.0  # minutes on a real cut link; here only long enough to fail, not hang, unfixed code


def stick_stream_opens(transport: Libp2pTransport, peer: str) -> Callable[[], None]:
    """From now on `transport`'s stream opens to `peer` hang as py-libp2p's do on a connection whose
    socket is full: in a shielded cleanup (`BasicHost.new_stream` resets the failed stream under
    `CancelScope(shield=True)`, and the reset waits for a write lock held by a writer blocked on the
    socket). Only closing the connection underneath releases them (or TCP giving up). Returns the undo."""
    host = transport._host
    closed = trio.Event()
    for conn in host.get_network().get_connections(ID.from_base58(peer)):
        secured = conn.muxed_conn.secured_conn  # type: ignore[attr-defined]
        close = secured.close

        async def close_and_release(close: Callable[[], Awaitable[None]] = close) -> None:
            closed.set()
            await close()

        secured.close = close_and_release
    new_stream = host.new_stream

    async def stuck_new_stream(peer_id: ID, protocols: Sequence[TProtocol]) -> object:
        if peer_id.to_base58() != peer:
            return await new_stream(peer_id, protocols)
        with trio.CancelScope(shield=True), trio.move_on_after(TCP_GIVES_UP_S):
            await closed.wait()
        raise SwarmException("connection closed")

    host.new_stream = stuck_new_stream  # type: ignore[method-assign,assignment]

    def undo() -> None:
        host.new_stream = new_stream  # type: ignore[method-assign]

    return undo


def test_sends_to_a_stuck_connection_end_at_the_callers_deadline_and_the_others_still_arrive() -> None:
    async def main() -> None:
        identities = [Identity.for_peer(31, i) for i in range(3)]
        async with loopback_transports(identities, CONFIG) as (sender, cut, healthy):
            heal = stick_stream_opens(sender, cut.local_id)
            envelope = seal(
                sender.identity, run_digest=RUN, round=0, step=0, tensors={"w": np.ones(50_000, np.float32)}
            )
            delivered: dict[str, list[bool]] = {cut.local_id: [], healthy.local_id: []}

            async def send(to: str) -> None:
                ok = False
                with trio.move_on_after(STEP_S):
                    ok = await sender.send(to, envelope)
                delivered[to].append(ok)

            for _ in range(STEPS):
                # Before the fix the first step never ended: this bound failed after 12 s.
                with trio.fail_after(STEP_S + 10):
                    async with trio.open_nursery() as nursery:
                        for to in delivered:
                            nursery.start_soon(send, to)
            with trio.fail_after(10):
                for _ in range(STEPS):
                    assert (await healthy.incoming.receive()).remote == sender.local_id

            assert delivered == {cut.local_id: [False] * STEPS, healthy.local_id: [True] * STEPS}
            # the stuck connection was closed under its writers ...
            assert sender.counters["connections_force_closed"] >= 1
            # ... so once the link heals, the next send dials afresh and arrives
            heal()
            with trio.fail_after(20):
                assert await sender.send(cut.local_id, envelope)
                assert (await cut.incoming.receive()).remote == sender.local_id

    trio.run(main)
