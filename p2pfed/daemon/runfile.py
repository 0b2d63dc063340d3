"""The run file (`run.toml`): the `[run]` manifest every peer must agree on, plus `[gossip]` defaults.

The manifest's digest names the run and is bound into every signed update. The `[gossip]` table holds the
schedule peers of one run should share (K, Q, rounds, deadlines); it is advice the `join` options may
override, not part of the digest.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from p2pfed.config import GossipConfig, RunManifest, from_mapping, write_atomic
from p2pfed.errors import ConfigError


@dataclass(frozen=True)
class RunFile:
    manifest: RunManifest
    gossip: GossipConfig = field(default_factory=GossipConfig)

    def save(self, path: Path) -> None:
        run = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.manifest).items()}
        body = {"run": run, "gossip": dataclasses.asdict(self.gossip)}
        write_atomic(Path(path), tomli_w.dumps(body).encode())

    @classmethod
    def load(cls, path: Path) -> RunFile:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read run file {path}: {exc}") from exc
        if "run" not in raw:
            raise ConfigError(f"{path}: no [run] table; create one with `p2pfed init {path}`")
        manifest = from_mapping(RunManifest, raw["run"], source=f"{path} [run]")
        gossip = from_mapping(GossipConfig, raw.get("gossip", {}), source=f"{path} [gossip]")
        return cls(manifest, gossip)


def create_manifest(
    *,
    model: str,
    task: str,
    labels: tuple[str, ...] = (),
    lora_mode: str = "shared-a",
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    adapt_layers: int = 1,
    max_tokens: int = 64,
    seed: int = 0,
) -> RunManifest:
    """A manifest pinning the base model's content hash (hashes the weight files; no model download).

    `task` is a built-in task (its labels are read from the data) or a .jsonl file (labels: its class
    names, sorted) or any name together with explicit `labels`.
    """
    from p2pfed.learn.data import BUILTIN_TASKS, load_task
    from p2pfed.learn.models import resolve_model

    if not labels:
        if task not in BUILTIN_TASKS and not task.endswith(".jsonl"):
            raise ConfigError(f"task {task!r} is not built in: give its class names with --labels a,b,...")
        data = load_task(task)
        labels = data.label_names
        task = data.name
    if len(labels) < 2 and labels:
        raise ConfigError(f"a classification run needs at least 2 labels, got {list(labels)}")
    files = resolve_model(model)
    return RunManifest(
        model=model,
        base_hash=files.base_hash,
        task=task,
        labels=tuple(labels),
        lora_mode=lora_mode,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        adapt_layers=adapt_layers,
        max_tokens=max_tokens,
        seed=seed,
    )
