"""What an adapter costs over a circuit relay v2 connection, against a direct one, side by side.

    PYTHONPATH=. python benchmarks/bench_relay.py [--mb 1] [--repeats 5]

One process on 127.0.0.1: a relay peer (`relay_service`), two private peers that reach each other only
through it (`private`, DCUtR off so that the path stays relayed), and two ordinary peers connected
directly. Each repetition sends one `--mb` MiB frame with `Libp2pTransport.send` on the relayed pair and
on the direct pair, in alternating order, and times it until the receiver has the whole frame. Prints
the median seconds and MB/s of each path and their ratio (relayed / direct time), with the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import statistics
import time

import trio

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Identity

RUN = hashlib.sha256(b"bench-relay").digest()


async def timed_send(source: Libp2pTransport, dest: Libp2pTransport, payload: bytes) -> float:
    start = time.perf_counter()
    if not await source.send(dest.local_id, payload):
        raise RuntimeError(f"send failed: {dict(source.counters)}")
    delivery = await dest.incoming.receive()
    if delivery.nbytes != len(payload):
        raise RuntimeError("truncated delivery")
    return time.perf_counter() - start


async def bench(mb: float, repeats: int) -> None:
    base = Libp2pConfig(run_digest=RUN, relay_interval_s=0.5, announce_interval_s=1.0)
    payload = bytes(int(mb * (1 << 20)))
    async with trio.open_nursery() as nursery:
        relay = Libp2pTransport(
            Identity.for_peer(90, 0), dataclasses.replace(base, relay_service=True)
        )
        await nursery.start(relay.run)
        private = dataclasses.replace(
            base, private=True, hole_punch=False, bootstrap=(relay.listen_addrs[0],)
        )
        hidden = [Libp2pTransport(Identity.for_peer(91, i), private) for i in range(2)]
        direct = [
            Libp2pTransport(
                Identity.for_peer(92, i), dataclasses.replace(base, run_digest=RUN[::-1])
            )
            for i in range(2)
        ]
        for transport in (*hidden, *direct):
            await nursery.start(transport.run)
        await direct[0].connect(direct[1].listen_addrs[0])
        with trio.fail_after(60):
            await hidden[0].wait_neighbours(2)
            await hidden[1].wait_neighbours(2)
            await direct[0].wait_neighbours(1)
        assert hidden[0].path_to(hidden[1].local_id) == "relayed"
        assert direct[0].path_to(direct[1].local_id) == "direct"
        times: dict[str, list[float]] = {"relayed": [], "direct": []}
        for rep in range(repeats):
            order = [("relayed", hidden), ("direct", direct)]
            for name, (src, dst) in order if rep % 2 == 0 else order[::-1]:
                with trio.fail_after(300):
                    times[name].append(await timed_send(src, dst, payload))
            print(
                f"repetition {rep + 1}/{repeats}: relayed {times['relayed'][-1]:.2f} s, "
                f"direct {times['direct'][-1]:.2f} s",
                flush=True,
            )
        ratios = [r / d for r, d in zip(times["relayed"], times["direct"], strict=True)]
        for name, series in times.items():
            median = statistics.median(series)
            print(
                f"{name:8s} median {median:.3f} s  {mb * 1.048576 / median:.2f} MB/s "
                f"(min {min(series):.3f}, max {max(series):.3f})"
            )
        print(
            f"relayed/direct time: median {statistics.median(ratios):.1f}x "
            f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x) for a {mb:g} MiB frame"
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=1.0, help="frame size in MiB (an adapter)")
    parser.add_argument("--repeats", type=int, default=5, help="sends per path")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    trio.run(bench, args.mb, args.repeats)


if __name__ == "__main__":
    main()
