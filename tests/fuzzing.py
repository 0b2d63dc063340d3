"""Shared by the property-based fuzz tests: deterministic settings and a byte-mutation strategy."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# derandomize: the same examples on every run and machine; no example database written to disk
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with 1-4 bytes flipped, inserted or deleted, or cut short, or with bytes appended."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)
