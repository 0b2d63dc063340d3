"""An in-memory transport on trio channels: hundreds of peers in one process, optional delay and loss.

Used by `p2pfed sim` and the tests. Delivery decisions (drop) are drawn from a seeded generator per
directed link, so a run with loss is still reproducible.

Neighbours are either fixed (the run's static graph) or decided by a `MemoryMembership` (`--membership
sampling`): then they change only at round boundaries, once every peer has finished the round
(`round_finished`, `wait_round`), so every peer sees the same links in a round and a run stays
reproducible whatever order trio runs the peers in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import trio

from p2pfed.net.membership import Evidence
from p2pfed.net.memory_membership import MemoryMembership, RoundChanges
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
        self,
        *,
        delay: float = 0.0,
        drop: float = 0.0,
        seed: int = 0,
        capacity: int = 1024,
        membership: MemoryMembership | None = None,
    ) -> None:
        self.delay = delay  # seconds each message takes
        self.drop = drop  # probability that a message is lost
        self.seed = seed
        self.capacity = capacity  # messages a peer's inbox holds before further ones are dropped
        self._peers: dict[str, MemoryTransport] = {}
        self._links: dict[tuple[str, str], np.random.Generator] = {}
        self._nursery: trio.Nursery | None = None
        self.membership = membership  # None: every transport keeps the neighbours it was added with
        self._finished: dict[int, set[str]] = {}  # round -> peers that finished it
        self._rewired: dict[int, trio.Event] = {}  # round -> set once its neighbours are decided
        self.neighbours_at: dict[int, dict[str, list[str]]] = {}  # round -> each peer's neighbours in it
        self.changes_at: dict[int, dict[str, RoundChanges]] = {}  # round -> what its boundary changed
        if membership is not None:
            self.neighbours_at[0] = {p: membership.neighbours(p) for p in membership.order}

    def add(self, peer_id: str, neighbours: list[str]) -> MemoryTransport:
        transport = MemoryTransport(self, peer_id, list(neighbours))
        self._peers[peer_id] = transport
        return transport

    def disconnect(self, peer_id: str) -> None:
        """Take a peer off the network: it neither sends nor receives any more."""
        self._peers.pop(peer_id, None)

    # ------------------------------------------------------------------ round boundaries (membership)
    def round_finished(self, peer: str, round: int, evidence: list[tuple[str, Evidence]]) -> None:
        """`peer` finished `round` with this evidence against others; the last peer to finish a round
        triggers the rewiring for the next one."""
        if self.membership is None:
            return
        for accused, item in evidence:
            self.membership.report(peer, accused, item)
        done = self._finished.setdefault(round, set())
        done.add(peer)
        if len(done) == len(self._peers):
            del self._finished[round]
            self.changes_at[round + 1] = self.membership.rewire(round + 1)
            self.neighbours_at[round + 1] = {p: self.membership.neighbours(p) for p in self.membership.order}
            self._rewired.setdefault(round + 1, trio.Event()).set()

    async def wait_round(self, round: int) -> None:
        """Return once the neighbours of `round` are decided (at once without membership, or in round 0)."""
        if self.membership is None or round == 0:
            await trio.lowlevel.checkpoint()
            return
        await self._rewired.setdefault(round, trio.Event()).wait()

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
        if self.network.membership is not None:
            return self.network.membership.neighbours(self.peer_id)
        return list(self._neighbours)

    def neighbour_degrees(self) -> dict[str, int]:
        """Each neighbour's degree (for the Metropolis weights), under membership."""
        if self.network.membership is not None:
            return self.network.membership.neighbour_degrees(self.peer_id)
        return {peer: len(self._neighbours) for peer in self._neighbours}

    async def send(self, to: str, data: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        return await self.network._deliver(self.peer_id, to, data)

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Delivery]:
        return self._inbox
