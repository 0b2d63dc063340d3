"""Small shields between py-libp2p and untrusted peers: handlers that never raise into the host,
bounded best-effort cleanup, and connection notifications that never block libp2p."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import INotifee

log = logging.getLogger(__name__)


class ConnectionEvents(INotifee):
    """Forwards new connections to the transport without ever blocking libp2p."""

    def __init__(
        self, on_connected: Callable[[str], None], on_disconnected: Callable[[], None]
    ) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: Any, conn: Any) -> None:
        try:
            self._on_connected(conn.muxed_conn.peer_id.to_base58())
        except Exception:
            log.debug("connection notification failed", exc_info=True)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._on_disconnected()

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


async def no_auto_connect() -> None:
    pass


async def quietly(action: Callable[[], Awaitable[object]], timeout_s: float = 1.0) -> None:
    """Best-effort cleanup towards a remote: bounded in time, never raises."""
    with trio.move_on_after(timeout_s), contextlib.suppress(Exception):
        await action()


async def hard_close(conn: Any, timeout_s: float = 1.0) -> None:
    """Close a swarm connection even when its writers are stuck. py-libp2p closes a yamux connection by
    first writing GO_AWAY, which waits for the connection's write lock; a writer blocked on a full socket
    (the remote stopped reading, or a partition drops its ACKs) holds that lock until TCP gives up,
    minutes later. Closing the socket underneath first wakes every blocked writer with an error, and
    the orderly close after it no longer waits."""
    secured = getattr(getattr(conn, "muxed_conn", None), "secured_conn", None)
    if secured is not None:
        await quietly(secured.close, timeout_s)
    await quietly(conn.close, timeout_s)


def guarded(handler: Callable[[Any], Awaitable[None]], count: Callable[[str], None], name: str):
    """A stream handler from which no exception escapes into the host's nursery (defects 1, 2)."""

    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            count(f"handler_error.{name}")
            log.debug("%s handler failed on remote input: %r", name, exc)
            await quietly(stream.reset)

    return guarded
