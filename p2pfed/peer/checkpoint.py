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
SEALED_DIR = "sealed"  # that round's envelopes, each written before it is sent


def mark_signed(directory: Path, rnd: int, *, train_loss: float | None = None) -> None:
    """Record, before the first update of round `rnd` is signed, that this node signs that round (and the
    loss of the round's local training, for a resumed round's report). A node killed mid-round and
    restarted must not sign the round again: its second envelopes of a step would differ from the first
    ones (another training, another mix), and its neighbours would see an equivocation. It resumes the
    round from the envelopes it sent instead (`save_sealed`, `resume_point`)."""
    directory = Path(directory)
    write_atomic(directory / SIGNED_FILE, json.dumps({"round": rnd, "train_loss": train_loss}).encode())
    for old in (directory / SEALED_DIR).glob("*.env"):
        if not old.name.startswith(f"{rnd}-"):  # an earlier round's: never sent again
            old.unlink(missing_ok=True)


def save_sealed(directory: Path, rnd: int, step: int, envelope: bytes) -> None:
    """Keep our signed envelope of (rnd, step), before it is sent: restarted, the node sends these same
    bytes again (a duplicate, never an equivocation) and goes on with the round from there."""
    write_atomic(Path(directory) / SEALED_DIR / f"{rnd}-{step}.env", envelope)


def _signed(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((Path(directory) / SIGNED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("round"), int) or value["round"] < 0:
        return None
    return value


def last_signed(directory: Path) -> int | None:
    """The round of the last `mark_signed`, or None (none yet, or the file is unreadable: a crash between
    its write and rename cannot leave one, so an unreadable file was not written by us and is ignored)."""
    signed = _signed(directory)
    return None if signed is None else int(signed["round"])


@dataclass(frozen=True)
class ResumePoint:
    """Where a node restarted from its directory goes on. `sealed`: its envelopes of `round`, by step, that
    may have gone out before it stopped (empty: nothing of `round` was sent, so it runs the round afresh);
    `train_loss`: that round's local training loss, when the round is resumed."""

    round: int
    sealed: dict[int, bytes] = field(default_factory=dict)
    train_loss: float | None = None


def resume_point(directory: Path, state: Checkpoint | None) -> ResumePoint:
    """The checkpoint's next round, resumed from its sealed envelopes if the node had begun to sign it
    (`mark_signed`). Envelopes are written in step order from step 0, so they are steps 0..k; if they are
    not (a file lost), or the mark is past the checkpoint's round (the checkpoint is older than the mark),
    the marked round cannot be resumed and the node goes on after it: it never signs a round twice."""
    directory = Path(directory)
    start = 0 if state is None else state.round
    signed = _signed(directory)
    if signed is None or signed["round"] < start:
        return ResumePoint(start)
    if signed["round"] > start:
        return ResumePoint(signed["round"] + 1)
    sealed: dict[int, bytes] = {}
    for path in (directory / SEALED_DIR).glob(f"{start}-*.env"):
        step = path.stem.split("-", 1)[1]
        if step.isdigit():
            sealed[int(step)] = path.read_bytes()
    if not sealed:
        return ResumePoint(start)  # marked, but nothing went out: run the round afresh
    if sorted(sealed) != list(range(len(sealed))):
        return ResumePoint(start + 1)
    loss = signed.get("train_loss")
    return ResumePoint(start, sealed, float(loss) if isinstance(loss, (int, float)) else None)
