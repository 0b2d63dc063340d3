"""Fuzz every decoder a remote's bytes reach: offline at full speed, then through a live libp2p host.

    PYTHONPATH=. python benchmarks/fuzz_wire.py [--cases 100000] [--live-cases 2000] [--seed 0]

Each case is one message a hostile peer could send (seeded, so a run repeats exactly):
  valid      a sealed envelope, unchanged (the control: it must be accepted)
  mutated    a sealed envelope with 1-8 bytes flipped, set, inserted, deleted, duplicated or cut off
  resigned   an envelope properly signed by the connection's own peer with off-by-one header fields
             and a mutated or random payload (the signature holds, so the fields and payload decide)
  random     random bytes; `magic` is the envelope magic and a header length followed by random bytes
  presence   a mutated hello/announcement JSON, or random JSON
Offline, every case is framed (1 in 20 with a corrupted length prefix) and read back by the frame reader
from an in-memory stream in random read sizes; what it returns goes through `open_envelope` as the chunks
it was read in, and as one buffer (the two verdicts must agree); every case also goes through
`Presence.decode`. Live, a real `Libp2pTransport` on 127.0.0.1 receives each case from a plain libp2p
host over a fresh stream on its update protocol (presence cases: its hello protocol), 1 in 10 sent
raw, without a frame; each delivery is opened as the Peer opens it, and at the end the host must still
accept an honest envelope.

Reported, per part: crashes (an exception out of a decoder, an INTERNAL_ERROR verdict, verdicts that
differ with the chunking, an accepted envelope that is not the schema's finite tensors, a stream
handler error or hang on the host, a host that no longer accepts an honest envelope; goal 0), accepted
mutations (mutated bytes of a sealed envelope that `open_envelope` accepts; goal 0), valid envelopes
accepted, and the slowest case by CPU time and by wall time (on a busy machine the wall-time one mostly
measures waiting for a core). The exit status is 1 when either goal is missed.

One script of ~470 lines, so that the command a reader runs is the whole of what was measured.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import random
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import multiaddr
import numpy as np
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pfed import PROTOCOL_VERSION
from p2pfed.net.framing import read_frame, read_frame_chunks, write_frame
from p2pfed.net.libp2p_discovery import HELLO_PROTOCOL
from p2pfed.net.libp2p_transport import UPDATE_PROTOCOL, Libp2pConfig, Libp2pTransport
from p2pfed.net.presence import Presence
from p2pfed.wire import Accepted, Identity, Limits, Rejected, RejectReason, Schema, open_envelope
from p2pfed.wire.envelope import MAGIC, SIGNING_PREFIX, Header, seal

RUN = hashlib.sha256(b"fuzz-wire").digest()
SENDER = Identity.from_seed(
    b"fuzz-wire-sender"
)  # the attacker: envelopes are sealed by its own key
TENSORS = {
    "layer0.lora_B": np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4),
    "head.weight": np.arange(48, dtype=np.float32).reshape(3, 16),
}
SCHEMA = Schema.from_tensors(TENSORS)
ROUND, NOW = 4, 1000.0
KINDS = {"valid": 2, "mutated": 60, "resigned": 13, "random": 10, "magic": 10, "presence": 5}
MAX_FRAME = 1 << 20
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
KEEP_COSTLIEST, REPLAYS = 10, 5


# ------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    kind: str
    data: bytes


def _mutate(rng: random.Random, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randint(1, 8)):
        op, at = rng.randrange(7), rng.randrange(len(data) + 1)
        if op == 0 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1 and at < len(data):
            data[at] = rng.randrange(256)
        elif op == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del data[at : at + rng.randint(1, 16)]
        elif op == 4:
            data[at:] = b""
        elif op == 5:
            data[at:at] = data[at : at + rng.randint(1, 32)]
        else:
            data += rng.randbytes(rng.randint(1, 64))
    if data == original:  # every op may have been a no-op
        data.append(rng.randrange(256))
    return bytes(data)


def _signed(header: Header, payload: bytes) -> bytes:
    raw = header.encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + SENDER.sign(SIGNING_PREFIX + raw) + payload


class Cases:
    """An endless, seeded stream of cases."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"fuzz-wire-cases:{seed}")
        self.valid = [
            seal(SENDER, run_digest=RUN, round=ROUND, step=step, tensors=TENSORS, timestamp=NOW)
            for step in range(4)
        ]
        (header_len,) = struct.unpack_from(">I", self.valid[0], 4)
        header = Header.decode(self.valid[0][8 : 8 + header_len])
        assert header is not None
        self.header = header
        self.payload = self.valid[0][8 + header_len + 64 :]
        self.presence = Presence(
            RUN.hex(),
            ("/ip4/127.0.0.1/tcp/4001",),
            ((SENDER.peer_id, ("/ip4/127.0.0.1/tcp/4002",)),),
            ROUND,
        ).encode()

    def next(self) -> Case:
        rng = self.rng
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        if kind == "valid":
            return Case(kind, rng.choice(self.valid))
        if kind == "mutated":
            return Case(kind, _mutate(rng, rng.choice(self.valid)))
        if kind == "resigned":
            return Case(kind, self._resigned())
        if kind == "random":
            return Case(kind, rng.randbytes(rng.randint(0, 2048)))
        if kind == "magic":
            length = rng.choice([rng.randint(0, 300), rng.randint(0, 2**32 - 1)])
            return Case(
                kind, MAGIC + struct.pack(">I", length) + rng.randbytes(rng.randint(0, 600))
            )
        return Case(kind, self._presence())

    def _presence(self) -> bytes:
        """A mutated presence, or JSON of presence keys with odd values."""
        rng = self.rng
        if rng.random() < 0.5:
            return _mutate(rng, self.presence)
        body: dict[str, object] = {}
        for _ in range(rng.randint(0, 5)):
            key = rng.choice(["run", "addrs", "peers", "round", "full"])
            odd = [
                None,
                True,
                -1,
                2**60,
                "x" * rng.randint(0, 300),
                [RUN.hex()] * rng.randint(0, 20),
                {},
            ]
            body[key] = rng.choice(odd)
        return json.dumps(body).encode()

    def _resigned(self) -> bytes:
        rng, h = self.rng, self.header
        payload = rng.choice(
            [self.payload, _mutate(rng, self.payload), rng.randbytes(rng.randint(0, 400))]
        )
        fields = {
            "version": rng.choice([PROTOCOL_VERSION, PROTOCOL_VERSION + 1, 0]),
            "run_digest": rng.choice([RUN, RUN[:-1], b""]),
            "round": rng.choice([ROUND, ROUND - 3, ROUND + 3, 2**64 - 1]),
            "timestamp": rng.choice([NOW, NOW + 1e6, -1e300]),
            "schema_digest": rng.choice([h.schema_digest, bytes(32)]),
            "payload_length": rng.choice(
                [len(payload), len(payload) + 1, max(0, len(payload) - 1)]
            ),
            "payload_sha256": rng.choice([hashlib.sha256(payload).digest()] * 3 + [bytes(32)]),
        }
        keep = rng.sample(sorted(fields), k=rng.randint(len(fields) - 2, len(fields)))
        header = Header(**(h.__dict__ | {k: fields[k] for k in keep}))
        return _signed(header, payload)


