"""Sealing and opening update envelopes without stalling the event loop.

py-libp2p moves bytes on one thread, the event loop's. The expensive parts of an envelope — SHA-256 of
the payload (about 0.75 ms per MiB), safetensors serialization, the NaN/inf scan — release the GIL, so
in a worker thread they run on another core while the loop keeps streaming. Small envelopes (the
adapters of the simulation's encoder models are tens of kB) stay on the loop: there a thread hop would
cost more than the work and would make the in-memory simulation's timing less predictable.

Both functions take and return exactly what `p2pfed.wire.seal` and `open_envelope` do; only where the
work runs differs, never the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import trio

from p2pfed.wire import Accepted, Identity, Limits, Rejected, Schema, open_envelope, seal

OFF_LOOP_BYTES = 1 << 20  # from this payload size on, sealing and opening run in a worker thread


async def seal_update(
    identity: Identity,
    *,
    run_digest: bytes,
    round: int,
    step: int,
    tensors: dict[str, np.ndarray],
) -> bytes:
    """`seal(...)`, in a worker thread when the tensors reach `OFF_LOOP_BYTES`."""
    call = partial(seal, identity, run_digest=run_digest, round=round, step=step, tensors=tensors)
    if sum(t.nbytes for t in tensors.values()) < OFF_LOOP_BYTES:
        return call()
    return await trio.to_thread.run_sync(call)


async def open_update(
    data: bytes | Sequence[bytes],
    *,
    remote: str | None,
    run_digest: bytes,
    schema: Schema,
    limits: Limits,
    round_window: tuple[int, int] | None,
    now: float | None,
) -> Accepted | Rejected:
    """`open_envelope(...)`, in a worker thread when the envelope reaches `OFF_LOOP_BYTES`. `data`: the
    envelope, or the chunks it arrived in (`Delivery.chunks`)."""
    call = partial(
        open_envelope,
        data,
        remote=remote,
        run_digest=run_digest,
        schema=schema,
        limits=limits,
        round_window=round_window,
        now=now,
    )
    size = len(data) if isinstance(data, bytes) else sum(len(chunk) for chunk in data)
    if size < OFF_LOOP_BYTES:
        return call()
    return await trio.to_thread.run_sync(call)
