"""Many simultaneous large exchanges in both directions must all finish: no yamux stall (defect 4), no
lost update."""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pytest
import trio

from p2pfed.net.libp2p_transport import Libp2pConfig
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Accepted, Identity, Limits, Schema, open_envelope, seal

pytestmark = [pytest.mark.network, pytest.mark.slow]
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-load").digest()
EXCHANGES = 200
SIZES_MB = (0.5, 1.0, 4.0)


def test_200_simultaneous_bidirectional_exchanges_complete() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.choice(len(SIZES_MB), size=EXCHANGES, p=[0.75, 0.2, 0.05])
    identities = [Identity.for_peer(31, i) for i in range(4)]
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    # a few envelopes per (sender, size), reused: the receiver finds each by its digest
    catalogue: dict[bytes, tuple[str, Schema]] = {}
    envelopes: dict[tuple[int, int], bytes] = {}
    for sender, identity in enumerate(identities):
        for size_index, megabytes in enumerate(SIZES_MB):
            tensors = {"w": rng.standard_normal(int(megabytes * 2**20) // 4).astype(np.float32)}
            data = seal(identity, run_digest=RUN, round=0, step=size_index, tensors=tensors)
            envelopes[sender, size_index] = data
            catalogue[hashlib.sha256(data).digest()] = (
                identity.peer_id,
                Schema.from_tensors(tensors),
            )
    expected = {identity.peer_id: 0 for identity in identities}
    for exchange in range(EXCHANGES):
        a, b = pairs[exchange % len(pairs)]
        expected[identities[a].peer_id] += 1
        expected[identities[b].peer_id] += 1

    async def main() -> None:
        config = Libp2pConfig(run_digest=RUN, incoming_capacity=EXCHANGES * 2)
        async with loopback_transports(identities, config) as transports:
            failures: list[str] = []

            async def one_way(sender: int, receiver: int, size_index: int) -> None:
                ok = await transports[sender].send(
                    transports[receiver].local_id, envelopes[sender, size_index]
                )
                if not ok:
                    failures.append(f"{sender}->{receiver}")

            async def receive(transport, count: int) -> None:
                for _ in range(count):
                    delivery = await transport.incoming.receive()
                    sender, schema = catalogue[hashlib.sha256(delivery.data).digest()]
                    assert delivery.remote == sender
                    result = open_envelope(
                        delivery.data,
                        remote=delivery.remote,
                        run_digest=RUN,
                        schema=schema,
                        limits=Limits(),
                        round_window=None,
                        now=None,
                    )
                    assert isinstance(result, Accepted)

            started = time.perf_counter()
            async with trio.open_nursery() as receivers:
                for transport in transports:
                    receivers.start_soon(receive, transport, expected[transport.local_id])
                with trio.fail_after(180):
                    async with trio.open_nursery() as senders:
                        for exchange in range(EXCHANGES):
                            a, b = pairs[exchange % len(pairs)]
                            senders.start_soon(one_way, a, b, int(sizes[exchange]))
                            senders.start_soon(one_way, b, a, int(sizes[exchange]))
                # No exchange may stall past the deadline (fail_after above), and none may be lost: a stalled
                # connection is dropped and the send retried on a fresh one; the peer's other sends, whose
                # streams can no longer open on the reset connection, drop it too and retry after a pause.
                assert failures == [], "; ".join(
                    str({k: v for k, v in t.counters.items() if "fail" in k or "drop" in k})
                    for t in transports
                )
                receivers.cancel_scope.deadline = trio.current_time() + 30  # drain what was acked
            elapsed = time.perf_counter() - started
            total = sum(t.counters["bytes_in"] for t in transports)
            retried = sum(t.counters["connections_dropped"] for t in transports)
            print(
                f"\n{EXCHANGES} exchanges: {total / 1e6:.0f} MB in {elapsed:.1f} s, {retried} connections dropped, "
                f"{len(failures)} sends failed"
            )

    trio.run(main)
