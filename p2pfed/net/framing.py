"""One length-prefixed frame per stream, read and written under deadlines.

    u64 length (big-endian) | body            then the receiver answers one ACK byte

A killed sender looks like a clean end of stream in py-libp2p, so the length prefix is what tells a
truncated frame from a complete one. Every read and write is bounded by a stall deadline (no progress
for that long) and the whole frame by a total deadline; nothing here raises for what the remote did.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Protocol

import trio
from libp2p.network.stream.exceptions import StreamEOF

_LENGTH = struct.Struct(">Q")
ACK = b"\x06"
CHUNK = 256 * 1024  # writes of this size: progress is observable per chunk, yamux frames stay small


class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class FrameError(StrEnum):
    OVERSIZED = "oversized"  # announced length above the cap
    TRUNCATED = "truncated"  # stream ended before the announced length
    STALLED = "stalled"  # no progress within the stall deadline
    TIMEOUT = "timeout"  # the whole frame took longer than the total deadline
    BROKEN = "broken"  # reset or other stream error
    NO_ACK = "no_ack"  # receiver did not confirm


async def _read_some(stream: Stream, n: int, stall_s: float) -> bytes | FrameError:
    with trio.move_on_after(stall_s):
        try:
            return await stream.read(n)
        except Exception as exc:  # StreamEOF, StreamReset, StreamError: all mean "no more bytes"
            return FrameError.TRUNCATED if isinstance(exc, StreamEOF) else FrameError.BROKEN
    return FrameError.STALLED


async def read_exactly(stream: Stream, n: int, *, stall_s: float) -> bytes | FrameError:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        got = await _read_some(stream, min(remaining, 1 << 20), stall_s)
        if isinstance(got, FrameError):
            return got
        if not got:
            return FrameError.TRUNCATED
        parts.append(got)
        remaining -= len(got)
    return b"".join(parts)


async def read_frame(
    stream: Stream, *, max_bytes: int, stall_s: float, total_s: float
) -> bytes | FrameError:
    """Read one frame and acknowledge it; a FrameError says why not."""
    with trio.move_on_after(total_s):
        prefix = await read_exactly(stream, _LENGTH.size, stall_s=stall_s)
        if isinstance(prefix, FrameError):
            return prefix
        (length,) = _LENGTH.unpack(prefix)
        if length > max_bytes:
            return FrameError.OVERSIZED
        body = await read_exactly(stream, length, stall_s=stall_s) if length else b""
        if isinstance(body, FrameError):
            return body
        if await _write(stream, ACK, stall_s) is not None:
            return FrameError.BROKEN
        return body
    return FrameError.TIMEOUT


async def _write(stream: Stream, data: bytes, stall_s: float) -> FrameError | None:
    with trio.move_on_after(stall_s):
        try:
            await stream.write(data)
        except Exception:  # StreamClosed, StreamReset, StreamError
            return FrameError.BROKEN
        return None
    return FrameError.STALLED


async def write_frame(
    stream: Stream, data: bytes, *, stall_s: float, total_s: float
) -> FrameError | None:
    """Write one frame and wait for the receiver's ACK; None on success."""
    with trio.move_on_after(total_s):
        view = memoryview(data)
        error = await _write(stream, _LENGTH.pack(len(data)) + bytes(view[:CHUNK]), stall_s)
        for offset in range(CHUNK, len(view), CHUNK):
            if error is not None:
                return error
            error = await _write(stream, bytes(view[offset : offset + CHUNK]), stall_s)
        if error is not None:
            return error
        ack = await read_exactly(stream, 1, stall_s=stall_s)
        if isinstance(ack, FrameError) or ack != ACK:
            return FrameError.NO_ACK
        return None
    return FrameError.TIMEOUT
