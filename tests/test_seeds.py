"""The seed purposes are named in one place, keep the values runs were made with, and stay the only way to
say what a random stream is for."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from p2pfed.learn.data import split_test
from p2pfed.learn.partition import split_validation
from p2pfed.seeds import Seed

ROOT = Path(__file__).resolve().parents[1]


def test_purposes_keep_the_values_of_earlier_runs() -> None:
    assert (Seed.LOCAL_TRAINING, Seed.TEST_SPLIT, Seed.DEFENCE) == (0, 1, 7)
    assert (Seed.VALIDATION, Seed.LABEL_POISON) == (0xA1, 0xF1)
    assert (Seed.BYZANTINE, Seed.PARTITION, Seed.EVAL_SAMPLE) == (0xB12, 0x5EED, 0xE7A1)


def test_no_two_purposes_share_a_value() -> None:
    # an IntEnum member with an existing value silently becomes an alias, missing from iteration
    assert len(Seed.__members__) == len(Seed)


def test_streams_draw_what_they_drew_before() -> None:
    labels = np.array([0, 1] * 10, dtype=np.int64)
    pool, test = split_test(labels, 4, seed=0)
    assert test.tolist() == [7, 8, 11, 16] and len(pool) == 16
    train, val = split_validation(np.arange(10), 0.3, np.random.default_rng([0, 2, Seed.VALIDATION]))
    assert val.tolist() == [2, 3, 8] and train.tolist() == [0, 1, 4, 5, 6, 7, 9]


def test_which_peers_are_byzantine_is_unchanged() -> None:
    from p2pfed.sims.simulate import SimConfig, byzantine_indices  # imports torch: only here

    assert byzantine_indices(SimConfig(peers=10, byzantine=3, attack="sign_flip")) == [1, 2, 7]


def literal_purposes(path: Path) -> list[str]:
    """`file:line` of each seeded call with a number literal for a purpose, e.g. `default_rng([s, 0xA1])`.

    0 is let through: net/memory.py puts it between two byte strings of a link's seed."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "default_rng":  # default_rng(seed) has no purpose; default_rng([seed, ..., purpose])
            first = node.args[0] if node.args else None
            words = list(first.elts) if isinstance(first, ast.List | ast.Tuple) else []
        elif name == "rng_for":  # rng_for(seed, *stream)
            words = node.args[1:]
        elif name == "rng":  # Peer.rng(*purpose)
            words = node.args
        else:
            continue
        if any(isinstance(w, ast.Constant) and type(w.value) is int and w.value != 0 for w in words):
            found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}")
    return found


def test_every_seed_purpose_is_named() -> None:
    files = [p for package in ("p2pfed", "sims", "cli", "benchmarks") for p in (ROOT / package).rglob("*.py")]
    assert files
    assert [hit for path in sorted(files) for hit in literal_purposes(path)] == []


def test_the_checker_sees_a_literal_purpose(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "rng = np.random.default_rng([seed, 0xA1])\n"
        "rng = self.rng(rnd, step + 1, 7)\n"
        "rng = rng_for(seed, 1)\n"
        "ok = np.random.default_rng(2)\n"
        "ok = np.random.default_rng([seed, i, Seed.VALIDATION])\n"
    )
    assert literal_purposes(bad) == [f"{bad}:1", f"{bad}:2", f"{bad}:3"]
