"""The Peer's sealing and opening: same results as p2pfed.wire, and large envelopes leave the event loop
free for the transport while they are hashed and checked."""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import pytest
import trio

from p2pfed.peer.envelopes import OFF_LOOP_BYTES, off_loop
from p2pfed.wire import (
    Accepted,
    Identity,
    Limits,
    Rejected,
    RejectReason,
    Schema,
    open_envelope,
    seal,
)

RUN = hashlib.sha256(b"envelopes-test").digest()
SENDER = Identity.for_peer(0, 0)
CHECKS = {"remote": SENDER.peer_id, "run_digest": RUN, "limits": Limits(), "round_window": None, "now": None}


def _tensors(nbytes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"adapter": rng.standard_normal(nbytes // 4).astype(np.float32)}


async def _open(data: bytes, schema: Schema) -> Accepted | Rejected:
    return await off_loop(len(data), partial(open_envelope, data, schema=schema, **CHECKS))


async def _seal(tensors: dict[str, np.ndarray]) -> bytes:
    sealing = partial(seal, SENDER, run_digest=RUN, round=3, step=1, tensors=tensors)
    return await off_loop(Schema.from_tensors(tensors).nbytes, sealing)


async def _runs_beside(work) -> tuple[object, bool]:
    """Run `work()`; also report whether another task got the event loop before it finished."""
    other_ran = False

    async def other() -> None:
        nonlocal other_ran
        other_ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        result = await work()
        ran_before_result = other_ran
    return result, ran_before_result


@pytest.mark.parametrize("nbytes", [64 * 1024, 2 * OFF_LOOP_BYTES])
def test_round_trip_matches_the_wire_functions(nbytes: int) -> None:
    tensors = _tensors(nbytes)
    schema = Schema.from_tensors(tensors)

    async def main() -> None:
        envelope = await _seal(tensors)
        verdict = await _open(envelope, schema)
        direct = open_envelope(envelope, schema=schema, **CHECKS)
        assert isinstance(verdict, Accepted) and isinstance(direct, Accepted)
        assert (verdict.round, verdict.step) == (3, 1)
        assert verdict.payload_digest == direct.payload_digest
        np.testing.assert_array_equal(verdict.tensors["adapter"], tensors["adapter"])

        tampered = bytearray(envelope)
        tampered[-5] ^= 0xFF
        rejected = await _open(bytes(tampered), schema)
        assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.DIGEST_MISMATCH

    trio.run(main)


def test_large_envelopes_leave_the_loop_free_small_ones_do_not_hop() -> None:
    large, small = _tensors(2 * OFF_LOOP_BYTES), _tensors(64 * 1024)

    async def main() -> None:
        large_envelope, loop_free = await _runs_beside(lambda: _seal(large))
        assert loop_free, "sealing a large adapter blocked the event loop"
        verdict, loop_free = await _runs_beside(
            lambda: _open(large_envelope, Schema.from_tensors(large))
        )
        assert isinstance(verdict, Accepted) and loop_free

        small_envelope, hopped = await _runs_beside(lambda: _seal(small))
        assert not hopped, "a small adapter paid for a thread hop"
        verdict, hopped = await _runs_beside(
            lambda: _open(small_envelope, Schema.from_tensors(small))
        )
        assert isinstance(verdict, Accepted) and not hopped

    trio.run(main)
