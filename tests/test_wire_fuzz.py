"""Property-based fuzzing of the signed envelope: whatever bytes a peer sends, `open_envelope` answers with
a verdict (never an exception, never INTERNAL_ERROR), no mutation of a sealed envelope gets through, and
every valid envelope round-trips."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
from fuzzing import FUZZ, mutated
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from p2pfed import PROTOCOL_VERSION
from p2pfed.wire import (
    Accepted,
    Identity,
    Limits,
    Rejected,
    RejectReason,
    Schema,
    open_envelope,
    seal,
)
from p2pfed.wire.envelope import MAGIC, SIGNING_PREFIX, Header

RUN = hashlib.sha256(b"run-fuzz").digest()
ALICE = Identity.for_peer(11, 0)
MALLORY = Identity.for_peer(11, 1)
TENSORS = {
    "layer0.lora_B": np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4),
    "head.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
}
SCHEMA = Schema.from_tensors(TENSORS)
SEALED = seal(ALICE, run_digest=RUN, round=4, step=1, tensors=TENSORS, timestamp=1000.0)
PAYLOAD = SEALED[8 + struct.unpack_from(">I", SEALED, 4)[0] + 64 :]  # the safetensors bytes


def _open(data: bytes | list[bytes], remote: str | None = ALICE.peer_id) -> Accepted | Rejected:
    return open_envelope(
        data,
        remote=remote,
        run_digest=RUN,
        schema=SCHEMA,
        limits=Limits(),
        round_window=(3, 5),
        now=1000.0,
    )


def _verdict(result: Accepted | Rejected) -> Rejected:
    """The rejection, checked to be a documented one (INTERNAL_ERROR means an exception was swallowed)."""
    assert isinstance(result, Rejected), "accepted"
    assert result.reason is not RejectReason.INTERNAL_ERROR, result.detail
    return result


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FUZZ
@given(mutated(SEALED))
def test_no_mutation_of_a_sealed_envelope_is_accepted(data: bytes) -> None:
    assume(data != SEALED)
    _verdict(_open(data))
    _verdict(_open(data, remote=None))


@FUZZ
@given(mutated(SEALED), st.lists(st.integers(0, len(SEALED) + 64), max_size=6))
def test_chunks_of_a_mutated_envelope_get_the_verdict_of_one_buffer(
    data: bytes, cuts: list[int]
) -> None:
    assume(data != SEALED)
    assert _verdict(_open(_split(data, cuts))) == _verdict(_open(data))


@FUZZ
@given(st.one_of(st.binary(max_size=2048), st.binary(max_size=512).map(lambda b: MAGIC + b)))
def test_random_bytes_get_a_documented_rejection(data: bytes) -> None:
    _verdict(_open(data))


@FUZZ
@given(
    arrays(np.float32, (8, 4), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    arrays(np.float32, (2, 3), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    st.integers(3, 5),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 4096), max_size=6),
)
def test_valid_envelopes_round_trip(lora_b, head, round_, step, cuts) -> None:
    tensors = {"layer0.lora_B": lora_b, "head.weight": head}
    data = seal(ALICE, run_digest=RUN, round=round_, step=step, tensors=tensors, timestamp=999.0)
    for form in (data, _split(data, cuts)):
        result = _open(form)
        assert isinstance(result, Accepted), result
        assert (result.sender, result.round, result.step) == (ALICE.peer_id, round_, step)
        assert list(result.tensors) == list(tensors)
        for name, array in tensors.items():
            np.testing.assert_array_equal(result.tensors[name], array)


@FUZZ
@given(st.binary(max_size=400))
def test_header_decode_returns_a_header_or_none_and_its_encoding_is_unique(raw: bytes) -> None:
    header = Header.decode(raw)
    if header is not None:
        assert header.encode() == raw


def _signed_by_mallory(header: Header, payload: bytes) -> bytes:
    raw = header.encode()
    signature = MALLORY.sign(SIGNING_PREFIX + raw)
    return MAGIC + struct.pack(">I", len(raw)) + raw + signature + payload


@FUZZ
@given(
    st.integers(0, 2**16 - 1),
    st.sampled_from([RUN, b"", hashlib.sha256(b"other").digest()]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([SCHEMA.digest, bytes(32)]),
    st.one_of(st.binary(max_size=600), st.just(PAYLOAD), mutated(PAYLOAD)),
    st.booleans(),
)
def test_a_hostile_signer_gets_a_verdict_for_any_header_and_payload(
    version, run, round_, step, timestamp, schema_digest, payload, honest_digest
) -> None:
    # properly signed by its own key, so the verdict comes from the fields and the payload
    digest = hashlib.sha256(payload).digest() if honest_digest else bytes(32)
    header = Header(
        version, run, MALLORY.peer_id, round_, step, timestamp, schema_digest, len(payload), digest
    )
    result = _open(_signed_by_mallory(header, payload), remote=MALLORY.peer_id)
    if isinstance(result, Accepted):  # only a payload that really is this schema's tensors
        assert (version, run, schema_digest) == (PROTOCOL_VERSION, RUN, SCHEMA.digest)
        assert [a.shape for a in result.tensors.values()] == [a.shape for a in TENSORS.values()]
        assert all(np.isfinite(a).all() for a in result.tensors.values())
    else:
        _verdict(result)


@FUZZ
@given(st.text(max_size=200).filter(str.isascii))
def test_any_claimed_sender_gets_a_sender_or_signature_rejection(sender: str) -> None:
    header = Header(PROTOCOL_VERSION, RUN, sender, 4, 0, 1000.0, SCHEMA.digest, 0, bytes(32))
    reason = _verdict(_open(_signed_by_mallory(header, b""), remote=None)).reason
    if sender == MALLORY.peer_id:
        assert reason is RejectReason.DIGEST_MISMATCH
    else:
        assert reason in (RejectReason.BAD_SENDER_ID, RejectReason.BAD_SIGNATURE)
