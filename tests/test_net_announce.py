"""What a peer tells others to dial: never 0.0.0.0; --announce wins."""

from __future__ import annotations

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity


def test_announce_addresses_carry_our_peer_id() -> None:
    identity = Identity.for_peer(1, 0)
    transport = Libp2pTransport(identity, Libp2pConfig(run_digest=b"r" * 32, announce_addrs=("/ip4/127.0.0.9/tcp/4001",)))
    assert transport.announced_addrs() == (f"/ip4/127.0.0.9/tcp/4001/p2p/{identity.peer_id}",)


def test_a_wildcard_listen_address_is_announced_as_the_interface_addresses(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Nobody can dial 0.0.0.0: a peer listening on it announces its interfaces' addresses (what AutoNAT
    asks to be dialled back at, and what goes into presence and the DHT), and nothing when it has none."""
    from multiaddr import Multiaddr

    import p2pfed.net.libp2p_transport as module

    identity = Identity.for_peer(1, 0)
    transport = Libp2pTransport(identity, Libp2pConfig(run_digest=b"r" * 32))
    listening = [Multiaddr("/ip4/0.0.0.0/tcp/4001"), Multiaddr("/ip4/127.0.0.1/tcp/4002")]
    monkeypatch.setattr(transport._host, "get_transport_addrs", lambda: listening)
    interfaces = {"/ip4/0.0.0.0/tcp/4001": ["/ip4/10.9.2.2/tcp/4001", "/ip4/192.0.2.7/tcp/4001"]}
    monkeypatch.setattr(module, "expand_wildcard_address",
                        lambda addr: [Multiaddr(a) for a in interfaces.get(str(addr), [str(addr)])])
    suffix = f"/p2p/{identity.peer_id}"
    assert transport.announced_addrs() == (
        f"/ip4/10.9.2.2/tcp/4001{suffix}", f"/ip4/192.0.2.7/tcp/4001{suffix}", f"/ip4/127.0.0.1/tcp/4002{suffix}"
    )
    interfaces.clear()  # a namespace without interfaces: the wildcard stays a wildcard, and is dropped
    assert transport.announced_addrs() == (f"/ip4/127.0.0.1/tcp/4002{suffix}",)
