"""Real training runs (slow): MiniLM on sms-spam, and SmolLM2 a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from p2pfed.config import RunManifest
from p2pfed.learn import LearnConfig, TaskModel, partition


@pytest.mark.slow
def test_one_peer_on_sms_spam_beats_the_majority_baseline_clearly():
    model = TaskModel.load(LearnConfig())  # the defaults a simulation uses
    vector = model.initial_vector()
    majority = float(np.mean(model.test_labels == 0))
    assert majority == pytest.approx(0.87, abs=0.01)
    vector, loss = model.train(
        vector,
        np.arange(model.pool_size),
        steps=60,
        lr=1e-2,
        rho=0.05,
        rng=np.random.default_rng(0),
    )
    result = model.evaluate(vector)
    assert result.accuracy >= 0.95, result
    assert result.per_class_f1[1] > 0.8  # spam is found, not just ham predicted


@pytest.mark.slow
def test_non_iid_peers_each_train_on_their_own_shard():
    model = TaskModel.load(LearnConfig())
    shards = partition(model.train_labels, 8, "dirichlet", alpha=0.5, rng=np.random.default_rng(0))
    averaged = model.initial_vector()
    for round in range(3):  # local steps, then exact averaging (a complete gossip graph)
        vectors = [
            model.train(
                averaged, s, steps=10, lr=1e-2, rho=0.05, rng=np.random.default_rng([round, i])
            )[0]
            for i, s in enumerate(shards)
        ]
        averaged = np.mean(vectors, axis=0)
    assert model.evaluate(averaged).accuracy > 0.93


@pytest.mark.slow
def test_smollm2_trains_a_few_steps_on_label_tokens(tmp_path):
    pytest.importorskip("gguf")
    rows = [{"text": t, "label": y} for t, y in _sms_rows(120)]
    path = tmp_path / "sms120.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = TaskModel.load(
        LearnConfig(run=RunManifest(model="smollm2", task=str(path), max_tokens=48), test_size=40)
    )
    assert model.kind == "classification" and model.label_names == ("ham", "spam")
    v0 = model.initial_vector()
    before = model.evaluate(v0)
    v1, _ = model.train(
        v0, np.arange(model.pool_size), steps=10, lr=1e-2, rho=0.05, rng=np.random.default_rng(0)
    )
    after = model.evaluate(v1)
    assert after.loss < before.loss
    assert model.score(np.stack([v0, v1]), np.arange(20)).shape == (2, 2)


def _sms_rows(n: int) -> list[tuple[str, str]]:
    from p2pfed.learn.data import load_task

    sms = load_task("sms-spam")
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(sms.labels == c), n // 2, replace=False) for c in (0, 1)]
    )
    return [(sms.texts[i], sms.label_names[sms.labels[i]]) for i in rows]
