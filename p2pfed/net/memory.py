"""An in-memory transport on trio channels: hundreds of peers in one process, optional delay and loss.

Used by `p2pfed sim` and the tests. Delivery decisions (drop) are drawn from a seeded generator per
directed link, so a run with loss is still reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import trio

from p2pfed.net.transport import Delivery

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)


@dataclass
class LinkStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped: int = 0


class MemoryNetwork:
    """A switchboard that owns one `MemoryTransport` per peer ID."""

    def __init__(
        self, *, delay: float = 0.0, drop: float = 0.0, seed: int = 0, capacity: int = 1024
    ) -> None:
        self.delay = delay  # seconds each message takes
        self.drop = drop  # probability that a message is lost
        self.seed = seed
        self.capacity = capacity  # messages a peer's inbox holds before further ones are dropped
        self._peers: dict[str, MemoryTransport] = {}
        self._links: dict[tuple[str, str], np.random.Generator] = {}
        self._nursery: trio.Nursery | None = None

    def add(self, peer_id: str, neighbours: list[str]) -> MemoryTransport:
        transport = MemoryTransport(self, peer_id, list(neighbours))
        self._peers[peer_id] = transport
        return transport

    def disconnect(self, peer_id: str) -> None:
        """Take a peer off the network: it neither sends nor receives any more."""
        self._peers.pop(peer_id, None)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Only needed with delay > 0: owns the tasks that deliver late messages."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _link_rng(self, sender: str, to: str) -> np.random.Generator:
        key = (sender, to)
        if key not in self._links:
            entropy = [self.seed, *sender.encode(), 0, *to.encode()]
            self._links[key] = np.random.default_rng(entropy)
        return self._links[key]

    async def _deliver(self, sender: str, to: str, data: bytes) -> bool:
        if sender not in self._peers or to not in self._peers:
            return False
        if self.drop and self._link_rng(sender, to).random() < self.drop:
            self._peers[sender].stats.dropped += 1
            return True  # the sender cannot tell a lost message from a delivered one
        self._peers[sender].stats.bytes_sent += len(data)
        if self.delay > 0 and self._nursery is not None:
            self._nursery.start_soon(self._deliver_later, sender, to, data)
            return True
        return self._put(sender, to, data)

    async def _deliver_later(self, sender: str, to: str, data: bytes) -> None:
        await trio.sleep(self.delay)
        self._put(sender, to, data)

    def _put(self, sender: str, to: str, data: bytes) -> bool:
        receiver = self._peers.get(to)
        if receiver is None:
            return False
        try:
            receiver._inbox_send.send_nowait(Delivery.of(sender, data))
        except trio.WouldBlock:
            log.info("inbox of %s is full; dropped a message from %s", to[:12], sender[:12])
            return False
        receiver.stats.bytes_received += len(data)
        return True


@dataclass
class MemoryTransport:
    """One peer's end of a `MemoryNetwork`; implements `p2pfed.net.transport.Transport`."""

    network: MemoryNetwork
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
