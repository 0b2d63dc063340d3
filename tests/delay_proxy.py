"""A transparent TCP proxy that adds a fixed one-way delay, for the namespace lab's latency test: this
kernel has no netem.

The lab's router redirects every forwarded TCP connection to it (`Lab.delay`: an iptables `REDIRECT` in
the router's PREROUTING chain). For each connection it reads the original destination (`SO_ORIGINAL_DST`),
dials it from the router, and relays both directions, each chunk sent on `delay` seconds after it arrived.
Only latency is added: the proxy buffers without limit, so bandwidth is the link's. A half-close is passed
on after the data before it. It prints `ready` once it listens, and on SIGTERM one JSON line
`{"connections", "bytes", "delay_s"}` before it exits, so a test can show the delay was really in the path.

    python tests/delay_proxy.py PORT DELAY_S
"""

from __future__ import annotations

import json
import math
import signal
import socket
import struct
import sys
from dataclasses import dataclass

import trio

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


@dataclass
class Stats:
    delay: float
    connections: int = 0
    bytes: int = 0


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """Where the client meant to connect before the router redirected it here (a `sockaddr_in`)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(address), port


async def pump(source: trio.SocketStream, sink: trio.SocketStream, stats: Stats, done: trio.CancelScope) -> None:
    """Copy `source` to `sink`, each chunk `stats.delay` seconds after it arrived, in order."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def read() -> None:
        async with send:
            while chunk := await source.receive_some(65536):
                stats.bytes += len(chunk)
                await send.send((trio.current_time() + stats.delay, chunk))

    async def write() -> None:
        async with receive:
            async for due, chunk in receive:
                await trio.sleep_until(due)
                await sink.send_all(chunk)
        await sink.send_eof()  # the source half-closed: pass it on after its data

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        done.cancel()  # one side reset: the connection is over both ways


async def relay(client: trio.SocketStream, stats: Stats) -> None:
    try:
        server = await trio.open_tcp_stream(*original_destination(client.socket))
    except OSError:  # not a redirected connection, or the destination refused: the client sees it close
        await client.aclose()
        return
    stats.connections += 1
    async with client, server:
        with trio.CancelScope() as done:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server, stats, done)
                nursery.start_soon(pump, server, client, stats, done)


async def main(port: int, delay: float) -> None:
    stats = Stats(delay)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_tcp, lambda stream: relay(stream, stats), port)
            print("ready", flush=True)
            async for _ in signals:
                break
            print(json.dumps({"connections": stats.connections, "bytes": stats.bytes, "delay_s": stats.delay}), flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), float(sys.argv[2]))
