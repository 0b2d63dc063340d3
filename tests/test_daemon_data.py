"""A peer's private .jsonl follows the run's label order; an --eval file becomes the test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2pfed.errors import DataError
from p2pfed.learn.data import append_eval, load_jsonl


def write(path: Path, labels: list[str]) -> Path:
    path.write_text("".join(f'{{"text": "message {i}", "label": "{y}"}}\n' for i, y in enumerate(labels)))
    return path


def test_the_runs_label_order_wins_over_alphabetical(tmp_path: Path) -> None:
    data = load_jsonl(write(tmp_path / "a.jsonl", ["spam", "ham", "ham"]), label_names=("spam", "ham"))
    assert data.label_names == ("spam", "ham")
    assert data.labels.tolist() == [0, 1, 1]


def test_a_shard_missing_a_class_still_has_every_run_label(tmp_path: Path) -> None:
    data = load_jsonl(write(tmp_path / "a.jsonl", ["ham", "ham"]), label_names=("ham", "spam"))
    assert data.label_names == ("ham", "spam")


def test_a_label_outside_the_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"a.jsonl:2: label 'eggs' is not one of the run's labels"):
        load_jsonl(write(tmp_path / "a.jsonl", ["ham", "eggs"]), label_names=("ham", "spam"))


def test_eval_rows_are_appended_and_named_as_the_test_set(tmp_path: Path) -> None:
    names = ("ham", "spam")
    train = load_jsonl(write(tmp_path / "train.jsonl", ["ham", "spam", "ham"]), label_names=names)
    held = load_jsonl(write(tmp_path / "eval.jsonl", ["spam", "ham"]), label_names=names)
    merged, test_rows = append_eval(train, held)
    assert len(merged) == 5 and test_rows.tolist() == [3, 4]
    assert merged.labels[test_rows].tolist() == [1, 0]
    assert merged.digest != train.digest
    other = load_jsonl(write(tmp_path / "other.jsonl", ["x", "y"]))
    with pytest.raises(DataError, match="does not match"):
        append_eval(train, other)
    assert np.array_equal(merged.labels[:3], train.labels)
