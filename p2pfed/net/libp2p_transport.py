"""The libp2p transport: real hosts (TCP + Noise + yamux) on trio, hardened for a Byzantine network.

Updates travel on direct streams, one length-prefixed, acknowledged frame per stream
(`/p2pfed/update/1.0.0`); gossipsub carries only small presence announcements (peer exchange). This
module runs the host and sends and receives updates; `libp2p_discovery` greets and announces,
`libp2p_membership` carries out the neighbour choices of `membership`. The defects of py-libp2p 0.8.1
worked around here (see the project's notes) are marked `defect N`. The caps on connections, streams
and bytes in flight are `libp2p_limits`'; this module only wires them in.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import multiaddr
import numpy as np
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address

from p2pfed.config import ANNOUNCE_INTERVAL_S, MAX_NEIGHBOURS, run_topic
from p2pfed.net.framing import FrameError, read_frame_chunks
from p2pfed.net.libp2p_autonat import DialBackService, Reachability
from p2pfed.net.libp2p_dht import RunDirectory
from p2pfed.net.libp2p_discovery import Discovery
from p2pfed.net.libp2p_guards import ConnectionEvents, guarded, no_auto_connect, quietly
from p2pfed.net.libp2p_limits import BytesInFlight, OpenStreams, capped, resource_manager
from p2pfed.net.libp2p_membership import MembershipAdapter
from p2pfed.net.libp2p_relay import NatTraversal, RelayRules, is_circuit
from p2pfed.net.libp2p_send import UPDATE_PROTOCOL, UpdateSender
from p2pfed.net.membership import BOOTSTRAP, Evidence, Membership, MembershipRules
from p2pfed.net.transport import Delivery
from p2pfed.wire.identity import Identity

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

GOSSIP_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID]


@dataclass(frozen=True)
class Libp2pConfig:
    run_digest: bytes  # names the gossip topic; peers of another run are never neighbours
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()  # /ip4/.../tcp/.../p2p/<id> addresses dialled at start
    # addresses other peers should dial (e.g. a public IP when listening on 0.0.0.0); default: listen addrs
    announce_addrs: tuple[str, ...] = ()
    enable_mdns: bool = False
    # Kademlia: provide the run digest and look up its providers (one bootstrap peer of any run will
    # do). Off here so that tests and simulations keep the links they wire; the daemon turns it on.
    enable_dht: bool = False
    dht_interval_s: float = 10.0  # between lookups (sooner after a new connection)
    dht_query_timeout_s: float = 15.0  # one provide or lookup
    # NAT traversal (circuit relay v2 + DCUtR): `relay_service` relays for others (a reachable peer);
    # `private` (behind NAT) reserves a slot on connected relays and announces the relayed address
    relay_service: bool = False
    private: bool = False
    # AutoNAT: ask connected peers to dial us back; if they cannot, act as `private` from then on
    autonat: bool = False
    autonat_interval_s: float = 5.0  # between checks while the verdict is not firm (too few servers)
    hole_punch: bool = True  # DCUtR: try to replace a relayed connection by a direct one
    relay: RelayRules = RelayRules()
    relay_interval_s: float = 5.0  # between checks of our reservations
    max_frame_bytes: int = 64 * 1024 * 1024  # above any adapter of a supported model
    max_neighbours: int = MAX_NEIGHBOURS  # membership's target degree
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
    bootstrap_retry_s: float = 5.0  # with no neighbour, dial the bootstrap peers again this often
    membership: MembershipRules = MembershipRules()  # eclipse resistance, eviction budget, cooldown
    # Resource caps (see libp2p_limits). An honest neighbour holds one or two connections, a few
    # streams (identify, ping, gossip, hello) and at most parallel_sends_per_peer update streams.
    max_connections_per_peer: int = 8  # established, enforced by libp2p's resource manager
    max_connections_total: int = 1024
    max_pending_connections: int = 64  # inbound handshakes in progress
    max_streams_per_peer: int = 64  # inbound streams of any protocol open at once; beyond: reset
    max_streams_total: int = 1024
    max_update_streams_per_peer: int = 4  # twice parallel_sends_per_peer
    max_update_streams_total: int = 4 * MAX_NEIGHBOURS
    max_update_bytes_per_peer: int = (
        2 * 64 * 1024 * 1024
    )  # announced frame bytes being read at once


class Libp2pTransport:
    """`p2pfed.net.transport.Transport` over py-libp2p. Start with `nursery.start(transport.run)`.

    `rng` drives membership's sampling; by default it is seeded from the run digest and our peer ID."""

    def __init__(
        self, identity: Identity, config: Libp2pConfig, rng: np.random.Generator | None = None
    ) -> None:
        self.identity = identity
        self.config = config
        self.counters: Counter[str] = Counter()
        self.topic = run_topic(config.run_digest)
        self._listen = [multiaddr.Multiaddr(a) for a in config.listen_addrs]
        self._host = new_host(
            key_pair=create_new_key_pair(seed=identity.private_seed()),
            listen_addrs=self._listen,
            enable_mDNS=config.enable_mdns,
            connection_config=ConnectionConfig(dial_timeout=config.dial_timeout_s),
            resource_manager=resource_manager(
                per_peer=config.max_connections_per_peer,
                total=config.max_connections_total,
                pending_inbound=config.max_pending_connections,
            ),
        )
        mdns = getattr(self._host, "mDNS", None)
        if mdns is not None:
            # py-libp2p 0.8.1 advertises the listen addresses as bound: given 0.0.0.0 (the daemon's
            # default), a peer on another machine dials 0.0.0.0, that is, itself
            mdns.broadcaster._resolve_host_addrs = self._mdns_addrs
        self.streams = OpenStreams(
            "streams", per_peer=config.max_streams_per_peer, total=config.max_streams_total
        )
        self.update_streams = OpenStreams(
            "update_streams",
            per_peer=config.max_update_streams_per_peer,
            total=config.max_update_streams_total,
        )
        self.update_bytes = BytesInFlight(config.max_update_bytes_per_peer)
        self._host.set_stream_handler(
            UPDATE_PROTOCOL, capped(self._handle_update, self.update_streams, self._count)
        )
        self._gossipsub = GossipSub(
            protocols=GOSSIP_PROTOCOLS,
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
        )
        self._pubsub = Pubsub(self._host, self._gossipsub, strict_signing=True)
        if rng is None:
            seed = hashlib.sha256(config.run_digest + identity.peer_id.encode()).digest()
            rng = np.random.default_rng(int.from_bytes(seed[:8], "big"))
        membership = Membership(identity.peer_id, config.max_neighbours, rng, config.membership)
        self._members = MembershipAdapter(
            membership, self._host, self._dial, self.counters, self._notify, config.close_timeout_s
        )
        self._discovery = Discovery(
            self._host,
            self._pubsub,
            self.topic,
            config.run_digest.hex(),
            self._members,
            self.announced_addrs,
            self.counters,
            self._notify,
            announce_interval_s=config.announce_interval_s,
            hello_timeout_s=config.dial_timeout_s,
            enable_mdns=config.enable_mdns,
        )
        self._members.greet = self._discovery.greet
        self.nat = NatTraversal(
            self._host,
            config.relay,
            serve=config.relay_service,
            private=config.private,
            hole_punch=config.hole_punch,
            counters=self.counters,
            notify=self._notify,
        )
        # every peer answers dial-back requests; one started with `autonat` also asks them
        self.reachability = Reachability(
            self._host,
            DialBackService(cast(BasicHost, self._host), dial_timeout_s=config.dial_timeout_s),
            self.announced_addrs,
            self._became_private,
            self.counters,
            self._notify,
            query_timeout_s=config.dial_timeout_s + 10.0,
            interval_s=config.autonat_interval_s,
        )
        self._dialled: dict[str, str] = {}  # peer -> the direct address we last reached it on
        self._directory = (
            RunDirectory(
                self._host,
                config.run_digest,
                self._members,
                self.announced_addrs,
                self.counters,
                self._notify,
                interval_s=config.dht_interval_s,
                query_timeout_s=config.dht_query_timeout_s,
            )
            if config.enable_dht
            else None
        )
        # new_host is annotated with the interfaces (IHost, INetworkService); it builds a BasicHost
        # on a Swarm, whose internals the next lines patch
        network = cast(Swarm, self._host.get_network())
        # libp2p's auto-connector redials every peer it ever heard of (ghosts and silent ports
        # included) up to a watermark; membership chooses whom to dial instead (patching a method of
        # the instance, which mypy forbids by default)
        network.auto_connector.maybe_connect = no_auto_connect  # type: ignore[method-assign]
        # Every inbound stream, whatever its protocol (identify, ping, meshsub, ours), goes through here.
        network.set_stream_handler(
            capped(
                guarded(cast(BasicHost, self._host)._swarm_stream_handler, self._count, "stream"),
                self.streams,
                self._count,
            )
        )
        for proto in GOSSIP_PROTOCOLS:
            self._host.set_stream_handler(proto, self._guarded_pubsub_handler)
        network.register_notifee(ConnectionEvents(self._on_connected, self._on_disconnected))
        send_in, self._incoming = trio.open_memory_channel[Delivery](config.incoming_capacity)
        self._incoming_in = send_in
        self._sender = UpdateSender(self._host, config, self._count)
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
        return self._members.neighbours()

    def neighbour_degrees(self) -> dict[str, int]:
        """Each neighbour's degree as it last announced it (Metropolis weights need them). A neighbour
        not heard from yet counts with our own degree: weights stay valid, only symmetry is approximate."""
        current = self.neighbours()
        return {p: max(1, self._members.degree_of(p) or len(current)) for p in current}

    def neighbour_rounds(self) -> dict[str, int]:
        """Each neighbour's round as it last announced it (unsigned hints; -1 and unknown left out)."""
        rounds = self._discovery.rounds
        return {p: rounds[p] for p in self.neighbours() if rounds.get(p, -1) >= 0}

    # -------------------------------------------------------------- membership
    @property
    def local_round(self) -> int:
        """Our round, announced in presence; the round loop's owner sets it, and each new round is
        membership's tick (cooldowns, the eviction budget)."""
        return self._discovery.local_round

    @local_round.setter
    def local_round(self, round: int) -> None:
        self._discovery.local_round = round
        self._members.tick(round)

    def report(self, peer: str, evidence: Evidence) -> None:
        """The defence's evidence against `peer`: membership evicts it (within its per-round budget)
        and refuses it for its cooldown."""
        self._members.report(peer, evidence)

    async def send(self, to: str, data: bytes) -> bool:
        """Deliver one frame to `to`. Bounded in time; False (and a counter) on any failure."""
        return await self._sender.send(to, data)

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
                    self._discovery.mdns_events(),  # before the host starts: mDNS reports once
                    self._host.run(listen_addrs=self._listen),
                    background_trio_service(self._pubsub),
                    background_trio_service(self._gossipsub),
                    self._dht_service(),
                    self.nat.services(),
                ):
                    await self._pubsub.wait_until_ready()
                    subscription = await self._pubsub.subscribe(self.topic)
                    async with trio.open_nursery() as nursery:
                        self._members.nursery = nursery
                        self._sender.nursery = nursery
                        self._discovery.start(nursery, subscription)
                        if self._directory is not None:
                            nursery.start_soon(self._directory.run)
                        if self.config.private or self.config.autonat:
                            nursery.start_soon(self._keep_relay_slots, nursery)
                        if self.config.autonat and not self.config.private:
                            nursery.start_soon(self.reachability.run)
                        self._members.discovered(self._bootstrap_peers(), BOOTSTRAP)
                        nursery.start_soon(self._retry_bootstrap)
                        self._started.set()
                        task_status.started()
                        await self._stop.wait()
                        self._members.nursery = self._sender.nursery = None
                        await self._host.close()
                        nursery.cancel_scope.cancel()
            except Exception as exc:
                if not self._stop.is_set():
                    raise
                # py-libp2p tasks may still run into the closed host (gossipsub's graft asks the closed
                # listener for its address: EBADF); we are stopping anyway, so that is not a failure
                self._count("shutdown_error")
                log.info("libp2p raised while shutting down (ignored): %r", exc)
            finally:
                self._stopped.set()

    async def connect(self, addr: str) -> bool:
        """Dial a /.../p2p/<id> multiaddr within the dial timeout; True if connected."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception:
            self._count("dial_fail.bad_addr")
            return False
        peer = info.peer_id.to_base58()
        self._members.dialling(peer)  # a link we chose
        if await self._dial(info):
            return True
        self._members.lost(peer)
        return False

    async def _retry_bootstrap(self) -> None:
        """A failed bootstrap dial is not final: the peer may start later than us, or a lost packet
        may have timed the dial out. While we have no neighbour, offer the bootstrap peers again.
        py-libp2p refuses to redial a peer for 60 s after a failed dial (its negative cache); an
        address the operator gave us is worth the retry, so it is unblocked first."""
        if not self.config.bootstrap:
            return
        swarm = cast(Swarm, self._host.get_network())
        while True:
            await trio.sleep(self.config.bootstrap_retry_s)
            if not self._members.neighbours():
                self._count("bootstrap_retry")
                peers = self._bootstrap_peers()
                for peer, _ in peers:
                    swarm.unblock_peer(ID.from_base58(peer))
                self._members.discovered(peers, BOOTSTRAP)

    def _bootstrap_peers(self) -> list[tuple[str, tuple[str, ...]]]:
        peers = []
        for addr in self.config.bootstrap:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception:
                self._count("dial_fail.bad_addr")
                continue
            peers.append((info.peer_id.to_base58(), tuple(str(a) for a in info.addrs)))
        return peers

    async def _dial(self, info: PeerInfo) -> bool:
        """Connect directly if `info` has a direct address that answers, else through a relay."""
        if info.peer_id == self._host.get_id():
            return False
        direct = [a for a in info.addrs if not is_circuit(str(a))]
        if direct and await self._dial_direct(PeerInfo(info.peer_id, direct)):
            return True
        for addr in (str(a) for a in info.addrs if is_circuit(str(a))):
            with trio.move_on_after(self.config.dial_timeout_s):
                if await self.nat.dial(addr):
                    return True
        return False

    async def _dial_direct(self, info: PeerInfo) -> bool:
        with trio.move_on_after(self.config.dial_timeout_s) as scope:
            try:
                await self._host.connect(info)
            except Exception as exc:
                self._count("dial_fail.error")
                log.debug("dial %s failed: %r", info.peer_id, exc)
                return False
            self._dialled[info.peer_id.to_base58()] = str(info.addrs[0]).split("/p2p/")[0] + (
                f"/p2p/{info.peer_id.to_base58()}"
            )
            return True
        if scope.cancelled_caught:
            self._count("dial_fail.timeout")
        return False

    async def _keep_relay_slots(self, nursery: trio.Nursery) -> None:
        """Behind NAT: hold relay reservations, and announce at once when our addresses change."""
        while True:
            before = self.nat.relayed_addrs()
            try:
                await self.nat.reserve_slots(self._dialled, nursery)
            except Exception as exc:  # never into the transport's nursery
                self._count("relay_fail.error")
                log.debug("relay reservations failed: %r", exc)
            if self.nat.relayed_addrs() != before and self._directory is not None:
                self._directory.kick()  # re-provide with the relayed address
            await trio.sleep(self.config.relay_interval_s)

    def _became_private(self) -> None:
        """AutoNAT's verdict: nobody can dial us. From now on we are `private` (relay slots, relayed
        addresses only), as if started so."""
        self.nat.private = True
        self._count("autonat_became_private")
        if self._directory is not None:
            self._directory.kick()

    @property
    def private(self) -> bool:
        """Behind NAT: set by `--private`, or found by AutoNAT."""
        return self.nat.private

    @property
    def reachability_status(self) -> str:
        """public, private (`--private` or AutoNAT's verdict) or unknown (AutoNAT has not decided)."""
        return "private" if self.private else self.reachability.status

    def relay_use(self) -> dict[str, int]:
        """Which paths our neighbours' connections take, and what we relay (metrics)."""
        return self.nat.use(self.neighbours())

    def path_to(self, peer: str) -> str:
        """'direct', 'relayed' or 'none': how we are connected to `peer` now."""
        return self.nat.path_to(peer)

    # -------------------------------------------------------------- updates in
    async def _handle_update(self, stream: Any) -> None:
        remote = stream.muxed_conn.peer_id.to_base58()
        with self.update_bytes.budget(remote) as reserve:
            body = await read_frame_chunks(
                stream,
                max_bytes=self.config.max_frame_bytes,
                stall_s=self.config.stall_timeout_s,
                total_s=self.config.frame_timeout_s,
                admit_length=reserve,
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

    def _dht_service(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The DHT's service while the host runs (nothing when the DHT is off)."""
        if self._directory is None:
            return contextlib.nullcontext()
        return background_trio_service(self._directory.dht)

    def _on_connected(self, peer: str) -> None:
        """A new connection: greet it, and let the DHT look again through it."""
        self._discovery.on_connected(peer)
        if self._directory is not None and len(self.neighbours()) < self.config.max_neighbours:
            self._directory.kick()

    def _on_disconnected(self) -> None:
        """Free the slots of neighbours we no longer have any connection to (they rejoin by hello)."""
        self._count("peer_disconnected")
        self._members.disconnected()

    # -------------------------------------------------------------- addresses
    def announced_addrs(self) -> tuple[str, ...]:
        """What we tell others to dial (presence, DHT records, AutoNAT dial-back requests): --announce
        addresses, else our direct addresses; each ends in /p2p/<our ID>."""
        relayed = self.nat.relayed_addrs()
        if self.nat.private and not self.config.announce_addrs:  # our own addresses are not reachable
            return relayed
        suffix = f"/p2p/{self.local_id}"
        return relayed + tuple(a if a.endswith(suffix) else a + suffix for a in self._direct_addrs())

    def _direct_addrs(self) -> list[str]:
        """The --announce addresses, else the listen addresses with a wildcard (0.0.0.0, ::) replaced by
        this machine's interface addresses: nobody can dial a wildcard."""
        if self.config.announce_addrs:
            return [a.split("/p2p/")[0] for a in self.config.announce_addrs]
        return [
            str(concrete)
            for addr in self._host.get_transport_addrs()
            for concrete in expand_wildcard_address(addr)
            if not any(w in str(concrete) for w in ("/ip4/0.0.0.0/", "/ip6/::/"))
        ]

    def _mdns_addrs(self) -> list[str]:
        """What mDNS advertises: our direct addresses (libp2p appends /p2p/<id>)."""
        return self._direct_addrs()
