"""Small balanced slices of the built-in tasks as .jsonl files, and a TaskModel on them with its own
feature cache: real MiniLM, loaded in seconds. Shared by the learn tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pfed.config import RunManifest
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.learn.data import load_task


def write_slice(task: str, per_class: int, path: Path) -> str:
    """`per_class` random rows (seed 0) of every class of built-in `task`, written to `path`."""
    data = load_task(task)
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False)
            for c in range(len(data.label_names))
        ]
    )
    path.write_text(
        "".join(
            json.dumps({"text": data.texts[i], "label": data.label_names[data.labels[i]]}) + "\n"
            for i in rows
        )
    )
    return str(path)


def load(small_task: str, cache_dir: Path, **overrides) -> TaskModel:  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("P2PFED_CACHE", str(cache_dir))
        contract = {k: overrides.pop(k) for k in list(overrides) if k in RunManifest.__dataclass_fields__}
        run = RunManifest(task=small_task, **contract)
        return TaskModel.load(LearnConfig(run=run, test_size=40, batch_size=8, **overrides))