# ------------------------------------------------------------------ verdicts
def _what(case: Case) -> str:
    return f"{case.kind}, {len(case.data)} B"


@dataclass
class Report:
    part: str
    cases: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    accepted_mutations: int = 0
    valid: int = 0
    valid_accepted: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    # A case's CPU time includes whatever the interpreter did meanwhile (a garbage collection, say):
    # the costliest cases are kept and, offline, run again alone for the cost that is the decoders'.
    # Wall time also includes waiting for a core on a busy machine, and live, for the network.
    costliest: list[tuple[float, int, Case]] = field(default_factory=list)  # heap of (cpu, n, case)
    slowest_wall_s: float = 0.0
    slowest_wall: str = ""
    replayed_s: float | None = None
    replayed: str = ""
    elapsed_s: float = 0.0

    def timed(self, case: Case, cpu_s: float, wall_s: float) -> None:
        heapq.heappush(self.costliest, (cpu_s, self.cases, case))
        if len(self.costliest) > KEEP_COSTLIEST:
            heapq.heappop(self.costliest)
        if wall_s > self.slowest_wall_s:
            self.slowest_wall_s, self.slowest_wall = wall_s, _what(case)

    def crash(self, case: Case, what: str) -> None:
        self.crashes.append(f"{case.kind} {case.data[:48].hex()}...: {what}")

    def line(self) -> str:
        rate = self.cases / self.elapsed_s if self.elapsed_s else 0.0
        cpu_s, _, case = max(self.costliest, default=(0.0, 0, Case("none", b"")))
        slowest = f"         slowest case: {cpu_s * 1e3:.2f} ms CPU ({_what(case)})"
        if self.replayed_s is not None:
            slowest += (
                f"; the {len(self.costliest)} costliest run again alone: at most "
                f"{self.replayed_s * 1e3:.2f} ms ({self.replayed})"
            )
        return (
            f"{self.part:8s} {self.cases:7d} cases in {self.elapsed_s:6.1f} s ({rate:5.0f}/s)  "
            f"crashes {len(self.crashes)}  accepted mutations {self.accepted_mutations}  "
            f"valid accepted {self.valid_accepted}/{self.valid}\n{slowest}\n"
            f"         longest case: {self.slowest_wall_s * 1e3:.2f} ms wall ({self.slowest_wall})"
        )


