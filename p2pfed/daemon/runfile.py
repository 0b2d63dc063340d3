"""The run file (`run.toml`): the `[run]` contract every peer must agree on, plus `[gossip]` defaults.

The contract's digest names the run and its gossip topic and is bound into every signed update; it
includes Q (gossip steps) and the round window, which peers cannot differ on. The `[gossip]` table holds
the rest of the schedule peers of one run should share (K, rounds, lr, ρ, deadlines); it is advice the
`join` options may override, not part of the digest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from p2pfed.config import (
    SHARED_SCHEDULE,
    GossipConfig,
    RunManifest,
    from_mapping,
    read_toml,
    write_atomic,
)
from p2pfed.errors import ConfigError


@dataclass(frozen=True)
class RunFile:
    manifest: RunManifest
    gossip: GossipConfig = field(default_factory=GossipConfig)  # Q and round window: the manifest's

    def __post_init__(self) -> None:
        object.__setattr__(self, "gossip", self.manifest.schedule(self.gossip))

    def save(self, path: Path) -> None:
        gossip = {k: v for k, v in dataclasses.asdict(self.gossip).items() if k not in SHARED_SCHEDULE}
        write_atomic(Path(path), tomli_w.dumps({"run": self.manifest.to_mapping(), "gossip": gossip}).encode())

    @classmethod
    def load(cls, path: Path) -> RunFile:
        raw = read_toml(path, what="run file")
        if "run" not in raw:
            raise ConfigError(f"{path}: no [run] table; create one with `p2pfed init {path}`")
        manifest = RunManifest.from_mapping(raw["run"], source=f"{path} [run]")
        table = raw.get("gossip", {})
        shared = sorted(set(table) & set(SHARED_SCHEDULE))
        if shared:
            raise ConfigError(f"{path} [gossip]: {shared} belong to the [run] contract; move them there")
        return cls(manifest, from_mapping(GossipConfig, table, source=f"{path} [gossip]"))


def create_manifest(contract: RunManifest) -> RunManifest:
    """`contract` with the base model's content hash pinned (hashes the weight files; no model download)
    and its labels filled in.

    `task` is a built-in task (its labels are read from the data) or a .jsonl file (labels: its class
    names, sorted) or any name together with explicit `labels`.
    """
    from p2pfed.learn.data import BUILTIN_TASKS, load_task
    from p2pfed.learn.models import resolve_model

    task, labels = contract.task, contract.labels
    if not labels:
        if task not in BUILTIN_TASKS and not task.endswith(".jsonl"):
            raise ConfigError(f"task {task!r} is not built in: give its class names with --labels a,b,...")
        data = load_task(task)
        labels = data.label_names
        task = data.name
    if len(labels) < 2 and labels:
        raise ConfigError(f"a classification run needs at least 2 labels, got {list(labels)}")
    files = resolve_model(contract.model)
    return dataclasses.replace(contract, base_hash=files.base_hash, task=task, labels=tuple(labels))
