"""Carries out `p2pfed.net.membership`'s decisions on a libp2p host; decides nothing itself."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2pfed.net.libp2p_guards import quietly
from p2pfed.net.membership import Action, Addrs, Decision, Evidence, Membership, Status
from p2pfed.net.presence import Presence

log = logging.getLogger(__name__)


class MembershipAdapter:
    """Feeds the host's events to a `Membership` and does what it returns: dials, disconnects."""

    def __init__(
        self,
        membership: Membership,
        host: IHost,
        dial: Callable[[PeerInfo], Awaitable[bool]],
        counters: Counter[str],
        notify: Callable[[], None],
        close_timeout_s: float,
    ) -> None:
        self.membership = membership
        self._host = host
        self._dial = dial
        self._counters = counters
        self._notify = notify
        self._close_timeout_s = close_timeout_s
        self.nursery: trio.Nursery | None = None  # set while the transport serves
        self.greet: Callable[[str], None] = lambda peer: None  # the hello, set by the transport

    # ------------------------------------------------------------------ queries
    def neighbours(self) -> list[str]:
        connected = self._connected()
        return [p for p in self.membership.neighbours() if p in connected]

    def degree_of(self, peer: str) -> int | None:
        return self.membership.degree_of(peer)

    def presence_peers(self) -> tuple[tuple[str, Addrs], ...]:
        """The neighbours we list in our presence (evicted and refused identities are never relayed)."""
        return tuple((p, self.membership.addrs_of(p)) for p in self.neighbours())

    # ------------------------------------------------------------------ events
    def discovered(self, peers: Iterable[tuple[str, Addrs]], advertiser: str) -> None:
        self._apply(self.membership.discovered(peers, advertiser=advertiser))

    def dialling(self, peer: str) -> None:
        self.membership.dialling(peer)

    def lost(self, peer: str) -> None:
        self._apply(self.membership.lost(peer))

    def connected(self, peer: str) -> bool:
        """A new connection; False when membership refuses the peer (it is being disconnected)."""
        decisions = self.membership.connected(peer)
        self._apply(decisions)
        return not any(d.action is Action.REFUSE for d in decisions)

    def disconnected(self) -> None:
        """Some connection closed: tell membership about each peer we no longer reach at all."""
        gone = self.membership.connected_peers() - self._connected()
        for peer in sorted(gone):
            self._apply(self.membership.disconnected(peer))

    def hello(self, peer: str, presence: Presence, *, answer: bool) -> None:
        self._apply(self.membership.hello(peer, self._status(presence), answer=answer))

    def hello_failed(self, peer: str) -> None:
        """Our hello got no answer (on a lossy link a lost packet is enough). A connection that is left
        open without a neighbourship is never greeted again (membership skips connected peers), so
        close it: the next peer exchange or bootstrap retry dials that peer afresh."""
        self._apply(self.membership.hello_failed(peer))
        self._start(self._drop_if_idle, peer)

    async def _drop_if_idle(self, peer: str) -> None:
        """Close a connection left without a neighbourship, after a grace period: a hello crossing ours
        (both peers dialled at once) may still make it one, and closing early would break that one too."""
        await trio.sleep(self._close_timeout_s)
        if peer in self._connected() and not self.membership.settling(peer):
            self._counters["hello_fail_disconnect"] += 1
            await self._disconnect(peer)

    def presence(self, peer: str, presence: Presence) -> None:
        self._apply(self.membership.presence(peer, self._status(presence)))

    def report(self, peer: str, evidence: Evidence) -> None:
        self._apply(self.membership.evidence(peer, evidence))

    def tick(self, round: int) -> None:
        self._apply(self.membership.tick(round))

    # ------------------------------------------------------------------ decisions
    def _status(self, presence: Presence) -> Status:
        lists_us = any(pid == self.membership.local_id for pid, _ in presence.peers)
        return Status(len(presence.peers), presence.full, lists_us, presence.addrs)

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if decision.action is Action.DIAL:
                self._start_dial(decision.peer, decision.addrs)
            elif decision.action is Action.GREET:
                self.greet(decision.peer)
            elif decision.action is Action.UNLINK:
                self._counters["peer_full"] += 1
            else:  # EVICT, REFUSE
                self._counters[decision.action.value] += 1
                log.info("%s %s: %s", decision.action.value, decision.peer[-6:], decision.reason)
                self._start(self._disconnect, decision.peer)
        self._notify()

    def _start_dial(self, peer: str, addrs: Addrs) -> None:
        try:
            info = PeerInfo(ID.from_base58(peer), [multiaddr.Multiaddr(a) for a in addrs])
        except Exception:
            self._counters["presence_bad_addr"] += 1
            self._apply(self.membership.lost(peer))
            return
        self._start(self._dial_member, info)

    def _start(self, task: Callable[..., Awaitable[None]], *args: object) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(task, *args)

    async def _dial_member(self, info: PeerInfo) -> None:
        # success triggers the hello (the discovery side); a failure frees the slot
        if not await self._dial(info):
            self.lost(info.peer_id.to_base58())

    async def _disconnect(self, peer: str) -> None:
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            return
        for conn in list(self._host.get_network().get_connections(peer_id)):
            await quietly(conn.close, self._close_timeout_s)

    def _connected(self) -> set[str]:
        return {p.to_base58() for p in self._host.get_connected_peers()}
