"""Frozen configuration dataclasses. The CLI builds them; a TOML file can too.

`RunManifest` is the contract every peer of one run must agree on; its digest names the gossip topic and
is bound into every signed message, so peers of different runs are never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from p2pfed import PROTOCOL_VERSION
from p2pfed.errors import ConfigError


@dataclass(frozen=True)
class RunManifest:
    """What every peer of a run must share. Anything that changes the meaning of an adapter goes here."""

    model: str = "minilm"
    base_hash: str = ""  # sha256 of the base weights; "" = not pinned (simulations in one process)
    task: str = "sms-spam"  # built-in task name, or a name for the user's label set
    labels: tuple[str, ...] = ()  # class names, in index order (classification)
    lora_mode: str = "shared-a"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    adapt_layers: int = 1
    max_tokens: int = 64
    seed: int = 0  # shared seed: frozen A, initial head and test split derive from it
    protocol_version: int = PROTOCOL_VERSION

    def digest(self) -> bytes:
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"p2pfed-run:" + canonical.encode()).digest()

    @property
    def topic(self) -> str:
        return f"/p2pfed/run/{self.digest().hex()[:16]}"

    def save(self, path: Path) -> None:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        write_atomic(Path(path), tomli_w.dumps({"run": data}).encode())

    @classmethod
    def load(cls, path: Path) -> RunManifest:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read run manifest {path}: {exc}") from exc
        return from_mapping(cls, raw.get("run", raw), source=str(path))


@dataclass(frozen=True)
class GossipConfig:
    rounds: int = 6
    local_steps: int = 10  # K: SAM steps on local data per round
    gossip_steps: int = 4  # Q: gossip/mix steps per round (DFedSAM-MGS); 1 = D-PSGD
    rho: float = 0.05  # SAM radius; 0 = plain local SGD (D-PSGD)
    lr: float = 3e-2  # Adam, fresh every round; 1e-2 learns trec 2× slower, 6e-2 oscillates (measured)
    # τ of the local loss's logit adjustment, cross-entropy(logits + τ·log π_local): a peer's skewed label
    # mix stops biasing its update against the classes it lacks (non-IID client drift); 0 = plain loss.
    # τ = 1 is the balanced loss of Menon et al.; τ = 0.5 left sms-spam's minority class to the white-box
    # attacker, and τ = 1 costs about 2 points on IID trec (figures: docs/robustness.md)
    logit_adjust: float = 1.0
    step_timeout: float = 60.0  # seconds a peer waits for its neighbours in one gossip step
    round_window: int = 2  # accept updates claiming rounds within this many of ours (late joiners, stragglers)


def from_mapping(cls: type, data: dict[str, Any], *, source: str) -> Any:
    """Build a frozen dataclass from a mapping, rejecting unknown keys with a message that lists valid ones."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write a file so that readers see either the old or the new content, never a torn one.

    The file is created 0600 (as `mkstemp` does) unless `mode` says otherwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["GossipConfig", "RunManifest", "from_mapping", "write_atomic"]
