"""Several libp2p transports in one process on 127.0.0.1: for tests, benchmarks and libp2p simulations."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire.identity import Identity


@asynccontextmanager
async def loopback_transports(
    identities: Sequence[Identity],
    config: Libp2pConfig,
    *,
    mesh: bool = True,
    timeout_s: float = 30.0,
) -> AsyncIterator[list[Libp2pTransport]]:
    """Start one transport per identity; with `mesh`, connect every pair and wait until each sees all
    others as neighbours. Everything closes when the block exits."""
    # a mesh is wired by us, not discovered: no slot is kept back for sampled candidates (the last host
    # would otherwise refuse the inbound links beyond its open slots)
    rules = dataclasses.replace(config.membership, sampled_share=0.0) if mesh else config.membership
    config = dataclasses.replace(config, listen_addrs=("/ip4/127.0.0.1/tcp/0",), membership=rules)
    transports = [Libp2pTransport(identity, config) for identity in identities]
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        if mesh:
            with trio.fail_after(timeout_s):
                async with trio.open_nursery() as dials:
                    for i, dialer in enumerate(transports):
                        for target in transports[i + 1 :]:
                            dials.start_soon(dialer.connect, target.listen_addrs[0])
                async with trio.open_nursery() as waits:
                    for transport in transports:
                        waits.start_soon(transport.wait_neighbours, len(transports) - 1)
        yield transports
        nursery.cancel_scope.cancel()
