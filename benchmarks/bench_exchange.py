"""Throughput of the signed adapter exchange vs a raw libp2p stream carrying the same bytes.

    PYTHONPATH=. python benchmarks/bench_exchange.py [--mb 4] [--count 16]

Both paths run in one process on 127.0.0.1, one payload at a time, A -> B:
  raw     a plain py-libp2p stream per payload: write the bytes, close, the receiver reads to EOF
  signed  seal (safetensors + SHA-256 + Ed25519) -> Libp2pTransport.send (framed, acknowledged)
          -> open_envelope at the receiver (signature, digest, schema, finiteness, decode)
The goal is signed/raw >= 0.9: signing and verification must not be what limits a round.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import time

import multiaddr
import numpy as np
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pfed.net.libp2p_transport import Libp2pConfig
from p2pfed.net.loopback import loopback_transports
from p2pfed.wire import Accepted, Identity, Limits, Schema, open_envelope, seal

RAW = TProtocol("/bench/raw/1.0.0")
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
RUN = hashlib.sha256(b"bench").digest()


def _tensors(megabytes: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(megabytes * 2**20) // 4
    return {"lora_B": rng.standard_normal(n).astype(np.float32)}


async def bench_raw(payload: bytes, count: int) -> float:
    """Seconds to move `count` copies of `payload` over fresh raw streams."""
    a = new_host(key_pair=create_new_key_pair(), listen_addrs=[LOOPBACK])
    b = new_host(key_pair=create_new_key_pair(), listen_addrs=[LOOPBACK])
    received = trio.Semaphore(0)

    async def sink(stream) -> None:
        got = 0
        try:
            while True:
                chunk = await stream.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except StreamEOF:
            pass
        assert got == len(payload)
        received.release()

    b.set_stream_handler(RAW, sink)
    async with a.run(listen_addrs=[LOOPBACK]), b.run(listen_addrs=[LOOPBACK]):
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        started = time.perf_counter()
        for _ in range(count):
            stream = await a.new_stream(b.get_id(), [RAW])
            for offset in range(0, len(payload), 256 * 1024):
                await stream.write(payload[offset : offset + 256 * 1024])
            await stream.close()
            await received.acquire()
        elapsed = time.perf_counter() - started
        await a.close()
        await b.close()
    return elapsed


async def bench_signed(tensors: dict[str, np.ndarray], count: int) -> float:
    """Seconds to seal, send and verify `count` updates. Sealing and verification run in worker
    threads (as the Peer runs blocking work), so they overlap with the transfer of the next payload."""
    schema = Schema.from_tensors(tensors)
    identities = [Identity.for_peer(0, 0), Identity.for_peer(0, 1)]
    async with loopback_transports(identities, Libp2pConfig(run_digest=RUN)) as (a, b):
        sealed_in, sealed_out = trio.open_memory_channel[bytes](1)

        async def sealer() -> None:
            async with sealed_in:
                for step in range(count):
                    envelope = await trio.to_thread.run_sync(
                        lambda step=step: seal(
                            a.identity, run_digest=RUN, round=0, step=step, tensors=tensors
                        )
                    )
                    await sealed_in.send(envelope)

        async def sender() -> None:
            async with sealed_out:
                async for envelope in sealed_out:
                    assert await a.send(b.local_id, envelope)

        def verify(data: bytes, remote: str) -> None:
            result = open_envelope(
                data,
                remote=remote,
                run_digest=RUN,
                schema=schema,
                limits=Limits(),
                round_window=None,
                now=None,
            )
            assert isinstance(result, Accepted)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sealer)
            nursery.start_soon(sender)
            for _ in range(count):
                delivery = await b.incoming.receive()
                await trio.to_thread.run_sync(verify, delivery.data, delivery.remote)
        return time.perf_counter() - started


def crypto_cost(tensors: dict[str, np.ndarray], repeats: int) -> tuple[float, float]:
    """Seconds per MB to seal, and to open (verify + decode), without any network."""
    identity = Identity.for_peer(0, 0)
    schema = Schema.from_tensors(tensors)
    megabytes = schema.nbytes / 2**20
    started = time.perf_counter()
    for step in range(repeats):
        envelope = seal(identity, run_digest=RUN, round=0, step=step, tensors=tensors)
    sealed = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(repeats):
        result = open_envelope(
            envelope,
            remote=identity.peer_id,
            run_digest=RUN,
            schema=schema,
            limits=Limits(),
            round_window=None,
            now=None,
        )
        assert isinstance(result, Accepted)
    opened = time.perf_counter() - started
    return sealed / repeats / megabytes, opened / repeats / megabytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="payload size in MiB")
    parser.add_argument("--count", type=int, default=16, help="payloads per path")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per path")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

    tensors = _tensors(args.mb, seed=1)
    envelope = seal(Identity.for_peer(0, 0), run_digest=RUN, round=0, step=0, tensors=tensors)
    total_mb = len(envelope) * args.count / 2**20
    raw_runs, signed_runs = [], []
    for _ in range(args.repeats):  # alternate, then take medians: the machine is shared and noisy
        raw_runs.append(trio.run(bench_raw, envelope, args.count))
        signed_runs.append(trio.run(bench_signed, tensors, args.count))
    raw_s, signed_s = statistics.median(raw_runs), statistics.median(signed_runs)
    seal_s, open_s = crypto_cost(tensors, repeats=10)

    rows = [
        ("raw libp2p stream", f"{total_mb / raw_s:8.1f} MiB/s", f"{raw_s:6.2f} s"),
        ("signed exchange", f"{total_mb / signed_s:8.1f} MiB/s", f"{signed_s:6.2f} s"),
        ("ratio signed/raw", f"{raw_s / signed_s:8.2f}", "goal >= 0.9"),
        ("seal (sign) per MiB", f"{seal_s * 1e3:8.2f} ms", ""),
        ("open (verify+decode) per MiB", f"{open_s * 1e3:8.2f} ms", ""),
    ]
    print(
        f"{args.count} x {len(envelope) / 2**20:.2f} MiB, one process, 127.0.0.1, "
        f"median of {args.repeats} alternating runs"
    )
    for name, value, note in rows:
        print(f"  {name:30s} {value:>16s}  {note}")


if __name__ == "__main__":
    main()
