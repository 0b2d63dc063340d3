"""One length-prefixed frame per stream, read and written under deadlines.

    u64 length (big-endian) | body            then the receiver answers one ACK byte

A killed sender looks like a clean end of stream in py-libp2p, so the length prefix is what tells a
truncated frame from a complete one. Every frame is bounded by a stall deadline (no progress for that
long) and by a total deadline; nothing here raises for what the remote did.

One cancel scope per frame carries the stall deadline and is pushed forward whenever bytes move, rather
than a fresh scope per read or write: at tens of MB/s the per-call scopes were a visible share of the
event loop's time, and so were the copies of each chunk: the body is written as memoryview slices, and
`read_frame_chunks` hands the body over as the chunks it was read in, so that whoever uses it can join
them off the event loop (`bytes.join` of large bytes releases the GIL; a copy on the loop does not).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

import trio
from libp2p.network.stream.exceptions import StreamEOF

_LENGTH = struct.Struct(">Q")
ACK = b"\x06"
CHUNK = 256 * 1024  # writes of this size: progress is observable per chunk, yamux frames stay small
_READ = 1 << 20  # largest single read


class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class FrameError(StrEnum):
    OVERSIZED = "oversized"  # announced length above the cap
    OVER_BUDGET = (
        "over_budget"  # announced length refused by the receiver's budget (bytes in flight)
    )
    TRUNCATED = "truncated"  # stream ended before the announced length
    STALLED = "stalled"  # no progress within the stall deadline
    TIMEOUT = "timeout"  # the whole frame took longer than the total deadline
    BROKEN = "broken"  # reset or other stream error
    NO_ACK = "no_ack"  # receiver did not confirm


class _Progress:
    """A stall deadline that moves forward each time bytes move; `scope` is cancelled when it passes."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.scope = trio.CancelScope(deadline=trio.current_time() + stall_s)
        self.on_stall = FrameError.STALLED  # what a stall means at this point of the frame

    def made(self) -> None:
        self.scope.deadline = trio.current_time() + self.stall_s


async def _read_exactly(stream: Stream, n: int, progress: _Progress) -> list[bytes] | FrameError:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        try:
            got = await stream.read(min(remaining, _READ))
        except Exception as exc:  # StreamEOF, StreamReset, StreamError: all mean "no more bytes"
            return FrameError.TRUNCATED if isinstance(exc, StreamEOF) else FrameError.BROKEN
        if not got:
            return FrameError.TRUNCATED
        progress.made()
        parts.append(got)
        remaining -= len(got)
    return parts


async def _write(stream: Stream, data: bytes | memoryview, progress: _Progress) -> bool:
    try:
        await stream.write(data)  # type: ignore[arg-type]  # libp2p slices and concatenates: any buffer
    except Exception:  # StreamClosed, StreamReset, StreamError
        return False
    progress.made()
    return True


async def read_frame(
    stream: Stream, *, max_bytes: int, stall_s: float, total_s: float
) -> bytes | FrameError:
    """Read one frame and acknowledge it; a FrameError says why not."""
    chunks = await read_frame_chunks(stream, max_bytes=max_bytes, stall_s=stall_s, total_s=total_s)
    return chunks if isinstance(chunks, FrameError) else b"".join(chunks)


async def read_frame_chunks(
    stream: Stream,
    *,
    max_bytes: int,
    stall_s: float,
    total_s: float,
    admit_length: Callable[[int], bool] | None = None,
) -> tuple[bytes, ...] | FrameError:
    """`read_frame`, with the body left in the chunks it arrived in (no copy). `admit_length`, if
    given, sees the announced length before any of the body is read and may refuse it."""
    with trio.move_on_after(total_s):
        progress = _Progress(stall_s)
        with progress.scope:
            return await _read_and_ack(stream, max_bytes, progress, admit_length)
        return FrameError.STALLED
    return FrameError.TIMEOUT


async def _read_and_ack(
    stream: Stream,
    max_bytes: int,
    progress: _Progress,
    admit_length: Callable[[int], bool] | None = None,
) -> tuple[bytes, ...] | FrameError:
    prefix = await _read_exactly(stream, _LENGTH.size, progress)
    if isinstance(prefix, FrameError):
        return prefix
    (length,) = _LENGTH.unpack(b"".join(prefix))
    if length > max_bytes:
        return FrameError.OVERSIZED
    if admit_length is not None and not admit_length(length):
        return FrameError.OVER_BUDGET
    body = await _read_exactly(stream, length, progress)
    if isinstance(body, FrameError):
        return body
    if not await _write(stream, ACK, progress):
        return FrameError.BROKEN
    return tuple(body)


async def write_frame(
    stream: Stream, data: bytes, *, stall_s: float, total_s: float
) -> FrameError | None:
    """Write one frame and wait for the receiver's ACK; None on success."""
    with trio.move_on_after(total_s):
        progress = _Progress(stall_s)
        with progress.scope:
            return await _write_and_wait_ack(stream, data, progress)
        return progress.on_stall
    return FrameError.TIMEOUT


async def _write_and_wait_ack(
    stream: Stream, data: bytes, progress: _Progress
) -> FrameError | None:
    view = memoryview(data)
    if not await _write(stream, _LENGTH.pack(len(view)) + view[:CHUNK], progress):
        return FrameError.BROKEN
    for offset in range(CHUNK, len(view), CHUNK):
        if not await _write(stream, view[offset : offset + CHUNK], progress):
            return FrameError.BROKEN
    progress.on_stall = FrameError.NO_ACK
    ack = await _read_exactly(stream, 1, progress)
    if isinstance(ack, FrameError) or ack != [ACK]:
        return FrameError.NO_ACK
    return None
