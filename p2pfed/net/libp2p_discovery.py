"""How libp2p peers of one run find each other: the hello on every new connection, presence
announcements on the run's gossip topic (peer exchange), and mDNS on the local network.

Everything learnt goes to the membership adapter, which decides who becomes a neighbour; this module
only talks and listens. The sender of a hello is the connection's authenticated peer; the sender of an
announcement is its gossipsub signer; neither ever comes from the message body.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pubsub import Pubsub

from p2pfed.net.framing import FrameError, read_frame, write_frame
from p2pfed.net.libp2p_guards import quietly
from p2pfed.net.libp2p_membership import MembershipAdapter
from p2pfed.net.membership import MDNS
from p2pfed.net.presence import MAX_PRESENCE_BYTES, Presence

log = logging.getLogger(__name__)

HELLO_PROTOCOL = TProtocol("/p2pfed/hello/1.0.0")


class Discovery:
    """Hello, announcements and mDNS for one host. `run` starts its loops in the transport's nursery."""

    def __init__(
        self,
        host: IHost,
        pubsub: Pubsub,
        topic: str,
        run_hex: str,
        members: MembershipAdapter,
        announced_addrs: Callable[[], tuple[str, ...]],
        counters: Counter[str],
        notify: Callable[[], None],
        *,
        announce_interval_s: float,
        hello_timeout_s: float,
        enable_mdns: bool,
    ) -> None:
        self._host = host
        self._pubsub = pubsub
        self.topic = topic
        self._run_hex = run_hex
        self._members = members
        self._announced_addrs = announced_addrs
        self._counters = counters
        self._notify = notify
        self._announce_interval_s = announce_interval_s
        self._hello_timeout_s = hello_timeout_s
        self._enable_mdns = enable_mdns
        self.local_id = host.get_id().to_base58()
        self.local_round = -1  # announced in presence
        self.rounds: dict[str, int] = {}  # members' current rounds, as they last announced them
        self._hello_in, self._hello_out = trio.open_memory_channel[str](1024)
        self._found_in, self._found_out = trio.open_memory_channel[PeerInfo](256)  # from mDNS
        host.set_stream_handler(HELLO_PROTOCOL, self._handle_hello)
        pubsub.set_topic_validator(topic, self._validate_announcement, False)

    def _count(self, key: str) -> None:
        self._counters[key] += 1
        self._notify()

    def start(self, nursery: trio.Nursery, subscription: Any) -> None:
        nursery.start_soon(self._hello_worker)
        nursery.start_soon(self._read_announcements, subscription)
        nursery.start_soon(self._announce_loop)
        if self._enable_mdns:
            nursery.start_soon(self._dial_discovered)

    def presence_for(self, peer: str | None) -> Presence:
        """Our presence as `peer` should read it (None: the announcement everyone reads)."""
        full = self._members.membership.full_for(peer)
        return Presence(
            self._run_hex,
            self._announced_addrs(),
            self._members.presence_peers(),
            self.local_round,
            full,
        )

    # ------------------------------------------------------------------ hello
    def on_connected(self, peer: str) -> None:
        """A new connection (libp2p's notifee): greet it unless membership refuses it."""
        if self._members.connected(peer):
            self.greet(peer)

    def greet(self, peer: str) -> None:
        """Queue a hello to `peer` (connected)."""
        try:
            self._hello_in.send_nowait(peer)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._count("hello_dropped")

    async def _hello_worker(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer in self._hello_out:
                nursery.start_soon(self._say_hello, peer)

    async def _say_hello(self, peer: str) -> None:
        answered = False
        with trio.move_on_after(self._hello_timeout_s):
            try:
                stream = await self._host.new_stream(ID.from_base58(peer), [HELLO_PROTOCOL])
                hello = self.presence_for(peer).encode()
                if await write_frame(stream, hello, stall_s=2, total_s=5) is None:
                    reply = await read_frame(
                        stream, max_bytes=MAX_PRESENCE_BYTES, stall_s=2, total_s=5
                    )
                    if isinstance(reply, bytes):
                        answered = True
                        self._learn(peer, Presence.decode(reply), answer=True)
                await stream.close()
            except Exception:
                self._count("hello_fail")
        if not answered:
            self._members.hello_failed(peer)

    async def _handle_hello(self, stream: Any) -> None:
        remote = stream.muxed_conn.peer_id.to_base58()
        if self._members.membership.refused(remote):  # it is being disconnected: tell it nothing
            await quietly(stream.reset)
            return
        body = await read_frame(stream, max_bytes=MAX_PRESENCE_BYTES, stall_s=2, total_s=5)
        if isinstance(body, FrameError):
            self._count(f"hello_fail.{body}")
            await quietly(stream.reset)
            return
        self._learn(remote, Presence.decode(body), answer=False)
        await write_frame(stream, self.presence_for(remote).encode(), stall_s=2, total_s=5)
        await quietly(stream.close)

    def _learn(self, peer: str, presence: Presence | None, *, answer: bool) -> None:
        """`peer` (authenticated by its connection) greeted us, or `answer`ed our hello: membership
        decides what it becomes."""
        if presence is None or presence.run != self._run_hex:
            self._count("presence_rejected")
            self._members.lost(peer)
            return
        self.rounds[peer] = presence.round
        self._members.hello(peer, presence, answer=answer)
        self._members.discovered(presence.peers, advertiser=peer)  # a full peer's may have room

    # ------------------------------------------------------------------ announcements
    def _validate_announcement(self, forwarder: ID, msg: Any) -> bool:
        """Whether gossipsub delivers and relays an announcement: ours, and not from an identity in
        cooldown (we stop relaying the presence of those we evicted)."""
        try:
            if self._members.membership.refused(ID(msg.from_id).to_base58()):
                return False
            presence = Presence.decode(msg.data)
            return presence is not None and presence.run == self._run_hex
        except Exception:  # a raising validator kills the Pubsub service (defect 2)
            return False

    async def _read_announcements(self, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            try:
                sender = ID(msg.from_id).to_base58()
            except Exception:
                continue
            if sender == self.local_id:
                continue
            presence = Presence.decode(msg.data)
            if presence is None:
                continue
            if sender in self._members.membership.neighbours():
                self.rounds[sender] = presence.round
                self._members.presence(sender, presence)
            self._members.discovered(((sender, presence.addrs), *presence.peers), advertiser=sender)

    async def _announce_loop(self) -> None:
        while True:
            await trio.sleep(self._announce_interval_s)
            try:
                await self._pubsub.publish(self.topic, self.presence_for(None).encode())
            except Exception as exc:
                self._count("announce_fail")
                log.debug("announcement failed: %r", exc)

    # ------------------------------------------------------------------ mDNS
    @contextlib.asynccontextmanager
    async def mdns_events(self) -> AsyncIterator[None]:
        """Queue the peers mDNS finds while the host runs (enter it before the host starts: mDNS
        reports each peer only once)."""
        if not self._enable_mdns:
            yield
            return
        token = trio.lowlevel.current_trio_token()

        # runs on zeroconf's thread, for every host in the process
        def on_found(info: PeerInfo) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._queue_found, info)

        peerDiscovery.register_peer_discovered_handler(on_found)
        try:
            yield
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_found)

    def _queue_found(self, info: PeerInfo) -> None:
        try:
            self._found_in.send_nowait(info)
        except trio.WouldBlock:
            self._count("mdns_dropped")
        except trio.ClosedResourceError:
            pass

    async def _dial_discovered(self) -> None:
        """Hand the peers mDNS found to membership. libp2p would leave them to its auto-connector,
        which is off (see the transport): without this, they would only ever reach the peerstore."""
        async for info in self._found_out:
            self._count("mdns_found")
            found = ((info.peer_id.to_base58(), tuple(str(a) for a in info.addrs)),)
            self._members.discovered(found, advertiser=MDNS)
