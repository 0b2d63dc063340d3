"""AutoNAT on 127.0.0.1: a peer whose announced address nobody can dial finds out by itself that it is
behind NAT and acts as `--private` (it reserves a relay slot and announces the relayed address); a
reachable peer stays public."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket

import multiaddr
import pytest
import trio
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-autonat").digest()
CONFIG = Libp2pConfig(
    run_digest=RUN, dial_timeout_s=2.0, autonat_interval_s=0.2, relay_interval_s=0.2, relay_service=True
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_peer_nobody_can_dial_back_turns_private_and_a_reachable_one_stays_public() -> None:
    async def main() -> None:
        servers = [Identity.for_peer(41, i) for i in range(2)]
        async with loopback_transports(servers, CONFIG) as running:
            bootstrap = tuple(t.listen_addrs[0] for t in running)
            # announces a port nobody listens on, as a peer behind NAT announces its private address
            hidden = Libp2pTransport(
                Identity.for_peer(41, 2),
                dataclasses.replace(CONFIG, autonat=True, bootstrap=bootstrap,
                                    announce_addrs=(f"/ip4/127.0.0.1/tcp/{closed_port()}",)),
            )
            reachable = Libp2pTransport(
                Identity.for_peer(41, 3), dataclasses.replace(CONFIG, autonat=True, bootstrap=bootstrap)
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(hidden.run)
                await nursery.start(reachable.run)
                with trio.fail_after(30):
                    await hidden.wait_counter("autonat_became_private")
                    await reachable.wait_counter("autonat.public")
                    await hidden.wait_counter("relay_reserved")
                assert hidden.private and hidden.reachability.status == "private"
                assert any("/p2p-circuit" in a for a in hidden.announced_addrs())
                assert reachable.counters["relay_reserved"] == 0
                assert not reachable.private and reachable.reachability.status == "public"
                assert reachable.announced_addrs() == (reachable.listen_addrs[0],)
                assert reachable.counters["autonat_became_private"] == 0
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_py_libp2p_autonat_server_vouches_for_a_closed_port_which_is_why_ours_dials_from_a_fresh_host() -> None:
    """A canary for the defect our DialBackService works around: if py-libp2p fixes it, this fails."""

    async def main() -> None:
        identities = [Identity.for_peer(42, i) for i in range(2)]
        async with loopback_transports(identities, CONFIG) as (client, server):
            AutoNATService(server._host, serve=True)  # the library's server replaces ours on the server
            port = closed_port()
            bogus = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").to_bytes()
            status, _ = await client.reachability.service.query_server(server._host.get_id(), [bogus], timeout=10)
            assert status == 0  # OK: the library reused the connection the request came on
            ours = server.reachability.service
            server._host.set_stream_handler(AUTONAT_PROTOCOL_ID, ours.handle_stream)
            status, _ = await client.reachability.service.query_server(server._host.get_id(), [bogus], timeout=10)
            assert status != 0  # E_DIAL_ERROR: the fresh host could not dial the closed port

    trio.run(main)
