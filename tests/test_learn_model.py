"""TaskModel on the real MiniLM with a small slice of sms-spam (fast: ~2 s to load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from small_tasks import load, write_slice

from p2pfed.learn import TaskModel
from p2pfed.learn.adapters import FlatSchema


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> str:
    return write_slice("sms-spam", 80, tmp_path_factory.mktemp("data") / "sms-small.jsonl")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model(small_task, cache_dir) -> TaskModel:
    return load(small_task, cache_dir)


@pytest.fixture(scope="module")
def full_model(small_task, cache_dir) -> TaskModel:
    return load(small_task, cache_dir, lora_mode="full")


def train_two_peers(m: TaskModel) -> tuple[np.ndarray, np.ndarray]:
    half = m.pool_size // 2
    v0 = m.initial_vector()
    a, _ = m.train(v0, np.arange(half), steps=4, lr=2e-2, rho=0.05, rng=np.random.default_rng(1))
    b, _ = m.train(
        v0, np.arange(half, m.pool_size), steps=4, lr=2e-2, rho=0.05, rng=np.random.default_rng(2)
    )
    return a, b


def averaging_error(m: TaskModel) -> float:
    a, b = train_two_peers(m)
    da, db, dmean = m.weight_deltas(a), m.weight_deltas(b), m.weight_deltas((a + b) / 2)
    return max(float(((da[k] + db[k]) / 2 - dmean[k]).abs().max()) for k in dmean)


def test_shape_of_the_vector(model):
    assert model.kind == "classification" and model.num_classes == 2
    assert model.dim == sum(int(np.prod(shape)) for _, shape in model.schema)
    assert model.initial_vector().dtype == np.float32 and model.initial_vector().shape == (
        model.dim,
    )
    assert len(model.train_labels) == model.pool_size == 120
    assert len(model.base_hash) == 64
    # shared-a trains B (zeros at start) and the head only
    names = [n for n, _ in model.schema]
    assert names and all("lora_B" in n or "classifier" in n for n in names)


def test_flatten_unflatten_round_trip_is_exact(model):
    schema = FlatSchema.of(model.peft_model)
    vector = np.random.default_rng(0).standard_normal(model.dim).astype(np.float32)
    assert np.array_equal(
        torch.cat([t.reshape(-1) for t in schema.unflatten(vector)]).numpy(), vector
    )
    schema.load(vector)
    assert np.array_equal(schema.flatten(), vector)
    with pytest.raises(ValueError, match="shape"):
        schema.unflatten(vector[:-1])


def test_same_seed_same_training(model):
    v0 = model.initial_vector()
    runs = [
        model.train(v0, np.arange(60), steps=3, lr=1e-2, rho=0.05, rng=np.random.default_rng(9))
        for _ in range(2)
    ]
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0], v0)
    assert np.array_equal(model.initial_vector(), v0)  # training does not touch the initial vector


def test_flipped_labels_change_the_update(model):
    v0, idx = model.initial_vector(), np.arange(60)
    honest, _ = model.train(v0, idx, steps=2, lr=1e-2, rho=0.0, rng=np.random.default_rng(3))
    flipped_labels = 1 - model.train_labels[idx]
    flipped, _ = model.train(
        v0, idx, steps=2, lr=1e-2, rho=0.0, rng=np.random.default_rng(3), labels=flipped_labels
    )
    assert not np.allclose(honest, flipped)


def test_shared_a_averaging_is_exact_and_full_lora_is_not(model, full_model, record_property):
    shared_error = averaging_error(model)
    full_error = averaging_error(full_model)
    record_property("shared_a_averaging_error", shared_error)
    record_property("full_averaging_error", full_error)
    assert shared_error < 1e-7
    assert full_error > 10 * max(shared_error, 1e-9), (shared_error, full_error)


def test_full_mode_draws_the_same_a_from_the_seed(model, full_model):
    shared_a = {n: m.lora_A["default"].weight for n, m in _lora(model).items()}
    full_values = dict(
        zip(
            (n for n, _ in full_model.schema),
            FlatSchema.of(full_model.peft_model).unflatten(full_model.initial_vector()),
            strict=True,
        )
    )
    for name, a in shared_a.items():
        assert torch.equal(full_values[f"{name}.lora_A.default.weight"], a)


def _lora(m: TaskModel) -> dict:
    from p2pfed.learn.adapters import lora_modules

    return lora_modules(m.peft_model)


def test_score_is_per_class_f1_of_each_candidate(model):
    v0 = model.initial_vector()
    v1, _ = model.train(
        v0, np.arange(model.pool_size), steps=10, lr=2e-2, rho=0.0, rng=np.random.default_rng(0)
    )
    val = np.arange(0, model.pool_size, 3)
    scores = model.score(np.stack([v0, v1, v0]), val)
    assert scores.shape == (3, 2) and scores.dtype == np.float32
    assert np.array_equal(scores[0], scores[2])
    assert scores[1] == pytest.approx(model.evaluate(v1, val).per_class_f1)


def test_saved_adapter_loads_in_peft_with_the_same_predictions(model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    vector, _ = model.train(
        model.initial_vector(),
        np.arange(model.pool_size),
        steps=10,
        lr=2e-2,
        rho=0.05,
        rng=np.random.default_rng(0),
    )
    model.save_adapter(vector, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "p2pfed.json"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }

    base_dir = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = np.arange(0, model.pool_size, 4)
    inputs = tokenizer(
        model.pool_texts(rows), truncation=True, max_length=64, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        theirs = loaded(**inputs).logits.numpy()
    ours = model.logits(vector, rows)
    assert np.allclose(ours, theirs, atol=1e-4)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


def test_the_prior_offset_is_tau_times_the_log_of_the_smoothed_label_frequencies(model):
    targets = np.array([0] * 9 + [1])
    offset = model.prior_offset(targets, 1.0)
    assert offset is not None
    assert np.allclose(offset.numpy(), np.log([10 / 12, 2 / 12]))
    assert np.allclose(model.prior_offset(targets, 0.5).numpy(), 0.5 * offset.numpy())
    assert model.prior_offset(targets, 0.0) is None


def test_a_skewed_shard_pushes_its_rare_class_down_less_with_logit_adjustment(model):
    # A peer whose shard is 36 ham and 2 spam: plain cross-entropy learns its own prior ("almost never
    # spam"), a drift that gossip must undo every round; the adjusted loss explains the skew by the
    # prior term, so the model's spam-vs-ham margin moves far less. (On a shard of one class alone Adam's
    # normalized steps push that class down either way: measured, 4.9 against 4.5.)
    labels = model.train_labels
    shard = np.concatenate([np.flatnonzero(labels == 0)[:36], np.flatnonzero(labels == 1)[:2]])
    v0 = model.initial_vector()

    def spam_margin(vector: np.ndarray) -> float:
        logits = model.logits(vector, np.arange(model.pool_size))
        return float((logits[:, 1] - logits[:, 0]).mean())

    moved = {}
    for tau in (0.0, 1.0):
        v, _ = model.train(
            v0, shard, steps=10, lr=3e-2, rho=0.05, rng=np.random.default_rng(4), logit_adjust=tau
        )
        moved[tau] = spam_margin(v0) - spam_margin(v)
    assert moved[0.0] > 2.0  # plain loss pushes spam down
    assert moved[1.0] < 0.5 * moved[0.0], moved
