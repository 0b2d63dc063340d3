"""Framing under a virtual clock: what a slow, silent or broken remote turns into, never a hang."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import trio
import trio.testing
from libp2p.network.stream.exceptions import StreamEOF

from p2pfed.net.framing import CHUNK, FrameError, read_frame, read_frame_chunks, write_frame

STALL_S, TOTAL_S = 2.0, 10.0
T = TypeVar("T")


class Pipe:
    """One end of an in-memory stream pair, with libp2p's read/write names."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def read(self, n: int | None = None) -> bytes:
        data = await self.stream.receive_some(n)
        if not data:
            raise StreamEOF
        return data

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)


class Trickle:
    """Announces `length` bytes, then delivers one byte per `every_s`: always progressing, never done."""

    def __init__(self, length: int, every_s: float) -> None:
        self.pending = struct.pack(">Q", length)
        self.every_s = every_s

    async def read(self, n: int | None = None) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        await trio.sleep(self.every_s)
        return b"\x01"

    async def write(self, data: bytes) -> None:
        pass


class Silent:
    """Accepts nothing and says nothing."""

    async def read(self, n: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def write(self, data: bytes) -> None:
        await trio.sleep_forever()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_frame_and_its_ack_cross_a_pipe() -> None:
    body = bytes(range(256)) * (3 * CHUNK // 256 + 7)  # several chunks and a partial one

    async def main() -> tuple[object, object]:
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            received: list[object] = []

            async def receive() -> None:
                received.append(
                    await read_frame(Pipe(b), max_bytes=len(body), stall_s=STALL_S, total_s=TOTAL_S)
                )

            nursery.start_soon(receive)
            sent = await write_frame(Pipe(a), body, stall_s=STALL_S, total_s=TOTAL_S)
        return sent, received[0]

    sent, received = run(main)
    assert sent is None and received == body


def test_a_large_frame_is_handed_over_in_the_chunks_it_was_read_in() -> None:
    body = bytes(range(256)) * (3 * CHUNK // 256 + 7)

    async def main() -> object:
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(write_frame, Pipe(a), body, stall_s=STALL_S, total_s=TOTAL_S))
            return await read_frame_chunks(
                Pipe(b), max_bytes=len(body), stall_s=STALL_S, total_s=TOTAL_S
            )

    chunks = run(main)
    assert isinstance(chunks, tuple) and len(chunks) > 1  # not copied into one buffer on the loop
    assert b"".join(chunks) == body


def test_a_steady_trickle_is_timed_out_by_the_total_deadline_not_the_stall_one() -> None:
    async def main() -> tuple[object, float]:
        started = trio.current_time()
        result = await read_frame(
            Trickle(1000, every_s=STALL_S / 2), max_bytes=1000, stall_s=STALL_S, total_s=TOTAL_S
        )
        return result, trio.current_time() - started

    result, elapsed = run(main)
    assert result is FrameError.TIMEOUT and elapsed == TOTAL_S


def test_silence_is_a_stall_on_either_side() -> None:
    async def main() -> tuple[object, object]:
        reading = await read_frame(Silent(), max_bytes=10, stall_s=STALL_S, total_s=TOTAL_S)
        writing = await write_frame(Silent(), b"x", stall_s=STALL_S, total_s=TOTAL_S)
        return reading, writing

    assert run(main) == (FrameError.STALLED, FrameError.STALLED)


def test_a_receiver_that_reads_everything_but_never_acknowledges() -> None:
    async def main() -> object:
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:

            async def swallow() -> None:
                while await b.receive_some():
                    pass

            nursery.start_soon(swallow)
            result = await write_frame(Pipe(a), b"x" * 1000, stall_s=STALL_S, total_s=TOTAL_S)
            nursery.cancel_scope.cancel()
        return result

    assert run(main) is FrameError.NO_ACK


def test_an_early_end_is_truncation_and_a_big_promise_is_refused() -> None:
    async def main() -> tuple[object, object]:
        results = []
        for prefix_and_body, cap in (
            (struct.pack(">Q", 100) + b"y" * 10, 100),
            (struct.pack(">Q", 101), 100),
        ):
            a, b = trio.testing.memory_stream_pair()
            await a.send_all(prefix_and_body)
            await a.send_eof()
            results.append(
                await read_frame(Pipe(b), max_bytes=cap, stall_s=STALL_S, total_s=TOTAL_S)
            )
        return results[0], results[1]

    assert run(main) == (FrameError.TRUNCATED, FrameError.OVERSIZED)