def _open(data: bytes | tuple[bytes, ...], remote: str | None) -> Accepted | Rejected:
    return open_envelope(
        data,
        remote=remote,
        run_digest=RUN,
        schema=SCHEMA,
        limits=Limits(),
        round_window=(ROUND - 1, ROUND + 1),
        now=NOW,
    )


def judge(report: Report, case: Case, result: Accepted | Rejected) -> None:
    """Count one verdict of `open_envelope` on `case` and note what breaks a goal."""
    report.verdicts["accepted" if isinstance(result, Accepted) else str(result.reason)] += 1
    if isinstance(result, Rejected):
        if result.reason is RejectReason.INTERNAL_ERROR:
            report.crash(case, f"internal error {result.detail}")
        return
    if case.kind == "valid":
        report.valid_accepted += 1
    elif case.kind == "mutated":
        report.accepted_mutations += 1
    shapes = [a.shape for a in result.tensors.values()]
    if shapes != [s.shape for s in SCHEMA.specs] or not all(
        np.isfinite(a).all() for a in result.tensors.values()
    ):
        report.crash(case, "accepted tensors that are not the schema's")


# ------------------------------------------------------------------ offline
class ScriptedStream:
    """An in-memory remote that sends `data` in reads of random sizes, then ends the stream."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data, self.rng = data, rng

    async def read(self, n: int | None = None) -> bytes:
        size = min(n or len(self.data), self.rng.choice([1, 7, 64, 1000, 1 << 20]))
        got, self.data = self.data[:size], self.data[size:]
        return got  # b"" once done: the end of the stream

    async def write(self, data: bytes) -> None:
        pass


def _framed(rng: random.Random, data: bytes) -> tuple[bytes, bool]:
    """`data` behind a length prefix, and whether that prefix is the true length."""
    prefix = struct.pack(">Q", len(data))
    if rng.random() < 0.05:
        prefix = rng.choice(
            [rng.randbytes(8), struct.pack(">Q", max(0, len(data) + rng.randint(-9, 9)))]
        )
    return prefix + data, prefix == struct.pack(">Q", len(data))


async def _check(report: Report, case: Case, rng: random.Random) -> None:
    """One case through the frame reader, `open_envelope` (chunked and whole) and `Presence.decode`."""
    frame, intact = _framed(rng, case.data)
    report.valid += case.kind == "valid" and intact
    try:
        Presence.decode(case.data)
        chunks = await read_frame_chunks(
            ScriptedStream(frame, rng), max_bytes=MAX_FRAME, stall_s=5, total_s=30
        )
        if isinstance(chunks, tuple):
            result = _open(chunks, SENDER.peer_id)
            whole = _open(b"".join(chunks), SENDER.peer_id)
            if type(result) is not type(whole) or (
                isinstance(result, Rejected) and result != whole
            ):
                report.crash(case, f"chunked {result}, whole {whole}")
            judge(report, case, result)
        else:
            report.verdicts[f"frame {chunks}"] += 1
    except Exception as exc:
        report.crash(case, repr(exc))


async def _offline(report: Report, count: int, seed: int) -> None:
    cases, rng = Cases(seed), random.Random(f"fuzz-wire-delivery:{seed}")  # read sizes, framing
    for _ in range(count):
        case = cases.next()
        report.cases += 1
        report.kinds[case.kind] += 1
        started, cpu = time.perf_counter(), time.thread_time()
        await _check(report, case, rng)
        report.timed(case, time.thread_time() - cpu, time.perf_counter() - started)
    replays = []
    for _, _, case in report.costliest:
        runs = []
        for attempt in range(REPLAYS):
            cpu = time.thread_time()
            await _check(Report("replay"), case, random.Random(f"fuzz-wire-replay:{attempt}"))
            runs.append(time.thread_time() - cpu)
        replays.append((min(runs), _what(case)))
    if replays:
        report.replayed_s, report.replayed = max(replays)


def fuzz_offline(count: int, seed: int = 0) -> Report:
    """`count` cases through the frame reader, `open_envelope` and `Presence.decode`, in memory."""
    report = Report("offline")
    started = time.perf_counter()
    trio.run(_offline, report, count, seed)
    report.elapsed_s = time.perf_counter() - started
    return report


# ------------------------------------------------------------------ live
async def _exchange(host: IHost, victim: ID, case: Case, framed: bool) -> None:
    """Send `case` to `victim` on a fresh stream as a remote would, and wait until the victim is done."""
    hello = case.kind == "presence"
    stream = await host.new_stream(victim, [HELLO_PROTOCOL if hello else UPDATE_PROTOCOL])
    if not framed:  # raw bytes: the victim reads them as a length prefix and a body
        await stream.write(case.data or b"\x00")
        await stream.close()
    elif await write_frame(stream, case.data, stall_s=5, total_s=10) is None and hello:
        await read_frame(stream, max_bytes=MAX_FRAME, stall_s=5, total_s=10)  # its presence, acked
    try:
        while await stream.read(1 << 16):  # until the victim closes or resets the stream
            pass
    except Exception:
        pass
    await stream.reset()


async def _live(report: Report, count: int, seed: int) -> None:
    cases, rng = Cases(seed), random.Random(f"fuzz-wire-delivery:{seed}")  # framed or raw
    config = Libp2pConfig(run_digest=RUN, stall_timeout_s=2.0, frame_timeout_s=10.0)
    victim = Libp2pTransport(Identity.from_seed(b"fuzz-wire-victim"), config)
    attacker = new_host(
        key_pair=create_new_key_pair(seed=SENDER.private_seed()), listen_addrs=[LOOPBACK]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(victim.run)
        victim_id = ID.from_base58(victim.local_id)
        async with attacker.run(listen_addrs=[LOOPBACK]):
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim.listen_addrs[0])))
            for _ in range(count):
                case = cases.next()
                report.cases += 1
                report.kinds[case.kind] += 1
                framed = rng.random() >= 0.1
                report.valid += case.kind == "valid" and framed
                started, cpu = time.perf_counter(), time.thread_time()
                with trio.move_on_after(30) as scope:
                    try:
                        await _exchange(attacker, victim_id, case, framed)
                    except Exception as exc:  # our side's stream: the victim reset it, no harm
                        report.verdicts[f"stream {type(exc).__name__}"] += 1
                if scope.cancelled_caught:
                    report.crash(case, "the victim did not finish the stream within 30 s")
                while True:
                    try:
                        delivery = victim.incoming.receive_nowait()
                    except trio.WouldBlock:
                        break
                    judge(report, case, _open(delivery.chunks, delivery.remote))
                report.timed(case, time.thread_time() - cpu, time.perf_counter() - started)
            await _still_accepts(report, attacker, victim, victim_id, cases.valid[0])
            for key, value in victim.counters.items():
                if key.startswith("handler_error"):
                    report.crash(Case("host", b""), f"{key}: {value}")
                elif key.startswith(("recv_fail.", "hello_fail.", "presence_rejected")):
                    # what the host refused before a Peer would see it
                    report.verdicts[f"host {key}"] += value
            await attacker.close()
        nursery.cancel_scope.cancel()


async def _still_accepts(
    report: Report, host: IHost, victim: Libp2pTransport, victim_id: ID, envelope: bytes
) -> None:
    case = Case("valid", envelope)
    with trio.move_on_after(30):
        stream = await host.new_stream(victim_id, [UPDATE_PROTOCOL])
        if await write_frame(stream, envelope, stall_s=5, total_s=10) is None:
            delivery = await victim.incoming.receive()
            report.valid += 1
            judge(report, case, _open(delivery.chunks, delivery.remote))
            return
    report.crash(case, "the host no longer takes an honest envelope")


def fuzz_live(count: int, seed: int = 0) -> Report:
    """`count` cases sent over streams to a real Libp2pTransport on 127.0.0.1."""
    report = Report("live")
    started = time.perf_counter()
    trio.run(_live, report, count, seed)
    report.elapsed_s = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--cases", type=int, default=100_000, help="offline cases (default 100000)")
    parser.add_argument(
        "--live-cases",
        type=int,
        default=2000,
        help="cases over the live host (default 2000; 0: skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=5, help="crashes to print in full")
    args = parser.parse_args()
    # a crash inside open_envelope is logged at error level, and counted here; libp2p logs every
    # stream the victim fails to open to the attacker (who speaks no hello), which is no news
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    reports = [fuzz_offline(args.cases, args.seed)]
    if args.live_cases:
        reports.append(fuzz_live(args.live_cases, args.seed))
    print(f"fuzz_wire --cases {args.cases} --live-cases {args.live_cases} --seed {args.seed}")
    for report in reports:
        print(report.line())
        print(f"         kinds: {dict(sorted(report.kinds.items()))}")
        print(f"         verdicts: {dict(report.verdicts.most_common())}")
        for crash in report.crashes[: args.show]:
            print(f"         CRASH {crash}")
    failed = any(r.crashes or r.accepted_mutations for r in reports)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
