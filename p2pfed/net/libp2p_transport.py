"""The libp2p transport: real hosts (TCP + Noise + yamux) on trio, hardened for a Byzantine network.

Updates travel on direct streams, one length-prefixed, acknowledged frame per stream
(`/p2pfed/update/1.0.0`); gossipsub carries only small presence announcements (peer exchange). The
defects of py-libp2p 0.8.1 this module works around (see the project's notes) are marked `defect N`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address

from p2pfed.config import ANNOUNCE_INTERVAL_S, MAX_NEIGHBOURS
from p2pfed.net.framing import FrameError, read_frame, read_frame_chunks, write_frame
from p2pfed.net.libp2p_guards import ConnectionEvents, guarded, no_auto_connect, quietly
from p2pfed.net.presence import MAX_PRESENCE_BYTES, Presence
from p2pfed.net.transport import Delivery
from p2pfed.wire.identity import Identity

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

UPDATE_PROTOCOL = TProtocol("/p2pfed/update/1.0.0")
HELLO_PROTOCOL = TProtocol("/p2pfed/hello/1.0.0")
GOSSIP_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID]


@dataclass(frozen=True)
class Libp2pConfig:
    run_digest: bytes  # names the gossip topic; peers of another run are never neighbours
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()  # /ip4/.../tcp/.../p2p/<id> addresses dialled at start
    # addresses other peers should dial (e.g. a public IP when listening on 0.0.0.0); default: listen addrs
    announce_addrs: tuple[str, ...] = ()
    enable_mdns: bool = False
    max_frame_bytes: int = 64 * 1024 * 1024  # above any adapter of a supported model
    max_neighbours: int = MAX_NEIGHBOURS
    incoming_capacity: int = 256  # deliveries buffered for the Peer; beyond: dropped and counted
    dial_timeout_s: float = 5.0  # py-libp2p would wait ~120 s on a silent port (defect 7)
    stall_timeout_s: float = 5.0  # no progress on a stream for this long: give up (defect 4)
    frame_timeout_s: float = 120.0  # a whole frame, any size
    open_timeout_s: float = 10.0  # open + negotiate a stream; queues behind writes on a busy link
    send_attempts: int = 4  # a stalled send drops the connection and retries on a fresh one
    retry_backoff_s: float = 0.25  # before the 2nd attempt; doubles for each further one
    parallel_sends_per_peer: int = 2  # more frames in flight to one peer would starve each other
    announce_interval_s: float = ANNOUNCE_INTERVAL_S
    close_timeout_s: float = 5.0


class Libp2pTransport:
    """`p2pfed.net.transport.Transport` over py-libp2p. Start with `nursery.start(transport.run)`."""

    def __init__(self, identity: Identity, config: Libp2pConfig) -> None:
        self.identity = identity
        self.config = config
        self.counters: Counter[str] = Counter()
        self.topic = f"/p2pfed/run/{config.run_digest.hex()}"
        self._listen = [multiaddr.Multiaddr(a) for a in config.listen_addrs]
        self._host = new_host(
            key_pair=create_new_key_pair(seed=identity.private_seed()),
            listen_addrs=self._listen,
            enable_mDNS=config.enable_mdns,
            connection_config=ConnectionConfig(dial_timeout=config.dial_timeout_s),
        )
        mdns = getattr(self._host, "mDNS", None)
        if mdns is not None:
            # py-libp2p 0.8.1 advertises the listen addresses as bound: given 0.0.0.0 (the daemon's
            # default), a peer on another machine dials 0.0.0.0, that is, itself
            mdns.broadcaster._resolve_host_addrs = self._mdns_addrs
        self._host.set_stream_handler(UPDATE_PROTOCOL, self._handle_update)
        self._host.set_stream_handler(HELLO_PROTOCOL, self._handle_hello)
        self._gossipsub = GossipSub(
            protocols=GOSSIP_PROTOCOLS,
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
        )
        self._pubsub = Pubsub(self._host, self._gossipsub, strict_signing=True)
        self._pubsub.set_topic_validator(self.topic, self._validate_announcement, False)
        # new_host is annotated with the interfaces (IHost, INetworkService); it builds a BasicHost
        # on a Swarm, whose internals the next lines patch
        network = cast(Swarm, self._host.get_network())
        # libp2p's auto-connector redials every peer it ever heard of (ghosts and silent ports
        # included) up to a watermark; neighbours are chosen here instead (patching a method of the
        # instance, which mypy forbids by default)
        network.auto_connector.maybe_connect = no_auto_connect  # type: ignore[method-assign]
        # Every inbound stream, whatever its protocol (identify, ping, meshsub, ours), goes through here.
        network.set_stream_handler(
            guarded(cast(BasicHost, self._host)._swarm_stream_handler, self._count, "stream")
        )
        for proto in GOSSIP_PROTOCOLS:
            self._host.set_stream_handler(proto, self._guarded_pubsub_handler)
        network.register_notifee(
            ConnectionEvents(self._on_connected, self._on_disconnected)
        )
        send_in, self._incoming = trio.open_memory_channel[Delivery](config.incoming_capacity)
        self._incoming_in = send_in
        self._hello_in, self._hello_out = trio.open_memory_channel[str](1024)
        self._found_in, self._found_out = trio.open_memory_channel[PeerInfo](256)  # from mDNS
        self._members: dict[str, tuple[str, ...]] = {}  # run members seen, with their addrs
        self._degrees: dict[str, int] = {}  # neighbours' own neighbour counts, from their presence
        self._rounds: dict[str, int] = {}  # neighbours' current rounds, as they last announced them
        self.local_round = -1  # our round, announced in presence (the round loop's owner sets it)
        self._neighbours: dict[str, None] = {}  # insertion-ordered set, bounded by max_neighbours
        self._dialing: set[str] = set()
        self._send_slots: dict[str, trio.Semaphore] = {}
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._host_scope = trio.CancelScope(shield=True)
        self._changed = (
            trio.Event()
        )  # set (and replaced) whenever a counter or the neighbour set changes

    def _count(self, key: str, amount: int = 1) -> None:
        self.counters[key] += amount
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_neighbours(self, count: int) -> None:
        """Wait until at least `count` run members are connected neighbours."""
        while len(self.neighbours()) < count:
            await self._changed.wait()

    async def wait_counter(self, key: str, at_least: int = 1) -> None:
        """Wait until `counters[key]` reaches `at_least` (tests and metrics)."""
        while self.counters[key] < at_least:
            await self._changed.wait()

    # -------------------------------------------------------------- Transport protocol
    @property
    def local_id(self) -> str:
        return self.identity.peer_id

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Delivery]:
        return self._incoming

    def neighbours(self) -> list[str]:
        connected = {p.to_base58() for p in self._host.get_connected_peers()}
        return [p for p in self._neighbours if p in connected]

    def neighbour_degrees(self) -> dict[str, int]:
        """Each neighbour's degree as it last announced it (Metropolis weights need them). A neighbour
        not heard from yet counts with our own degree: weights stay valid, only symmetry is approximate."""
        current = self.neighbours()
        return {p: max(1, self._degrees.get(p, len(current))) for p in current}

    def neighbour_rounds(self) -> dict[str, int]:
        """Each neighbour's round as it last announced it (unsigned hints; -1 and unknown left out)."""
        return {p: self._rounds[p] for p in self.neighbours() if self._rounds.get(p, -1) >= 0}

    async def send(self, to: str, data: bytes) -> bool:
        """Deliver one frame to `to`. Bounded in time; False (and a counter) on any failure."""
        if len(data) > self.config.max_frame_bytes:
            self._count("send_fail.oversized")
            return False
        try:
            peer = ID.from_base58(to)
        except Exception:
            self._count("send_fail.bad_peer_id")
            return False
        slots = self._send_slots.setdefault(to, trio.Semaphore(self.config.parallel_sends_per_peer))
        with trio.move_on_after(self.config.frame_timeout_s) as scope:
            async with slots:
                return await self._send_with_retry(to, peer, data)
        if scope.cancelled_caught:
            self._count("send_fail.queue_timeout")
        return False

    async def _send_with_retry(self, to: str, peer: ID, data: bytes) -> bool:
        for attempt in range(self.config.send_attempts):
            error = await self._send_once(peer, data)
            if error is None:
                self._count("frames_out")
                self._count("bytes_out", len(data))
                return True
            self._count(f"send_fail.{error}")
            log.debug("send to %s failed (%s), attempt %d", to, error, attempt + 1)
            if error == "dial" or attempt + 1 == self.config.send_attempts:
                break
            await trio.sleep(self.config.retry_backoff_s * 2**attempt)  # let a reset settle
        return False

    # -------------------------------------------------------------- lifecycle
    @property
    def listen_addrs(self) -> list[str]:
        """This host's listen multiaddrs, each ending in /p2p/<peer ID>."""
        return [str(a) for a in self._host.get_addrs()]

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, discover and serve until cancelled; then close every connection before returning.

        libp2p runs under a shield: if cancellation reached it first, its connection tasks would die
        and `host.close()` would find nothing left to close, leaving sockets open (defect 10).
        """
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(self._serve)
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    self._stop.set()
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(self.config.close_timeout_s),
                    ):
                        await self._stopped.wait()
                    self._host_scope.cancel()
        finally:
            self._incoming_in.close()

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        with self._host_scope:
            try:
                async with (
                    self._mdns_events(),  # before the host starts: mDNS reports each peer only once
                    self._host.run(listen_addrs=self._listen),
                    background_trio_service(self._pubsub),
                    background_trio_service(self._gossipsub),
                ):
                    await self._pubsub.wait_until_ready()
                    subscription = await self._pubsub.subscribe(self.topic)
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._hello_worker)
                        nursery.start_soon(self._read_announcements, subscription)
                        nursery.start_soon(self._announce_loop)
                        if self.config.enable_mdns:
                            nursery.start_soon(self._dial_discovered)
                        for addr in self.config.bootstrap:
                            nursery.start_soon(self.connect, addr)
                        self._started.set()
                        task_status.started()
                        await self._stop.wait()
                        self._nursery = None
                        await self._host.close()
                        nursery.cancel_scope.cancel()
            finally:
                self._stopped.set()

    async def connect(self, addr: str) -> bool:
        """Dial a /.../p2p/<id> multiaddr within the dial timeout; True if connected."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception:
            self._count("dial_fail.bad_addr")
            return False
        return await self._dial(info)

    async def _dial(self, info: PeerInfo) -> bool:
        if info.peer_id == self._host.get_id():
            return False
        with trio.move_on_after(self.config.dial_timeout_s) as scope:
            try:
                await self._host.connect(info)
            except Exception as exc:
                self._count("dial_fail.error")
                log.debug("dial %s failed: %r", info.peer_id, exc)
                return False
            return True
        if scope.cancelled_caught:
            self._count("dial_fail.timeout")
        return False

    # -------------------------------------------------------------- updates
    async def _send_once(self, peer: ID, data: bytes) -> FrameError | str | None:
        network = self._host.get_network()
        if not any(not c.is_closed for c in network.get_connections(peer)):
            if not self._known(peer):
                return "dial"
            with trio.move_on_after(self.config.dial_timeout_s):
                try:
                    await network.dial_peer(peer)  # host.connect would trust a closed connection
                except Exception as exc:
                    log.debug("redial of %s failed: %r", peer, exc)
            if not any(not c.is_closed for c in network.get_connections(peer)):
                self._count("dial_fail.redial")
                return "dial"
        stream = None
        with trio.move_on_after(self.config.open_timeout_s):
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
            stream, data, stall_s=self.config.stall_timeout_s, total_s=self.config.frame_timeout_s
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
                await quietly(conn.close, self.config.close_timeout_s)

    async def _drop_dead_connections(self, peer: ID) -> None:
        """Close the connections to `peer` that can no longer open a stream. After a reset (the remote
        dropped a stalled connection) libp2p still lists them as open for a while, and every retry
        would pick them again; once closed, the next attempt dials afresh."""
        for conn in list(self._host.get_network().get_connections(peer)):
            self._count("connections_dropped")
            await quietly(conn.close, self.config.close_timeout_s)

    def _known(self, peer: ID) -> bool:
        try:
            return bool(self._host.get_peerstore().addrs(peer))
        except Exception:
            return False

    async def _handle_update(self, stream: Any) -> None:
        remote = stream.muxed_conn.peer_id.to_base58()
        body = await read_frame_chunks(
            stream,
            max_bytes=self.config.max_frame_bytes,
            stall_s=self.config.stall_timeout_s,
            total_s=self.config.frame_timeout_s,
        )
        if isinstance(body, FrameError):
            self._count(f"recv_fail.{body}")
            log.debug("frame from %s rejected: %s", remote, body)
            await quietly(stream.reset)
            return
        self._count("frames_in")
        delivery = Delivery(remote, body)
        self._count("bytes_in", delivery.nbytes)
        try:
            self._incoming_in.send_nowait(delivery)
        except trio.WouldBlock:
            self._count("recv_fail.inbox_full")
        except trio.ClosedResourceError:
            pass
        await quietly(stream.close)

    async def _guarded_pubsub_handler(self, stream: Any) -> None:
        try:
            await self._pubsub.stream_handler(stream)
        except Exception as exc:  # garbage on /meshsub/* escapes Pubsub.stream_handler (defect 1)
            self._count("recv_fail.pubsub_garbage")
            log.debug("pubsub stream from %s failed: %r", stream.muxed_conn.peer_id, exc)
            await quietly(stream.reset)
            self._pubsub._handle_dead_peer(stream.muxed_conn.peer_id)

    # -------------------------------------------------------------- mDNS
    @contextlib.asynccontextmanager
    async def _mdns_events(self) -> AsyncIterator[None]:
        """Queue the peers mDNS finds while this transport runs (`_dial_discovered` dials them)."""
        if not self.config.enable_mdns:
            yield
            return
        token = trio.lowlevel.current_trio_token()

        def on_found(info: PeerInfo) -> None:  # runs on zeroconf's thread, for every host in the process
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

    def _mdns_addrs(self) -> list[str]:
        """What mDNS advertises: the --announce addresses, else the listen addresses with a wildcard
        (0.0.0.0, ::) replaced by this machine's interface addresses; libp2p appends /p2p/<id>."""
        if self.config.announce_addrs:
            return [a.split("/p2p/")[0] for a in self.config.announce_addrs]
        return [
            str(concrete)
            for addr in self._host.get_transport_addrs()
            for concrete in expand_wildcard_address(addr)
        ]

    async def _dial_discovered(self) -> None:
        """Dial the peers mDNS found. libp2p would leave that to its auto-connector, which is off here
        (see __init__): without this, discovered peers would only ever reach the peerstore."""
        async for info in self._found_out:
            self._count("mdns_found")
            self._explore(((info.peer_id.to_base58(), tuple(str(a) for a in info.addrs)),))

    # -------------------------------------------------------------- presence
    def _presence(self) -> Presence:
        peers = tuple((p, self._members.get(p, ())) for p in self.neighbours())
        full = len(self._neighbours) >= self.config.max_neighbours
        return Presence(
            self.config.run_digest.hex(), self.announced_addrs(), peers, self.local_round, full
        )

    def announced_addrs(self) -> tuple[str, ...]:
        """What we tell others to dial: --announce addresses (with our ID), else the listen addresses
        that a remote can reach (0.0.0.0 and :: are not addresses anyone can dial)."""
        if self.config.announce_addrs:
            suffix = f"/p2p/{self.local_id}"
            return tuple(a if a.endswith(suffix) else a + suffix for a in self.config.announce_addrs)
        return tuple(a for a in self.listen_addrs if "/ip4/0.0.0.0/" not in a and "/ip6/::/" not in a)

    def _on_connected(self, peer: str) -> None:
        try:
            self._hello_in.send_nowait(peer)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._count("hello_dropped")

    async def _hello_worker(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer in self._hello_out:
                nursery.start_soon(self._say_hello, peer)

    async def _say_hello(self, peer: str) -> None:
        with trio.move_on_after(self.config.dial_timeout_s):
            try:
                stream = await self._host.new_stream(ID.from_base58(peer), [HELLO_PROTOCOL])
            except Exception:
                self._count("hello_fail")
                return
            try:
                if (
                    await write_frame(stream, self._presence().encode(), stall_s=2, total_s=5)
                    is None
                ):
                    reply = await read_frame(
                        stream, max_bytes=MAX_PRESENCE_BYTES, stall_s=2, total_s=5
                    )
                    if isinstance(reply, bytes):
                        self._learn(peer, Presence.decode(reply))
                await stream.close()
            except Exception:
                self._count("hello_fail")

    async def _handle_hello(self, stream: Any) -> None:
        remote = stream.muxed_conn.peer_id.to_base58()
        body = await read_frame(stream, max_bytes=MAX_PRESENCE_BYTES, stall_s=2, total_s=5)
        if isinstance(body, FrameError):
            self._count(f"hello_fail.{body}")
            await quietly(stream.reset)
            return
        self._learn(remote, Presence.decode(body))
        await write_frame(stream, self._presence().encode(), stall_s=2, total_s=5)
        await quietly(stream.close)

    def _on_disconnected(self) -> None:
        """Free the slots of neighbours we no longer have any connection to (they rejoin by hello)."""
        self._count("peer_disconnected")
        connected = {p.to_base58() for p in self._host.get_connected_peers()}
        for gone in [p for p in self._neighbours if p not in connected]:
            del self._neighbours[gone]
            log.debug("%s: neighbour %s left", self.local_id[-6:], gone[-6:])

    def _learn(self, peer: str, presence: Presence | None) -> None:
        """Record `peer` (authenticated by its connection) as a run member if it says it is one."""
        if presence is None or presence.run != self.config.run_digest.hex():
            self._count("presence_rejected")
            return
        self._members[peer] = presence.addrs
        self._degrees[peer] = len(presence.peers)
        self._rounds[peer] = presence.round
        one_sided = self._one_sided(peer, presence)  # drops it if it was a neighbour
        room = len(self._neighbours) < self.config.max_neighbours
        if not one_sided and room and peer not in self._neighbours:
            self._neighbours[peer] = None
            self._notify()
            log.debug("%s: new neighbour %s", self.local_id[-6:], peer[-6:])
        self._explore(presence.peers)  # a full peer's neighbours may have room for us

    def _one_sided(self, peer: str, presence: Presence) -> bool:
        """True when `peer` is full and does not count us as a neighbour. Then it is not ours either
        (dropped if it was): it would never send us an update, and every gossip step would wait out its
        deadline for one. A peer with room that does not list us yet is only behind: our hello adds us."""
        if not presence.full or any(pid == self.local_id for pid, _ in presence.peers):
            return False
        self._count("peer_full")
        if peer in self._neighbours:
            del self._neighbours[peer]
            log.info("%s: %s has no room for us: not a neighbour", self.local_id[-6:], peer[-6:])
        return True

    def _explore(self, peers: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        """Dial run members we heard about, while there is room for neighbours."""
        if self._nursery is None:
            return
        for pid, addrs in peers:
            room = self.config.max_neighbours - len(self._neighbours) - len(self._dialing)
            if room <= 0:
                return
            if pid == self.local_id or pid in self._neighbours or pid in self._dialing:
                continue
            try:
                info = PeerInfo(ID.from_base58(pid), [multiaddr.Multiaddr(a) for a in addrs])
            except Exception:
                self._count("presence_bad_addr")
                continue
            self._dialing.add(pid)
            self._nursery.start_soon(self._dial_member, pid, info)

    async def _dial_member(self, pid: str, info: PeerInfo) -> None:
        try:
            await self._dial(info)  # success triggers the hello through _on_connected
        finally:
            self._dialing.discard(pid)

    def _validate_announcement(self, forwarder: ID, msg: Any) -> bool:
        try:
            presence = Presence.decode(msg.data)
            return presence is not None and presence.run == self.config.run_digest.hex()
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
            if presence is not None:
                if sender in self._neighbours and not self._one_sided(sender, presence):
                    self._degrees[sender] = len(presence.peers)
                    self._rounds[sender] = presence.round
                self._explore(((sender, presence.addrs), *presence.peers))

    async def _announce_loop(self) -> None:
        while True:
            await trio.sleep(self.config.announce_interval_s)
            try:
                await self._pubsub.publish(self.topic, self._presence().encode())
            except Exception as exc:
                self._count("announce_fail")
                log.debug("announcement failed: %r", exc)
