"""Caps on what one peer, and all peers together, may hold open on this host at once.

Connections are capped by libp2p's resource manager (`connection_limits`): established per peer and in
total, inbound handshakes in progress. Its stream limit falls short for a Byzantine network: it counts
streams in total only (no per-peer share, so one peer can take every slot) and, once full, it makes
new streams wait for a slot instead of refusing them. The caps here are per peer and in total, and a
stream beyond them is reset at once, with the reason counted (`refused.<name>_per_peer`,
`refused.<name>_total`) and logged; nothing waits in a queue. A frame whose announced length would take
its sender's bytes in flight above their cap is refused before its body is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from libp2p.rcmgr import ResourceManager, new_resource_manager
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults

from p2pfed.net.libp2p_guards import quietly

log = logging.getLogger(__name__)


def resource_manager(*, per_peer: int, total: int, pending_inbound: int) -> ResourceManager:
    """libp2p's resource manager with our connection caps (the others stay at libp2p's defaults)."""
    limits = (
        new_connection_limits_with_defaults()
        .with_max_established_per_peer(per_peer)
        .with_max_established_total(total)
        .with_max_pending_inbound(pending_inbound)
    )
    return new_resource_manager(connection_limits=limits)


class OpenStreams:
    """How many inbound streams of one kind are open, per peer and in total, against two caps."""

    def __init__(self, name: str, *, per_peer: int, total: int) -> None:
        self.name = name
        self.per_peer = per_peer
        self.total = total
        self.by_peer: Counter[str] = Counter()
        self.peak = 0  # most open at once since start: what the caps held the host to

    def open_count(self) -> int:
        return sum(self.by_peer.values())

    def admit(self, peer: str) -> str | None:
        """Take a slot for a stream from `peer`; the refusal reason if there is none left."""
        if self.by_peer[peer] >= self.per_peer:
            return f"{self.name}_per_peer"
        if self.open_count() >= self.total:
            return f"{self.name}_total"
        self.by_peer[peer] += 1
        self.peak = max(self.peak, self.open_count())
        return None

    def release(self, peer: str) -> None:
        self.by_peer[peer] -= 1
        if self.by_peer[peer] <= 0:
            del self.by_peer[peer]


class BytesInFlight:
    """Announced frame bytes being read at once, per peer, against a cap: the memory one peer can make
    us hold before its frames are verified."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self.by_peer: Counter[str] = Counter()

    @contextmanager
    def budget(self, peer: str) -> Iterator[Callable[[int], bool]]:
        """A `reserve(length)` for one frame from `peer`; what it reserved is freed on exit."""
        reserved = 0

        def reserve(length: int) -> bool:
            nonlocal reserved
            if self.by_peer[peer] + length > self.per_peer:
                return False
            self.by_peer[peer] += length
            reserved = length
            return True

        try:
            yield reserve
        finally:
            self.by_peer[peer] -= reserved
            if self.by_peer[peer] <= 0:
                del self.by_peer[peer]


def capped(
    handler: Callable[[Any], Awaitable[None]],
    streams: OpenStreams,
    count: Callable[[str], None],
) -> Callable[[Any], Awaitable[None]]:
    """A stream handler that runs only while `streams` has a slot for the remote; else resets."""

    async def capped(stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        refused = streams.admit(peer)
        if refused is not None:
            count(f"refused.{refused}")
            log.debug("stream from %s refused: %s", peer, refused)
            await quietly(stream.reset)
            return
        try:
            await handler(stream)
        finally:
            streams.release(peer)

    return capped
