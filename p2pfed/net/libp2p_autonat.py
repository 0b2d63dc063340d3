"""Reachability with py-libp2p 0.8.1's AutoNAT (`libp2p.host.autonat`): are we dialable from outside?

Every peer answers dial-back requests (the AutoNAT v1 protocol), and a peer started with `autonat`
asks the peers it is connected to whether they can dial it back at the addresses it announces. When
enough of them cannot (`confirmations`, at most AutoNAT's 4 and at most the servers asked), the peer is
PRIVATE and the transport acts as `--private`: it reserves relay slots and announces relayed addresses.

One defect is worked around here (a subclass, not a replacement): py-libp2p's server dials back with
`host.connect`, which returns at once when a connection to the requester already exists, and one
always does, since the request arrived on it. So the library's server answers OK for any address that
matches the requester's IP, reachable or not (measured: a dial-back to a closed port was OK). Our server
dials back from a fresh host of its own (a new key, no connections), as AutoNAT intends.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.autonat.autonat import (
    AUTONAT_PROTOCOL_ID,
    CONFIRMATIONS_REQUIRED,
    AutoNATService,
    AutoNATStatus,
)
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2pfed.net.libp2p_guards import quietly

log = logging.getLogger(__name__)

STATUS_NAMES = {AutoNATStatus.UNKNOWN: "unknown", AutoNATStatus.PUBLIC: "public", AutoNATStatus.PRIVATE: "private"}


class DialBackService(AutoNATService):
    """py-libp2p's AutoNAT service whose dial-back really dials (see the module docstring)."""

    def __init__(self, host: BasicHost, *, dial_timeout_s: float, confirmations: int | None = None) -> None:
        super().__init__(host, serve=True, confirmations=confirmations)
        self.dial_timeout_s = dial_timeout_s

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        """Dial `peer_id` at `addrs` from a throwaway host; an address of the peer's if one answered, else None."""
        try:
            targets = [multiaddr.Multiaddr(a) for a in addrs]
        except Exception:
            return None
        probe = new_host(key_pair=create_new_key_pair())
        reached = None
        try:
            async with probe.run(listen_addrs=[]):
                with trio.move_on_after(self.dial_timeout_s):
                    try:
                        await probe.connect(PeerInfo(peer_id, targets))
                        reached = addrs[0]  # one of them answered (the response names one address)
                    except Exception as exc:
                        log.debug("autonat dial-back to %s failed: %r", peer_id, exc)
                await quietly(probe.close, self.dial_timeout_s)
        except Exception as exc:  # never into the stream handler's caller
            log.debug("autonat probe host failed: %r", exc)
        return reached


class Reachability:
    """Asks connected peers that speak AutoNAT to dial us back, until their verdict is firm.

    `announced` gives the addresses to be dialled at (our direct ones); `became_private` is called once
    when the verdict is PRIVATE. The check repeats every `interval_s` while the status is UNKNOWN
    (too few servers yet) and every `recheck_s` after."""

    def __init__(
        self,
        host: IHost,
        service: DialBackService,
        announced: Callable[[], tuple[str, ...]],
        became_private: Callable[[], None],
        counters: Counter[str],
        notify: Callable[[], None],
        *,
        max_servers: int = CONFIRMATIONS_REQUIRED,
        query_timeout_s: float = 15.0,
        interval_s: float = 5.0,
        recheck_s: float = 300.0,
    ) -> None:
        self._host = host
        self.service = service
        self._announced = announced
        self._became_private = became_private
        self._counters = counters
        self._notify = notify
        self.max_servers = max_servers
        self.query_timeout_s = query_timeout_s
        self.interval_s = interval_s
        self.recheck_s = recheck_s

    @property
    def status(self) -> str:
        return STATUS_NAMES.get(self.service.get_status(), "unknown")

    def servers(self) -> list[ID]:
        """Connected peers that announced the AutoNAT protocol (identify), at most `max_servers`."""
        found = []
        for peer_id in self._host.get_connected_peers():
            try:
                protocols = self._host.get_peerstore().get_protocols(peer_id)
            except Exception:
                continue
            if AUTONAT_PROTOCOL_ID in protocols:
                found.append(peer_id)
        return sorted(found, key=lambda p: p.to_base58())[: self.max_servers]

    async def check(self) -> str:
        """One round of dial-back requests to the current servers; the status after it."""
        servers = self.servers()
        addrs = [multiaddr.Multiaddr(a.split("/p2p/")[0]).to_bytes() for a in self._announced() if "/p2p-circuit" not in a]
        if not servers or not addrs:
            return self.status
        before = self.status
        # a small network may have fewer than AutoNAT's 4 servers: then all of those we asked must agree
        self.service.confirmations = min(CONFIRMATIONS_REQUIRED, len(servers))
        self.service.dial_results = {}
        for server in servers:
            try:
                await self.service.query_server(server, addrs, timeout=self.query_timeout_s)
            except Exception as exc:  # unreachable server, reset stream, garbage: counts as no dial-back
                log.debug("autonat query to %s failed: %r", server, exc)
                self.service.dial_results[server] = False
        self.service.update_status()
        after = self.status
        self._counters[f"autonat.{after}"] += 1
        if after != before:
            log.info("autonat: %d of %d peers dialled us back: %s", sum(self.service.dial_results.values()), len(servers), after)
            if after == "private":
                self._became_private()
        self._notify()
        return after

    async def run(self) -> None:
        while True:
            try:
                status = await self.check()
            except Exception as exc:  # never into the transport's nursery
                self._counters["autonat_fail.error"] += 1
                log.debug("autonat check failed: %r", exc)
                status = "unknown"
            await trio.sleep(self.interval_s if status == "unknown" else self.recheck_s)
