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
from p2pfed.robust.reputation import ReputationTable
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
    """The checkpoint in `directory`, or None if there is none yet; CheckpointError if a node could not
    resume from it (unreadable, or decoded to something `save_checkpoint` never writes)."""
    path = Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = fh.metadata() or {}
            vector = fh.get_tensor("vector")
        state = Checkpoint(
            round=int(metadata["round"]),
            vector=vector,
            reputation=json.loads(metadata.get("reputation", "{}")),
            run_digest=metadata.get("run_digest", ""),
        )
    except (SafetensorError, OSError, KeyError, ValueError, RecursionError) as exc:
        raise CheckpointError(_unreadable(path, str(exc))) from exc
    problem = _unusable(state)
    if problem is not None:
        raise CheckpointError(_unreadable(path, problem))
    return state


def _unreadable(path: Path, problem: str) -> str:
    return f"checkpoint {path} is unreadable ({problem}); move it away to start afresh"


def _unusable(state: Checkpoint) -> str | None:
    """Why a resuming node could not use `state`, or None."""
    if state.round < 0:
        return f"round {state.round}"
    if state.vector.ndim != 1 or state.vector.dtype != np.float32:
        return (
            f"vector is {state.vector.dtype}{list(state.vector.shape)}, not a flat float32 vector"
        )
    if not isinstance(state.reputation, dict):
        return "reputation is not a table"
    try:
        ReputationTable.from_dict(state.reputation)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        return f"reputation does not restore: {exc}"
    return None


SIGNED_FILE = "signed.json"  # the newest round this node has signed an update for


def mark_signed(directory: Path, rnd: int) -> None:
    """Record, before the first update of round `rnd` is signed, that this node signs that round. A node
    killed mid-round and restarted must not sign the round again: its second envelopes of a step would
    differ from the first ones (another mix), and its neighbours would see an equivocation."""
    write_atomic(Path(directory) / SIGNED_FILE, json.dumps({"round": rnd}).encode())


def last_signed(directory: Path) -> int | None:
    """The round of the last `mark_signed`, or None (none yet, or the file is unreadable: a crash between
    its write and rename cannot leave one, so an unreadable file was not written by us and is ignored)."""
    try:
        value = json.loads((Path(directory) / SIGNED_FILE).read_text())["round"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value >= 0 else None


def resume_round(directory: Path, state: Checkpoint | None) -> int:
    """The round a node restarted from `directory` runs first: the checkpoint's next round, or the one
    after it if the node had begun to sign updates for it (`mark_signed`) before it stopped."""
    start = 0 if state is None else state.round
    signed = last_signed(directory)
    return signed + 1 if signed is not None and signed >= start else start
