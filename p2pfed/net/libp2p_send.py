"""Sending one update frame to a libp2p peer: bounded in time, retried on a fresh connection when a
stream stalls (py-libp2p 0.8.1 defects 4 and 7, see the project's notes), never raising for what the
remote did."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID

from p2pfed.net.framing import FrameError, write_frame
from p2pfed.net.libp2p_guards import quietly

if TYPE_CHECKING:
    from p2pfed.net.libp2p_transport import Libp2pConfig

log = logging.getLogger(__name__)

UPDATE_PROTOCOL = TProtocol("/p2pfed/update/1.0.0")


class UpdateSender:
    """One length-prefixed, acknowledged frame per stream (`UPDATE_PROTOCOL`), a few at a time per peer."""

    def __init__(self, host: IHost, config: Libp2pConfig, count: Callable[..., None]) -> None:
        self._host = host
        self._config = config
        self._count = count
        self._send_slots: dict[str, trio.Semaphore] = {}

    async def send(self, to: str, data: bytes) -> bool:
        """Deliver one frame to `to`. Bounded in time; False (and a counter) on any failure."""
        if len(data) > self._config.max_frame_bytes:
            self._count("send_fail.oversized")
            return False
        try:
            peer = ID.from_base58(to)
        except Exception:
            self._count("send_fail.bad_peer_id")
            return False
        slots = self._send_slots.setdefault(
            to, trio.Semaphore(self._config.parallel_sends_per_peer)
        )
        with trio.move_on_after(self._config.frame_timeout_s) as scope:
            async with slots:
                return await self._send_with_retry(to, peer, data)
        if scope.cancelled_caught:
            self._count("send_fail.queue_timeout")
        return False

    async def _send_with_retry(self, to: str, peer: ID, data: bytes) -> bool:
        for attempt in range(self._config.send_attempts):
            error = await self._send_once(peer, data)
            if error is None:
                self._count("frames_out")
                self._count("bytes_out", len(data))
                return True
            self._count(f"send_fail.{error}")
            log.debug("send to %s failed (%s), attempt %d", to, error, attempt + 1)
            if error == "dial" or attempt + 1 == self._config.send_attempts:
                break
            await trio.sleep(self._config.retry_backoff_s * 2**attempt)  # let a reset settle
        return False

    async def _send_once(self, peer: ID, data: bytes) -> FrameError | str | None:
        network = self._host.get_network()
        if not any(not c.is_closed for c in network.get_connections(peer)):
            if not self._known(peer):
                return "dial"
            with trio.move_on_after(self._config.dial_timeout_s):
                try:
                    await network.dial_peer(peer)  # host.connect would trust a closed connection
                except Exception as exc:
                    log.debug("redial of %s failed: %r", peer, exc)
            if not any(not c.is_closed for c in network.get_connections(peer)):
                self._count("dial_fail.redial")
                return "dial"
        stream = None
        with trio.move_on_after(self._config.open_timeout_s):
            try:
                stream = await self._host.new_stream(peer, [UPDATE_PROTOCOL])
            except SwarmException as exc:
                log.debug("new stream to %s failed: %r (from %r)", peer, exc, exc.__cause__)
                if exc.__cause__ is not None:  # every connection to the peer failed to open one
                    await self._drop_dead_connections(peer)
                    return "dead_connection"
            except Exception as exc:
                log.debug("new stream to %s failed: %r (from %r)", peer, exc, exc.__cause__)
        if stream is None:
            return "negotiate"
        error = await write_frame(
            stream, data, stall_s=self._config.stall_timeout_s, total_s=self._config.frame_timeout_s
        )
        await quietly(stream.close if error is None else stream.reset)
        if error in (FrameError.STALLED, FrameError.TIMEOUT, FrameError.NO_ACK):
            await self._drop_connection(peer, stream.muxed_conn)
        return error

    async def _drop_connection(self, peer: ID, muxed_conn: Any) -> None:
        """Close the connection a frame stalled on, unless another send already replaced it: under
        simultaneous large writes both ways a yamux connection can deadlock for good (defect 4)."""
        for conn in self._host.get_network().get_connections(peer):
            if conn.muxed_conn is muxed_conn:
                self._count("connections_dropped")
                await quietly(conn.close, self._config.close_timeout_s)

    async def _drop_dead_connections(self, peer: ID) -> None:
        """Close the connections to `peer` that can no longer open a stream. After a reset (the remote
        dropped a stalled connection) libp2p still lists them as open for a while, and every retry
        would pick them again; once closed, the next attempt dials afresh."""
        for conn in list(self._host.get_network().get_connections(peer)):
            self._count("connections_dropped")
            await quietly(conn.close, self._config.close_timeout_s)

    def _known(self, peer: ID) -> bool:
        try:
            return bool(self._host.get_peerstore().addrs(peer))
        except Exception:
            return False
