"""NAT traversal with what py-libp2p 0.8.1 ships: circuit relay v2 (`libp2p.relay.circuit_v2`) and
DCUtR hole punching.

- A reachable peer may serve as a relay (`relay_service`): it accepts reservations and relays circuits,
  within `RelayLimits` (reservations, circuits, bytes and seconds per circuit).
- A peer behind NAT (`private`) reserves a slot on up to `relay_slots` relays among the peers it is
  connected to that speak the hop protocol, and announces `<relay>/p2p-circuit/p2p/<us>`: others
  reach it through the relay.
- Every peer can dial a `/p2p-circuit` address (libp2p's swarm never does: it drops relay addresses
  unless told otherwise), and runs DCUtR, which tries to replace a relayed connection by a direct one.

Updates may then flow over a relayed connection when no direct path exists; `use()` reports which
path each neighbour's connection takes (the metrics' relay use).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

log = logging.getLogger(__name__)

CIRCUIT = "/p2p-circuit"


@dataclass(frozen=True)
class RelayRules:
    """What a relay grants (its resource limits) and how many relays a private peer uses."""

    max_reservations: int = 32  # peers holding a slot on us at once
    max_circuits: int = 16  # relayed connections through us at once
    circuit_bytes: int = 1 << 30  # per circuit: a few hundred adapters of a small model
    circuit_seconds: int = 3600
    relay_slots: int = 2  # relays a private peer reserves on
    reserve_timeout_s: float = 10.0

    def limits(self) -> RelayLimits:
        return RelayLimits(
            duration=self.circuit_seconds,
            data=self.circuit_bytes,
            max_circuit_conns=self.max_circuits,
            max_reservations=self.max_reservations,
        )


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


class NatTraversal:
    """The relay service, relay client and DCUtR of one host."""

    def __init__(
        self,
        host: IHost,
        rules: RelayRules,
        *,
        serve: bool,
        private: bool,
        hole_punch: bool,
        counters: Counter[str],
        notify: Callable[[], None],
    ) -> None:
        self._host = host
        self.rules = rules
        self.serve = serve
        self.private = private
        self._counters = counters
        self._notify = notify
        limits = rules.limits()
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=serve)
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if serve else RelayRole(0))
        self.transport = CircuitV2Transport(
            host, self.protocol, RelayConfig(roles=roles, limits=limits)
        )
        self.dcutr = DCUtRProtocol(host) if hole_punch else None
        self.reservations: dict[str, str] = {}  # relay peer -> the direct address we reach it on
        self._trying: set[str] = set()

    def _count(self, key: str) -> None:
        self._counters[key] += 1
        self._notify()

    @contextlib.asynccontextmanager
    async def services(self) -> AsyncIterator[None]:
        """Relay protocol (stop handler, and hop when serving) and DCUtR, while the host runs."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(self.protocol))
            if self.dcutr is not None:
                await stack.enter_async_context(background_trio_service(self.dcutr))
            yield

    # ------------------------------------------------------------------ addresses
    def relayed_addrs(self) -> tuple[str, ...]:
        """Our addresses through the relays that hold a slot for us."""
        local = self._host.get_id().to_base58()
        return tuple(f"{addr}{CIRCUIT}/p2p/{local}" for addr in self.reservations.values())

    # ------------------------------------------------------------------ reservations
    def relay_candidates(self, dialled: dict[str, str]) -> list[tuple[str, str]]:
        """Connected peers that speak the hop protocol and that we reach directly at a known address."""
        found = []
        for peer_id in self._host.get_connected_peers():
            peer = peer_id.to_base58()
            addr = dialled.get(peer)
            if addr is None or peer in self.reservations or is_circuit(addr):
                continue
            try:
                protocols = self._host.get_peerstore().get_protocols(peer_id)
            except Exception:
                continue
            if HOP_PROTOCOL in protocols:
                found.append((peer, addr))
        return sorted(found)

    async def reserve_slots(self, dialled: dict[str, str], nursery: trio.Nursery) -> None:
        """Keep up to `relay_slots` reservations (a private peer only); forget relays we lost."""
        if not self.private:
            return
        connected = {p.to_base58() for p in self._host.get_connected_peers()}
        for relay in [r for r in self.reservations if r not in connected]:
            del self.reservations[relay]
            self._count("relay_lost")
        for relay, addr in self.relay_candidates(dialled):
            if len(self.reservations) >= self.rules.relay_slots:
                return
            if await self._reserve(relay, addr, nursery):
                self.reservations[relay] = addr
                self._count("relay_reserved")
                log.info(
                    "reserved a relay slot on %s: reachable as %s", relay[-6:], self.relayed_addrs()
                )

    async def _reserve(self, relay: str, addr: str, nursery: trio.Nursery) -> bool:
        """One reservation request; False (and counted) when the relay refuses (e.g. its limit) or fails."""
        with trio.move_on_after(self.rules.reserve_timeout_s):
            try:
                stream = await self._host.new_stream(ID.from_base58(relay), [HOP_PROTOCOL])
                if await self.transport.reserve(stream, ID.from_base58(relay), nursery):
                    return True
            except Exception as exc:
                log.debug("reservation on %s failed: %r", relay[-6:], exc)
        self._count("relay_reserve_fail")
        return False

    # ------------------------------------------------------------------ dialling
    async def dial(self, addr: str) -> bool:
        """Connect through a relay (`/.../p2p/<relay>/p2p-circuit/p2p/<peer>`); the caller bounds the time."""
        try:
            await self.transport.dial(multiaddr.Multiaddr(addr))
        except Exception as exc:
            self._count("dial_fail.relay")
            log.debug("relayed dial %s failed: %r", addr, exc)
            return False
        self._count("relay_dialled")
        return True

    # ------------------------------------------------------------------ what the metrics show
    def use(self, neighbours: list[str]) -> dict[str, int]:
        """Relay use now: neighbours reached only through a relay or directly, our reservations, circuits
        we relay for others, and hole punches DCUtR turned into direct connections."""
        relayed = sum(1 for p in neighbours if self.path_to(p) == "relayed")
        return {
            "relayed_neighbours": relayed,
            "direct_neighbours": len(neighbours) - relayed,
            "reservations": len(self.reservations),
            "circuits_served": len(self.protocol._active_relays),
            "hole_punched": len(self.dcutr._direct_connections) if self.dcutr is not None else 0,
            "behind_nat": int(self.private),
        }

    def path_to(self, peer: str) -> str:
        """'direct' if any connection to `peer` is direct, 'relayed' if all go through a relay."""
        try:
            conns = self._host.get_network().get_connections(ID.from_base58(peer))
        except Exception:
            return "none"
        if not conns:
            return "none"
        for conn in conns:
            kind = _connection_type(conn)
            if kind is not ConnectionType.RELAYED:
                return "direct"
        return "relayed"


def _connection_type(conn: object) -> ConnectionType | None:
    getter = getattr(conn, "get_connection_type", None)
    if getter is not None:
        try:
            return getter()
        except Exception:
            return None
    return None
