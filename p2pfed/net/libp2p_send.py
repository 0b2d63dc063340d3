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
from p2pfed.net.libp2p_guards import hard_close, quietly

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # see libp2p_transport

    from p2pfed.net.libp2p_transport import Libp2pConfig

log = logging.getLogger(__name__)

UPDATE_PROTOCOL = TProtocol("/p2pfed/update/1.0.0")


class UpdateSender:
    """One length-prefixed, acknowledged frame per stream (`UPDATE_PROTOCOL`), a few at a time per peer.

    Deliveries run in `nursery` (the transport's, once it runs), not in the caller's task: py-libp2p
    cleans up a failed stream open under a shield (`BasicHost.new_stream` resets the stream in a
    shielded `finally`), and that reset waits for the connection's write lock, which a writer blocked on
    an unreachable peer holds until TCP gives up. A caller's deadline then could not end its send: in a
    partition every gossip step lasted minutes, not its deadline. Now the caller stops waiting at its
    deadline, and a watchdog closes the stuck connection's socket, which ends the delivery too."""

    def __init__(self, host: IHost, config: Libp2pConfig, count: Callable[..., None]) -> None:
        self._host = host
        self._config = config
        self._count = count
        self._send_slots: dict[str, trio.Semaphore] = {}
        self.nursery: trio.Nursery | None = None

    async def send(self, to: str, data: bytes) -> bool:
        """Deliver one frame to `to`. Bounded in time; False (and a counter) on any failure. Cancelling
        the caller abandons the wait at once, whatever py-libp2p is stuck in."""
        if len(data) > self._config.max_frame_bytes:
            self._count("send_fail.oversized")
            return False
        try:
            peer = ID.from_base58(to)
        except Exception:
            self._count("send_fail.bad_peer_id")
            return False
        if self.nursery is None:  # the transport is not running: nothing could carry the frame
            self._count("send_fail.not_running")
            return False
        delivered: list[bool] = []
        done = trio.Event()
        self.nursery.start_soon(self._deliver, to, peer, data, delivered, done)
        await done.wait()
        return delivered[0]

    async def _deliver(self, to: str, peer: ID, data: bytes, delivered: list[bool], done: trio.Event) -> None:
        slots = self._send_slots.setdefault(to, trio.Semaphore(self._config.parallel_sends_per_peer))
        try:
            with trio.move_on_after(self._config.frame_timeout_s) as scope:
                async with slots:
                    delivered.append(await self._send_with_retry(to, peer, data))
            if scope.cancelled_caught:
                self._count("send_fail.queue_timeout")
        finally:
            if not delivered:
                delivered.append(False)
            done.set()

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
        async with trio.open_nursery() as nursery:
            watchdog = await nursery.start(self._close_if_stuck, peer, self._config.open_timeout_s)
            try:
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
            finally:
                watchdog.cancel()
        if stream is None:
            return "negotiate"
        error = await write_frame(
            stream, data, stall_s=self._config.stall_timeout_s, total_s=self._config.frame_timeout_s
        )
        await quietly(stream.close if error is None else stream.reset)
        if error in (FrameError.STALLED, FrameError.TIMEOUT, FrameError.NO_ACK):
            await self._drop_connection(peer, stream.muxed_conn)
        return error

    async def _close_if_stuck(
        self, peer: ID, timeout_s: float, *, task_status: TaskStatus[trio.CancelScope]
    ) -> None:
        """Hard-close `peer`'s connections if the stream open we guard outlives its deadline by the
        close timeout: py-libp2p's shielded cleanup is holding it on a dead connection. Shielded itself,
        so the deadline it backs up cannot cancel it; the guarded code cancels it when done."""
        with trio.CancelScope(shield=True) as scope:
            task_status.started(scope)
            await trio.sleep(timeout_s + self._config.close_timeout_s)
            self._count("connections_force_closed")
            log.info("a stream open to %s is stuck past its deadline; closing its connections", peer)
            for conn in list(self._host.get_network().get_connections(peer)):
                await hard_close(conn, self._config.close_timeout_s)

    async def _drop_connection(self, peer: ID, muxed_conn: Any) -> None:
        """Close the connection a frame stalled on, unless another send already replaced it: under
        simultaneous large writes both ways a yamux connection can deadlock for good (defect 4)."""
        for conn in self._host.get_network().get_connections(peer):
            if conn.muxed_conn is muxed_conn:
                self._count("connections_dropped")
                await hard_close(conn, self._config.close_timeout_s)

    async def _drop_dead_connections(self, peer: ID) -> None:
        """Close the connections to `peer` that can no longer open a stream. After a reset (the remote
        dropped a stalled connection) libp2p still lists them as open for a while, and every retry
        would pick them again; once closed, the next attempt dials afresh."""
        for conn in list(self._host.get_network().get_connections(peer)):
            self._count("connections_dropped")
            await hard_close(conn, self._config.close_timeout_s)

    def _known(self, peer: ID) -> bool:
        try:
            return bool(self._host.get_peerstore().addrs(peer))
        except Exception:
            return False
