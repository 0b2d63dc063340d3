"""A peer's checkpoint: one safetensors file (the flat vector) whose metadata holds the round and the
reputation table as JSON. Written atomically, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from p2pfed.config import write_atomic
from p2pfed.errors import CheckpointError
from p2pfed.types import FloatVector

FILENAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the next round to run
    vector: FloatVector
    reputation: dict[str, Any] = field(default_factory=dict)
    run_digest: str = ""


def save_checkpoint(directory: Path, state: Checkpoint) -> Path:
    metadata = {
        "round": str(state.round),
        "reputation": json.dumps(state.reputation),
        "run_digest": state.run_digest,
    }
    data = save({"vector": np.ascontiguousarray(state.vector, dtype=np.float32)}, metadata=metadata)
    path = Path(directory) / FILENAME
    write_atomic(path, data)
    return path


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in `directory`, or None if there is none yet."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = fh.metadata() or {}
            vector = fh.get_tensor("vector")
        return Checkpoint(
            round=int(metadata["round"]),
            vector=vector,
            reputation=json.loads(metadata.get("reputation", "{}")),
            run_digest=metadata.get("run_digest", ""),
        )
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); move it away to start afresh") from exc
