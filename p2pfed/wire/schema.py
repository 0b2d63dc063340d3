"""What an update must look like (tensor names, shapes, dtypes) and how big an envelope may be."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Schema:
    """The ordered tensors of one run's adapter update; every peer of a run derives the same one."""

    specs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError("tensor names in a schema must be unique")
        for spec in self.specs:
            np.dtype(spec.dtype)  # raises TypeError for an unknown dtype: a local bug

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> Schema:
        return cls(
            tuple(
                TensorSpec(name, tuple(int(d) for d in a.shape), a.dtype.name)
                for name, a in tensors.items()
            )
        )

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of a canonical text form: the same schema gives the same digest in every process."""
        lines = [
            f"{s.name}|{','.join(map(str, s.shape))}|{np.dtype(s.dtype).str}" for s in self.specs
        ]
        return hashlib.sha256(("p2pfed-schema:\n" + "\n".join(lines)).encode()).digest()

    @cached_property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    @cached_property
    def by_name(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.specs}


@dataclass(frozen=True)
class Limits:
    """Caps applied before any parsing, so a hostile envelope costs at most a few comparisons."""

    max_total_bytes: int | None = None  # None: schema.nbytes + slack (see total_cap)
    slack_bytes: int = (
        64 * 1024
    )  # room for the envelope header, signature and safetensors' JSON header
    slack_per_tensor: int = 256  # safetensors' JSON header grows with each tensor's name and shape
    max_header_bytes: int = 1024  # the signed header is ~200 bytes
    max_clock_skew_s: float | None = (
        600.0  # reject timestamps this far in the future; None: no check
    )

    def total_cap(self, schema: Schema) -> int:
        if self.max_total_bytes is not None:
            return self.max_total_bytes
        return schema.nbytes + self.slack_bytes + self.slack_per_tensor * len(schema.specs)
