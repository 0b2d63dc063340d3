"""What a peer tells others to dial: never 0.0.0.0; --announce wins."""

from __future__ import annotations

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity


def test_announce_addresses_carry_our_peer_id() -> None:
    identity = Identity.for_peer(1, 0)
    transport = Libp2pTransport(identity, Libp2pConfig(run_digest=b"r" * 32, announce_addrs=("/ip4/127.0.0.9/tcp/4001",)))
    assert transport.announced_addrs() == (f"/ip4/127.0.0.9/tcp/4001/p2p/{identity.peer_id}",)


def test_wildcard_listen_addresses_are_not_announced(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    identity = Identity.for_peer(1, 0)
    transport = Libp2pTransport(identity, Libp2pConfig(run_digest=b"r" * 32))
    listening = [f"/ip4/0.0.0.0/tcp/4001/p2p/{identity.peer_id}", f"/ip4/127.0.0.1/tcp/4001/p2p/{identity.peer_id}"]
    monkeypatch.setattr(Libp2pTransport, "listen_addrs", property(lambda self: listening))
    assert transport.announced_addrs() == (listening[1],)
