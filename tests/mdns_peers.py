"""Peers that find each other by mDNS alone, one process each: run only inside a fresh network namespace.

    unshare -n sh -c 'ip link set lo up && exec python tests/mdns_peers.py --peers 3'
    unshare -n sh -c 'ip link set lo up && exec python tests/mdns_peers.py --lan'

Each peer runs one Libp2pTransport with mDNS on and no bootstrap address, waits until every other peer
is its neighbour, sends each one a signed update, verifies the update each one sends, and prints one
JSON report line. Without --lan, `--peers` processes share this namespace and listen on 127.0.0.1; with
--lan, two peers listen on 0.0.0.0:4001 (the `p2pfed join` default) in two namespaces joined by a veth
pair, like two machines on a LAN. Refuses to start where any interface besides loopback exists, so that
mDNS can never reach a real network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import subprocess
import sys
import time

import numpy as np
import trio

from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.wire import Accepted, Identity, Limits, Schema, open_envelope, seal

RUN = hashlib.sha256(b"test-mdns").digest()
SEED = 41
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
ANY = "/ip4/0.0.0.0/tcp/4001"
VETH = ("p2pfed-a", "p2pfed-b")  # the only interfaces besides lo that a peer may see
LAN = ("10.99.0.1/24", "10.99.0.2/24")


def tensors_of(index: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(index).standard_normal(4096).astype(np.float32)}


async def exchange(transport: Libp2pTransport, peers: int) -> list[str]:
    """Send our update to every neighbour and verify theirs; the senders whose update was accepted."""
    index_of = {Identity.for_peer(SEED, i).peer_id: i for i in range(peers)}
    envelope = seal(
        transport.identity,
        run_digest=RUN,
        round=0,
        step=0,
        tensors=tensors_of(index_of[transport.local_id]),
    )
    accepted: list[str] = []

    async def send(to: str) -> None:
        if not await transport.send(to, envelope):
            raise RuntimeError(f"send to {to} failed: {dict(transport.counters)}")

    async with trio.open_nursery() as nursery:
        for neighbour in transport.neighbours():
            nursery.start_soon(send, neighbour)
        while len(accepted) < peers - 1:
            delivery = await transport.incoming.receive()
            result = open_envelope(
                delivery.data,
                remote=delivery.remote,
                run_digest=RUN,
                schema=Schema.from_tensors(tensors_of(0)),
                limits=Limits(),
                round_window=(0, 0),
                now=None,
            )
            if not isinstance(result, Accepted):
                raise RuntimeError(f"update from {delivery.remote} rejected: {result}")
            np.testing.assert_array_equal(
                result.tensors["w"], tensors_of(index_of[result.sender])["w"]
            )
            accepted.append(result.sender)
    return accepted


async def node(index: int, peers: int, listen: str, timeout_s: float) -> dict[str, object]:
    started = time.monotonic()
    # Read now: once the other namespace's peer exits, its namespace and with it the veth pair are gone.
    seen = interfaces()
    config = Libp2pConfig(run_digest=RUN, listen_addrs=(listen,), enable_mdns=True)  # no bootstrap
    transport = Libp2pTransport(Identity.for_peer(SEED, index), config)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        with trio.fail_after(timeout_s):
            await transport.wait_neighbours(peers - 1)
            neighbours = sorted(transport.neighbours())
            accepted = await exchange(transport, peers)
        nursery.cancel_scope.cancel()
    return {
        "index": index,
        "peer_id": transport.local_id,
        "listen": listen,
        "interfaces": seen,
        "bootstrap": list(config.bootstrap),
        "neighbours": neighbours,
        "accepted_from": sorted(accepted),
        "mdns_found": transport.counters["mdns_found"],
        "seconds": round(time.monotonic() - started, 2),
    }


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())  # of this network namespace


def node_command(index: int, peers: int, listen: str, timeout_s: float) -> list[str]:
    return [
        sys.executable, __file__, "--node", str(index), "--peers", str(peers), "--listen", listen,
        "--timeout", str(timeout_s),
    ]  # fmt: skip


def collect(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> int:
    """Relay each peer's report; 0 if all succeeded."""
    failed = 0
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        sys.stdout.write(out.decode())
        if proc.returncode != 0:
            failed += 1
            sys.stderr.write(err.decode()[-3000:])
    return 1 if failed else 0


def run_all(peers: int, timeout_s: float) -> int:
    """One process per peer, all in this namespace."""
    procs = [
        subprocess.Popen(
            node_command(i, peers, LOOPBACK, timeout_s),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(peers)
    ]
    return collect(procs, timeout_s)


def run_lan(timeout_s: float) -> int:
    """Peer 1 in a namespace of its own, peer 0 here; a veth pair is the only link between them."""
    ours, theirs = VETH
    # Prints "ready" once in its new namespace, then waits for its end of the veth pair to arrive.
    setup = (
        f"ip link set lo up && echo ready && read go && ip addr add {LAN[1]} dev {theirs} && "
        f'ip link set {theirs} up && exec "$0" "$@"'
    )
    other = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", setup, *node_command(1, 2, ANY, timeout_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert other.stdin is not None and other.stdout is not None
    if other.stdout.readline() != b"ready\n":
        return collect([other], timeout_s) or 1
    for args in (
        ["link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", str(other.pid)],
        ["addr", "add", LAN[0], "dev", ours],
        ["link", "set", ours, "up"],
    ):
        subprocess.run(["ip", *args], check=True)
    other.stdin.write(b"go\n")
    other.stdin.flush()
    here = subprocess.Popen(
        node_command(0, 2, ANY, timeout_s), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return collect([here, other], timeout_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per peer")
    parser.add_argument("--lan", action="store_true", help="two peers, two namespaces, one veth")
    parser.add_argument("--node", type=int, help="run this one peer (internal)")
    parser.add_argument("--listen", default=LOOPBACK, help="(internal)")
    args = parser.parse_args()
    allowed = {"lo"} if args.node is None else {"lo", *VETH}
    if not set(interfaces()) <= allowed:
        sys.stderr.write(f"refusing: interfaces {interfaces()} besides lo; run under unshare -n\n")
        return 2
    if args.node is None:
        return run_lan(args.timeout) if args.lan else run_all(args.peers, args.timeout)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    report = trio.run(node, args.node, args.peers, args.listen, args.timeout)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
