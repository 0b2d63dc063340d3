"""Frozen configuration dataclasses. The CLI builds them; a TOML file can too.

`RunManifest` is the contract every peer of one run must agree on; its digest names the gossip topic and
is bound into every signed message, so peers of different runs are never mixed. `GossipConfig` is the
schedule one peer runs; the parts of it that peers must share (Q, the round window) are the contract's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfed import PROTOCOL_VERSION
from p2pfed.errors import ConfigError

LORA_MODES = ("shared-a", "full")
MAX_NEIGHBOURS = 16  # libp2p neighbours a peer keeps (join, the libp2p simulations)
# A finished `join` stays up this long at most while a neighbour is still behind its last round (one
# restarted near the end, say), answering it with that round's updates so that it can finish too.
LINGER_S = 120.0
ANNOUNCE_INTERVAL_S = 5.0  # seconds between presence announcements (peer exchange) on the run's topic


def run_topic(run_digest: bytes) -> str:
    """The gossipsub topic of a run: its whole digest, so that no two runs share one."""
    return f"/p2pfed/run/{run_digest.hex()}"


@dataclass(frozen=True)
class GossipConfig:
    rounds: int = 6
    local_steps: int = 10  # K: SAM steps on local data per round
    gossip_steps: int = 4  # Q: gossip/mix steps per round (DFedSAM-MGS); 1 = D-PSGD. Part of the contract
    rho: float = 0.05  # SAM radius; 0 = plain local SGD (D-PSGD)
    lr: float = 3e-2  # Adam, fresh every round; 1e-2 learns trec 2× slower, 6e-2 oscillates (measured)
    # τ of the local loss's logit adjustment, cross-entropy(logits + τ·log π_local): a peer's skewed label
    # mix stops biasing its update against the classes it lacks (non-IID client drift); 0 = plain loss.
    # τ = 1 is the balanced loss of Menon et al.; τ = 0.5 left sms-spam's minority class to the white-box
    # attacker, and τ = 1 costs about 2 points on IID trec (figures: docs/robustness.md)
    logit_adjust: float = 1.0
    # how lr changes over the rounds: "constant", or "cosine" from lr down to lr·lr_final at the last round.
    # Each peer computes it from the round number alone, so peers of one run stay on one schedule
    lr_schedule: str = "constant"
    lr_final: float = 0.1  # the last round's lr as a fraction of `lr` (cosine)
    # after the Q gossip steps, stretch the round's move (anchor -> mixed) back toward the length of our own
    # local update, at most this many times; 1 = off. Non-IID updates cancel in the mix (p2pfed/peer/schedule.py)
    restore_update: float = 1.0
    step_timeout: float = 60.0  # seconds a peer waits for its neighbours in one gossip step
    # accept updates claiming rounds within this many of ours (late joiners, stragglers). Part of the contract
    round_window: int = 2

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.restore_update < 1.0:
            raise ConfigError(f"restore_update is a stretch factor: it must be >= 1 (1 = off), got {self.restore_update}")
        if not 0.0 < self.lr_final <= 1.0:
            raise ConfigError(f"lr_final is a fraction of lr: it must be in (0, 1], got {self.lr_final}")

    def lr_at(self, rnd: int) -> float:
        """The local learning rate of round `rnd` (0-based).

        Cosine decay (Loshchilov & Hutter, SGDR) from `lr` at round 0 to `lr·lr_final` at round `rounds - 1`;
        rounds past the end (a daemon that keeps going) stay at the final rate. Why decay at all: each
        round's local update on a label-skewed shard pulls a peer toward its own classes by about lr·K
        (Adam's steps are near lr whatever the gradient), and the Q gossip steps that follow only partly
        undo it, so with a constant lr the last round's drift is still in the model a user keeps, and the
        curve swings from round to round. A smaller last step leaves the peers nearer their neighbours'
        consensus. Measured: in the default 6 rounds on trec at Dirichlet α = 0.3 it costs 5.6 points
        (59.2 against 64.8), because what is missing there is speed, so the default stays "constant"
        (docs/noniid.md).
        """
        if self.lr_schedule == "constant" or self.rounds <= 1:
            return self.lr
        progress = min(max(rnd, 0), self.rounds - 1) / (self.rounds - 1)
        floor = self.lr * self.lr_final
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def at_round(self, rnd: int) -> GossipConfig:
        """This schedule with the learning rate of round `rnd`, as `LocalModel.train` reads it."""
        return dataclasses.replace(self, lr=self.lr_at(rnd), lr_schedule="constant")


LR_SCHEDULES = ("constant", "cosine")


SHARED_SCHEDULE = ("gossip_steps", "round_window")  # the GossipConfig fields every peer of a run must share


@dataclass(frozen=True)
class RunManifest:
    """The run contract: what every peer of a run must share. Anything that changes the meaning of an
    adapter or of a gossip step goes here; its digest names the run's topic and is signed into every update.
    """

    model: str = "minilm"  # registry name ("minilm", "smollm2") or a path to a local HF model dir
    base_hash: str = ""  # sha256 of the base weights; "" = not pinned (simulations in one process)
    task: str = "sms-spam"  # "sms-spam", "trec" (6 coarse classes), a .jsonl file, or a name for `labels`
    labels: tuple[str, ...] = ()  # class names, in index order (classification); () = read from the data
    # "shared-a": A is drawn from the seed, identical in every peer and frozen; B and the head train, so
    # averaging vectors averages the weight deltas exactly. "full": A and B both train (plain LoRA).
    lora_mode: str = "shared-a"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # LoRA only on the top N transformer layers; the layers below are frozen and their outputs cached once
    # per dataset (see p2pfed/learn/features.py). On MiniLM, 1 layer steps ~5x faster than 2 (the top layer
    # is computed for the [CLS] token only) and reaches 0.98 on sms-spam; 2 layers gain ~5 points on trec.
    adapt_layers: int = 1
    max_tokens: int = 64
    seed: int = 0  # shared seed: frozen A, initial head and test split derive from it
    gossip_steps: int = GossipConfig.gossip_steps  # Q: peers with another Q would mix at other steps
    round_window: int = GossipConfig.round_window  # rounds of tolerance for updates (see GossipConfig)
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.lora_mode not in LORA_MODES:
            raise ConfigError(f"lora_mode must be one of {LORA_MODES}, got {self.lora_mode!r}")
        for name in ("lora_rank", "adapt_layers", "max_tokens", "gossip_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.round_window < 0:
            raise ConfigError(f"round_window must be >= 0, got {self.round_window}")

    def digest(self) -> bytes:
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"p2pfed-run:" + canonical.encode()).digest()

    @property
    def topic(self) -> str:
        return run_topic(self.digest())

    def schedule(self, local: GossipConfig) -> GossipConfig:
        """`local` with the contract's Q and round window: the schedule a peer of this run runs."""
        return dataclasses.replace(local, **{name: getattr(self, name) for name in SHARED_SCHEDULE})

    def to_mapping(self) -> dict[str, Any]:
        """The `[run]` table of a run file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str) -> RunManifest:
        """Read a `[run]` table; one written for another protocol version is refused with what to do."""
        version = data.get("protocol_version")
        if version != PROTOCOL_VERSION:
            raise ConfigError(
                f"{source}: this run manifest is for protocol version {version}, this p2pfed speaks "
                f"{PROTOCOL_VERSION} (the run contract now includes gossip_steps and round_window): "
                "re-run `p2pfed init` to write a new run file, and give every peer of the run the new one"
            )
        manifest: RunManifest = from_mapping(cls, data, source=source)
        return manifest

    @classmethod
    def load(cls, path: Path) -> RunManifest:
        raw = read_toml(path, what="run manifest")
        return cls.from_mapping(raw.get("run", raw), source=str(path))


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


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


__all__ = [
    "ANNOUNCE_INTERVAL_S",
    "LORA_MODES",
    "LINGER_S",
    "MAX_NEIGHBOURS",
    "SHARED_SCHEDULE",
    "GossipConfig",
    "RunManifest",
    "from_mapping",
    "read_toml",
    "run_topic",
    "write_atomic",
]
