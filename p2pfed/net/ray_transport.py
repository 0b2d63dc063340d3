"""A transport between Ray actors: the peers of one actor talk over trio channels, those of two actors
through an actor call that carries the same signed envelope bytes.

Each actor (see `p2pfed.sims.ray_sim`) owns one `RayNetwork` and runs its peers on trio in one thread;
Ray calls the actor's `deliver` method from its own threads, and `deliver_from_thread` hands the bytes to
the trio loop. A send to another actor waits (in a worker thread, never on the loop) until that actor
has queued the bytes, so `send` returns True only once they reached the receiver's inbox, as in memory.
The actor handles are given by the actor; only their `deliver.remote(sender, to, data)` is called, and
ray is imported only by the thread that waits for an answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pfed.net.memory import LinkStats
from p2pfed.net.transport import Delivery

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # how long a delivery waits for the receiving actor's loop to start


class RayNetwork:
    """The switchboard of one actor: its own peers' transports, and a route to every other peer's actor."""

    def __init__(self, *, capacity: int = 1024) -> None:
        self.capacity = capacity  # messages a peer's inbox holds before further ones are dropped
        self._peers: dict[str, RayTransport] = {}
        self._routes: Mapping[str, Any] = {}  # peer ID -> the actor handle that holds it
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._closed = False

    def add(self, peer_id: str, neighbours: list[str]) -> RayTransport:
        transport = RayTransport(self, peer_id, list(neighbours))
        self._peers[peer_id] = transport
        return transport

    def route(self, routes: Mapping[str, Any]) -> None:
        """Where every peer of the run lives: peer ID -> its actor's handle."""
        self._routes = dict(routes)

    def open(self) -> None:
        """Call on the trio loop, before the peers run: deliveries from other actors are accepted from now."""
        self._token = trio.lowlevel.current_trio_token()
        self._ready.set()

    def close(self) -> None:
        """Our peers are done: later deliveries are refused (their senders see a failed send)."""
        self._closed = True

    def deliver_from_thread(self, sender: str, to: str, data: bytes) -> bool:
        """Called from a thread that is not the loop's (an actor call): queue `data` for local peer `to`."""
        if not self._ready.wait(READY_TIMEOUT_S) or self._closed or self._token is None:
            return False
        try:
            return trio.from_thread.run_sync(self._put, sender, to, data, trio_token=self._token)
        except trio.RunFinishedError:
            return False

    async def _deliver(self, sender: str, to: str, data: bytes) -> bool:
        if to in self._peers:
            delivered = self._put(sender, to, data)
        elif (actor := self._routes.get(to)) is not None:
            reply = actor.deliver.remote(sender, to, data)
            # abandon_on_cancel: trio-typing's stale stubs (a libp2p dependency) do not know it
            delivered = await trio.to_thread.run_sync(_wait, reply, abandon_on_cancel=True)  # type: ignore[call-arg]
        else:
            return False
        if delivered:
            self._peers[sender].stats.bytes_sent += len(data)
        return delivered

    def _put(self, sender: str, to: str, data: bytes) -> bool:
        receiver = self._peers.get(to)
        if receiver is None or self._closed:
            return False
        try:
            receiver._inbox_send.send_nowait(Delivery.of(sender, data))
        except trio.WouldBlock:
            log.info("inbox of %s is full; dropped a message from %s", to[:12], sender[:12])
            return False
        receiver.stats.bytes_received += len(data)
        return True


def _wait(reply: Any) -> bool:
    """The receiving actor's answer (in a worker thread); a dead actor is a failed send, not a crash."""
    import ray

    try:
        return bool(ray.get(reply))
    except ray.exceptions.RayError as exc:
        log.info("a delivery to another actor failed: %s", exc)
        return False


@dataclass
class RayTransport:
    """One peer's end of a `RayNetwork`; implements `p2pfed.net.transport.Transport`."""

    network: RayNetwork
    peer_id: str
    _neighbours: list[str]
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        self._inbox_send, self._inbox = trio.open_memory_channel[Delivery](self.network.capacity)

    @property
    def local_id(self) -> str:
        return self.peer_id

    def neighbours(self) -> list[str]:
        return list(self._neighbours)

    async def send(self, to: str, data: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        return await self.network._deliver(self.peer_id, to, data)

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Delivery]:
        return self._inbox
