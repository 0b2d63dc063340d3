"""What a worker thread costs py-libp2p's event loop, by how often it takes the GIL back.

    PYTHONPATH=. python benchmarks/bench_gil_handoff.py [--repeats 5]

Why verifying in a worker thread does not buy the signed exchange its throughput back: SHA-256 releases
the GIL, so a thread that hashes runs on the second core, but every time it needs the GIL again (after
each hash, each join, each safetensors call) the event loop loses it and has to get it back. This
benchmark moves framed 4 MiB frames over 127.0.0.1 (the transport alone, as in bench_exchange.py) while a
plain thread beside it hashes one buffer after another, each of a fixed size, and prints the transfer's
throughput against the same transfer with no thread, in rotating order. The total hashing work is the
same whatever the buffer size; only the number of GIL hand-backs per second changes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import threading
import time

import trio

from benchmarks.bench_exchange import RUN, _tensors, framed_batch
from p2pfed.net.libp2p_transport import Libp2pConfig
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Identity, seal

SIZES = {"none": 0, "64 MiB": 64 << 20, "4 MiB": 4 << 20, "256 KiB": 256 << 10}


def _hash_until(stop: threading.Event, data: bytes) -> None:
    while not stop.is_set():
        hashlib.sha256(data).digest()


async def _transfer(envelope: bytes, count: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per batch of `count` frames, per background buffer size."""
    pool = os.urandom(max(SIZES.values()))
    seconds: dict[str, list[float]] = {name: [] for name in SIZES}
    identities = [Identity.for_peer(0, 0), Identity.for_peer(0, 1)]
    async with loopback_transports(identities, Libp2pConfig(run_digest=RUN)) as (a, b):
        await framed_batch(a, b, envelope, count)  # warm-up
        names = list(SIZES)
        for repetition in range(repeats):
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                stop = threading.Event()
                hasher = threading.Thread(target=_hash_until, args=(stop, pool[: SIZES[name]]))
                if SIZES[name]:
                    hasher.start()
                started = time.perf_counter()
                await framed_batch(a, b, envelope, count)
                seconds[name].append(time.perf_counter() - started)
                stop.set()
                if SIZES[name]:
                    hasher.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="4 MiB frames per batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    envelope = seal(Identity.for_peer(0, 0), run_digest=RUN, round=0, step=0, tensors=_tensors(4, 1))
    seconds = trio.run(_transfer, envelope, args.count, args.repeats)
    mib = args.count * len(envelope) / 2**20
    hash_s = {}
    for name, size in SIZES.items():
        if size:
            started = time.perf_counter()
            hashlib.sha256(os.urandom(size)).digest()
            hash_s[name] = time.perf_counter() - started
    print(f"framed transfer of {args.count} x 4 MiB, {args.repeats} repetitions, {os.cpu_count()} cores")
    print(f"  {'thread beside it hashes':26s} {'MiB/s':>6s}  {'GIL hand-backs/s':>16s}  vs no thread")
    for name in SIZES:
        rate = mib / statistics.median(seconds[name])
        ratio = statistics.median(
            none / run for none, run in zip(seconds["none"], seconds[name], strict=True)
        )
        backs = f"{1 / hash_s[name]:16.0f}" if name in hash_s else f"{'-':>16s}"
        print(f"  {name + ' buffers' if SIZES[name] else 'nothing':26s} {rate:6.1f}  {backs}  {ratio:.2f}")


if __name__ == "__main__":
    main()
