"""Real hosts carry out membership's decisions: an evicted identity is disconnected, refused when it
dials again during its cooldown, and welcome once the cooldown has run out."""

from __future__ import annotations

import hashlib
import logging

import pytest
import trio

from p2pfed.net.libp2p_transport import Libp2pConfig
from p2pfed.net.loopback import loopback_transports
from p2pfed.net.membership import Evidence, EvidenceKind, MembershipRules
from p2pfed.wire import Identity

pytestmark = pytest.mark.network
logging.getLogger("libp2p").setLevel(logging.CRITICAL)

RUN = hashlib.sha256(b"test-net-membership").digest()


def test_an_evicted_peer_is_disconnected_and_refused_until_its_cooldown_ends() -> None:
    async def main() -> None:
        rules = MembershipRules(cooldown_rounds=5)
        config = Libp2pConfig(run_digest=RUN, dial_timeout_s=3.0, membership=rules)
        identities = [Identity.for_peer(15, i) for i in range(3)]
        async with loopback_transports(identities, config) as (us, bad, other):
            us.local_round = 0
            us.report(bad.local_id, Evidence(EvidenceKind.QUARANTINED, "harmful on validation"))
            with trio.fail_after(10):
                await us.wait_counter("evict")
                await bad.wait_counter("peer_disconnected")
            assert us.neighbours() == [other.local_id]
            assert us.local_id not in bad.neighbours()

            await bad.connect(us.listen_addrs[0])  # during the cooldown
            with trio.fail_after(10):
                await us.wait_counter("refuse")
                await bad.wait_counter("peer_disconnected", 2)  # refused: disconnected again
            assert us.neighbours() == [other.local_id]

            us.local_round = 6  # the cooldown is over
            assert await bad.connect(us.listen_addrs[0])
            with trio.fail_after(10):
                await us.wait_neighbours(2)
            assert sorted(us.neighbours()) == sorted([bad.local_id, other.local_id])

    trio.run(main)
