"""Finding a run's peers through the Kademlia DHT (`libp2p.kad_dht`): a provider record under the run
digest.

Every p2pfed host, whatever its run, serves the DHT. A peer provides its own run's key and asks for its
providers, so one bootstrap address of *any* p2pfed peer is enough: the lookup goes through that peer
(and whoever it knows) to the peers holding the run's provider records. What the DHT returns is only a
candidate list, credited to the advertiser "dht" in membership's pool (bounded like any advertiser);
whether a candidate becomes a neighbour is still decided by the hello and membership.

Provider records carry the addresses we announce (`--announce`, or a relayed address behind NAT), not
libp2p's bound listen addresses: a record saying 0.0.0.0 would send every finder to itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import PeerInfo

from p2pfed.net.libp2p_membership import MembershipAdapter

log = logging.getLogger(__name__)

DHT = "dht"  # membership's advertiser of the candidates the DHT returned
SHA256_MULTIHASH = bytes([0x12, 0x20])  # multihash prefix: sha2-256, 32 bytes


def run_key(run_digest: bytes) -> str:
    """The DHT key of a run: its digest as a hex multihash (what `KadDHT.provide` accepts). A digest
    that is not 32 bytes is hashed into one, so that every key is a well-formed multihash."""
    import hashlib

    digest = run_digest if len(run_digest) == 32 else hashlib.sha256(run_digest).digest()
    return (SHA256_MULTIHASH + digest).hex()


class _AnnouncingHost:
    """The host as the DHT's provider store sees it: `get_addrs` gives what we announce. Everything
    else is the real host's (a proxy, not a copy, so that connections and the peerstore are shared)."""

    def __init__(self, host: IHost, announced_addrs: Callable[[], tuple[str, ...]]) -> None:
        self._host = host
        self._announced = announced_addrs

    def get_addrs(self) -> list[multiaddr.Multiaddr]:
        return [multiaddr.Multiaddr(a) for a in self._announced()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class RunDirectory:
    """Provides our run on the DHT and feeds its providers to membership, every `interval_s`."""

    def __init__(
        self,
        host: IHost,
        run_digest: bytes,
        members: MembershipAdapter,
        announced_addrs: Callable[[], tuple[str, ...]],
        counters: Counter[str],
        notify: Callable[[], None],
        *,
        interval_s: float,
        query_timeout_s: float,
    ) -> None:
        self._host = host
        self.key = run_key(run_digest)
        self._members = members
        self._counters = counters
        self._notify = notify
        self._interval_s = interval_s
        self._query_timeout_s = query_timeout_s
        self.local_id = host.get_id().to_base58()
        self.dht = KadDHT(host, DHTMode.SERVER)
        self.dht.provider_store.host = _AnnouncingHost(host, announced_addrs)  # type: ignore[assignment]
        self._kick = trio.Event()

    def _count(self, key: str, amount: int = 1) -> None:
        self._counters[key] += amount
        self._notify()

    def kick(self) -> None:
        """Look again now (a new connection may have brought the DHT peers it lacked)."""
        self._kick.set()

    async def run(self) -> None:
        """Refresh, provide and look up until cancelled; never raises into the transport's nursery."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a DHT failure must not take the host down
                self._count("dht_fail.error")
                log.debug("DHT round failed: %r", exc)
            # a lookup's own dials kick us again: at most one pass a second whatever happens
            await trio.sleep(min(1.0, self._interval_s))
            with trio.move_on_after(self._interval_s):
                await self._kick.wait()
            self._kick = trio.Event()

    async def refresh(self) -> None:
        """One pass: add connected peers to the routing table, provide the run, look up its providers."""
        for peer in list(self._host.get_connected_peers()):
            # only peers that speak the DHT get in (checked through identify by add_peer)
            await self.dht.add_peer(peer)
        if self.dht.get_routing_table_size() == 0:
            return
        with trio.move_on_after(self._query_timeout_s) as scope:
            if await self.dht.provide(self.key):
                self._count("dht_provided")
        if scope.cancelled_caught:
            self._count("dht_fail.provide_timeout")
        found: list[PeerInfo] = []
        with trio.move_on_after(self._query_timeout_s) as scope:
            found = await self._find_providers()
        if scope.cancelled_caught:
            self._count("dht_fail.lookup_timeout")
        candidates = list(self._candidates(found))
        if candidates:
            self._count("dht_found", len(candidates))
            self._members.discovered(candidates, advertiser=DHT)

    async def _find_providers(self) -> list[PeerInfo]:
        """The run's providers, from our own store and from the network.

        py-libp2p 0.8.1's `find_providers` answers from the local store alone whenever it holds any
        provider of the key, and `provide` puts us there: a peer that provides its run would never
        ask the network again, and two providers would never find each other (reproduced in
        docs/nat-dht.md). So the key's local records step aside during the lookup and come back after.
        """
        store = self.dht.provider_store
        key = bytes.fromhex(self.key)
        local = store.get_providers(key)
        held = store.providers.pop(key, None)
        try:
            remote = await self.dht.find_providers(self.key)
        finally:
            if held is not None:
                store.providers.setdefault(key, {}).update(held)
        return [*local, *remote]

    def _candidates(self, providers: Iterable[PeerInfo]) -> Iterable[tuple[str, tuple[str, ...]]]:
        """Providers other than us, with the addresses they announced (a wildcard is nobody's)."""
        for info in providers:
            peer = info.peer_id.to_base58()
            if peer == self.local_id:
                continue
            addrs = tuple(
                str(a)
                for a in info.addrs
                if "/ip4/0.0.0.0/" not in str(a) and "/ip6/::/" not in str(a)
            )
            yield peer, addrs
