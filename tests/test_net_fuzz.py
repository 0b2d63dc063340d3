"""Property-based fuzzing of what a remote's bytes reach in p2pfed.net: the frame reader answers with the
frame or a FrameError whatever arrives and however the stream ends, and presence (hello and announcement)
decoding answers with a Presence within bounds or None."""

from __future__ import annotations

import json
import string
import struct

import trio
import trio.testing
from fuzzing import FUZZ
from hypothesis import given
from hypothesis import strategies as st
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from p2pfed.net.framing import ACK, FrameError, read_frame, read_frame_chunks, write_frame
from p2pfed.net.presence import MAX_ADDRS, MAX_PEERS, MAX_PRESENCE_BYTES, Presence

MAX_BYTES = 4096
ENDINGS = {
    "eof": StreamEOF(),
    "reset": StreamReset(),
    "other": RuntimeError("unexpected"),  # anything libp2p might raise from a read
    "empty": None,  # read returns b""
}


class Script:
    """A remote that sends `data` in reads of the given sizes, then ends as `ending` says."""

    def __init__(self, data: bytes, sizes: list[int], ending: str) -> None:
        self.data, self.sizes, self.ending = data, sizes, ending
        self.written: list[bytes] = []

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.data:
            error = ENDINGS[self.ending]
            if error is None:
                return b""
            raise error
        size = min(n or len(self.data), self.sizes.pop(0) if self.sizes else len(self.data))
        got, self.data = self.data[:size], self.data[size:]
        return got

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def _read(script: Script) -> bytes | FrameError:
    async def main() -> bytes | FrameError:
        return await read_frame(script, max_bytes=MAX_BYTES, stall_s=2, total_s=10)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _frame(body: bytes, announced: int | None = None) -> bytes:
    return struct.pack(">Q", len(body) if announced is None else announced) + body


stream_bytes = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=600).map(_frame),
    st.tuples(st.binary(max_size=64), st.integers(0, 2**64 - 1)).map(lambda t: _frame(*t)),
    st.tuples(st.binary(max_size=600), st.binary(min_size=1, max_size=16)).map(
        lambda t: _frame(t[0]) + t[1]  # bytes after the frame: not ours to read
    ),
)


@FUZZ
@given(stream_bytes, st.lists(st.integers(1, 64), max_size=20), st.sampled_from(sorted(ENDINGS)))
def test_the_frame_reader_answers_a_frame_or_a_frame_error(data, sizes, ending) -> None:
    result = _read(Script(data, list(sizes), ending))
    complete = len(data) >= 8 and len(data) - 8 >= struct.unpack_from(">Q", data)[0]
    if isinstance(result, bytes):
        (length,) = struct.unpack_from(">Q", data)
        assert result == data[8 : 8 + length]
        assert length <= MAX_BYTES
    else:
        assert isinstance(result, FrameError)
        if complete:  # all announced bytes arrived: only the cap can refuse them
            assert result is FrameError.OVERSIZED


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20))
def test_a_frame_is_read_whatever_the_read_sizes_and_acknowledged_once(body, sizes) -> None:
    script = Script(_frame(body), list(sizes), "eof")
    assert _read(script) == body
    assert script.written == [ACK]


@FUZZ
@given(st.binary(max_size=300_000))
def test_write_frame_and_read_frame_round_trip(body: bytes) -> None:
    class End:
        def __init__(self, stream: trio.abc.Stream) -> None:
            self.stream = stream

        async def read(self, n: int | None = None) -> bytes:
            data = await self.stream.receive_some(n)
            if not data:
                raise StreamEOF
            return data

        async def write(self, data: bytes) -> None:
            await self.stream.send_all(data)

    async def main() -> tuple[object, object]:
        left, right = trio.testing.memory_stream_pair()
        results: dict[str, object] = {}

        async def receive() -> None:
            results["read"] = await read_frame_chunks(
                End(right), max_bytes=1 << 20, stall_s=2, total_s=10
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            results["write"] = await write_frame(End(left), body, stall_s=2, total_s=10)
        return results["write"], results["read"]

    written, read = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert written is None
    assert isinstance(read, tuple) and b"".join(read) == body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=12), inner, max_size=10)
    ),
    max_leaves=20,
)
presence_like = st.fixed_dictionaries(
    {},
    optional={
        "run": json_values | st.text(max_size=300),
        "addrs": json_values | st.lists(st.text(max_size=300), max_size=10),
        "peers": json_values
        | st.dictionaries(st.text(max_size=300), st.lists(st.text(max_size=40), max_size=10)),
        "round": json_values | st.integers(-5, 2**60),
        "full": json_values,
    },
)


def _bounded(presence: Presence) -> None:
    assert isinstance(presence.run, str) and len(presence.run) <= 256
    assert len(presence.addrs) <= MAX_ADDRS and all(isinstance(a, str) for a in presence.addrs)
    assert len(presence.peers) <= MAX_PEERS
    for pid, addrs in presence.peers:
        assert isinstance(pid, str) and len(addrs) <= MAX_ADDRS
        assert all(isinstance(a, str) for a in addrs)
    assert isinstance(presence.round, int) and not isinstance(presence.round, bool)
    assert presence.round == -1 or 0 <= presence.round < 2**53
    assert isinstance(presence.full, bool)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        presence_like.map(lambda body: json.dumps(body).encode()),
        json_values.map(lambda body: json.dumps(body).encode()),
        st.integers(1, 20_000).map(lambda depth: b'{"run":' + b"[" * depth + b"]" * depth + b"}"),
    )
)
def test_presence_decodes_to_a_bounded_presence_or_none(data: bytes) -> None:
    presence = Presence.decode(data)
    if presence is not None:
        _bounded(presence)


ADDR = st.text(alphabet=string.ascii_letters + string.digits + "/.:", max_size=40)


@FUZZ
@given(
    st.text(max_size=64),
    st.lists(ADDR, max_size=MAX_ADDRS),
    st.dictionaries(ADDR.filter(bool), st.lists(ADDR, max_size=MAX_ADDRS), max_size=MAX_PEERS),
    st.integers(-1, 2**53 - 1),
    st.booleans(),
)
def test_presence_round_trips(run, addrs, peers, round_, full) -> None:
    sent = Presence(
        run,
        tuple(addrs),
        tuple((pid, tuple(a)) for pid, a in sorted(peers.items())),
        round_,
        full,
    )
    encoded = sent.encode()
    assert len(encoded) <= MAX_PRESENCE_BYTES
    assert Presence.decode(encoded) == sent
