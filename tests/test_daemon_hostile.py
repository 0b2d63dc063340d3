"""A hostile peer attacks a real `Peer` over a real libp2p connection (loopback hosts, Noise + yamux).

Every message is rejected for its own reason, counted in `peer.rejections` (frame-level abuse in the
transport's counters); the honest peers end exactly where they end when the same peer stays silent.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import trio
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.net.libp2p_transport import UPDATE_PROTOCOL, Libp2pConfig, Libp2pTransport
from p2pfed.net.loopback import loopback_transports
from p2pfed.peer.peer import FAR_FUTURE, TENSOR, Peer
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema, seal

pytestmark = [pytest.mark.slow, pytest.mark.network]

DIM = 8
RUN = b"h" * 32
ROUND = 5  # honest peers start here (as if resumed), so that an update for round 0 is stale
STEP_TIMEOUT = 2.0
MAX_FRAME = 1 << 20




async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def hostile_messages(hostile: Identity, honest: Identity) -> list[tuple[str, bytes]]:
    """(expected rejection reason, bytes) in sending order."""
    zeros = np.zeros(DIM, np.float32)

    def sealed(identity: Identity = hostile, *, run: bytes = RUN, rnd: int = ROUND + 1, vector=zeros) -> bytes:  # type: ignore[no-untyped-def]
        return seal(identity, run_digest=run, round=rnd, step=0, tensors={TENSOR: vector})

    valid = sealed()
    forged = bytearray(sealed(vector=np.ones(DIM, np.float32)))
    signature_at = 8 + struct.unpack(">I", forged[4:8])[0]
    forged[signature_at] ^= 0xFF
    return [
        ("malformed", b"\x00garbage" * 10),
        ("bad_signature", bytes(forged)),
        ("impersonation", sealed(honest)),  # an honest peer's signed update, relayed by the attacker
        ("wrong_run", sealed(run=b"x" * 32)),
        ("wrong_schema", sealed(vector=np.zeros(DIM + 1, np.float32))),
        ("non_finite", sealed(vector=np.full(DIM, np.nan, np.float32))),
        ("oversized", sealed(vector=np.zeros(200_000, np.float32))),
        ("truncated", valid[: len(valid) - 7]),
        ("stale_round", sealed(rnd=0)),
        ("future_round", sealed(rnd=ROUND + FAR_FUTURE + 1)),
        (None, valid),  # a valid update for the next round: accepted (never mixed: the run ends first)
        ("duplicate", valid),  # replayed
        ("equivocation", sealed(vector=np.full(DIM, 3.0, np.float32))),
    ]


async def raw_frame(transport: Libp2pTransport, to: str, prefix_length: int, body: bytes) -> None:
    """Frame-level abuse the transport must absorb: a lying length prefix, then EOF."""
    from libp2p.peer.id import ID

    stream = await transport._host.new_stream(ID.from_base58(to), [UPDATE_PROTOCOL])
    await stream.write(struct.pack(">Q", prefix_length) + body)
    await stream.close()


def run_network(attack: bool) -> tuple[list[Peer], list[Libp2pTransport]]:
    identities = [Identity.for_peer(7, i) for i in range(3)]  # honest A, honest B, hostile H
    a, b, h = (i.peer_id for i in identities)
    targets = [np.full(DIM, 1.0, np.float32), np.full(DIM, -1.0, np.float32)]
    schema = Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)})
    gossip = GossipConfig(rounds=ROUND + 1, gossip_steps=1, step_timeout=STEP_TIMEOUT)
    neighbourhoods = [{b: 1, h: 1}, {a: 2}]
    result: dict[str, object] = {}

    async def main() -> None:
        config = Libp2pConfig(run_digest=RUN, max_frame_bytes=MAX_FRAME)
        async with loopback_transports(identities, config) as transports:
            peers = [
                Peer(index=i, identity=identities[i], transport=transports[i], local=FakeLocal(targets[i]),  # type: ignore[arg-type]
                     run_digest=RUN, schema=schema, neighbour_degrees=neighbourhoods[i], gossip=gossip,
                     defence=Mean(), initial=np.zeros(DIM, np.float32), seed=7,
                     compute=trio.CapacityLimiter(1), start_round=ROUND, run_blocking=inline)
                for i in range(2)
            ]
            hostile = transports[2]
            if attack:
                for _, data in hostile_messages(identities[2], identities[1]):
                    assert await hostile.send(a, data)
                assert await hostile.send(b, seal(identities[2], run_digest=RUN, round=ROUND, step=0,
                                                  tensors={TENSOR: np.zeros(DIM, np.float32)}))
                await raw_frame(hostile, a, MAX_FRAME + 1, b"")
                await raw_frame(hostile, a, 1000, b"only ten b")
                with trio.fail_after(10):
                    await transports[0].wait_counter("recv_fail.truncated")
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for peer in peers:
                        nursery.start_soon(lambda p=peer: p.run(rounds=ROUND + 1))
            result["peers"], result["transports"] = peers, transports

    trio.run(main)
    return result["peers"], result["transports"]  # type: ignore[return-value]


def test_every_hostile_message_is_rejected_for_its_reason_and_honest_peers_are_unaffected() -> None:
    clean, _ = run_network(attack=False)
    attacked, transports = run_network(attack=True)
    expected = {reason: 1 for reason, _ in hostile_messages(Identity.for_peer(7, 2), Identity.for_peer(7, 1))
                if reason is not None}
    assert dict(attacked[0].rejections) == expected
    assert dict(attacked[1].rejections) == {"not_a_neighbour": 1}
    assert transports[0].counters["recv_fail.oversized"] == 1
    assert transports[0].counters["recv_fail.truncated"] == 1
    for before, after in zip(clean, attacked, strict=True):
        assert after.round == ROUND + 1
        np.testing.assert_array_equal(before.vector, after.vector)
    assert dict(clean[0].rejections) == {}
