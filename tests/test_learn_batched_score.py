"""Stacked scoring of many candidates (batched_score.py) against the per-candidate forward, on the real
MiniLM with a small slice of trec (6 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from small_tasks import load, write_slice

from p2pfed.learn import TaskModel
from p2pfed.learn.batched_score import BatchedScorer
from p2pfed.learn.train import per_class_f1_batch


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> str:
    return write_slice("trec", 30, tmp_path_factory.mktemp("data") / "trec-small.jsonl")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def candidates(model: TaskModel, count: int) -> np.ndarray:
    """Vectors like those Bristle receives: a trained model, noisy copies of it, and a scaled attack."""
    rng = np.random.default_rng(1)
    start = model.initial_vector()
    trained, _ = model.train(
        start, np.arange(model.pool_size), steps=10, lr=3e-2, rho=0.05, rng=rng
    )
    step = np.abs(trained - start)
    noisy = trained + 0.5 * rng.standard_normal((count - 2, model.dim)) * step
    return np.vstack([trained, noisy, start + 5 * (trained - start)]).astype(np.float32)


def validation_rows(model: TaskModel) -> np.ndarray:
    return np.random.default_rng(2).permutation(model.pool_size)[:50]  # unsorted, mixed lengths


@pytest.mark.parametrize("lora_mode", ["shared-a", "full"])
def test_stacked_scoring_equals_one_forward_per_candidate(small_task, cache_dir, lora_mode):
    model = load(small_task, cache_dir, lora_mode=lora_mode)
    assert model.batched_score
    vectors, rows = candidates(model, 9), validation_rows(model)

    stacked = model.candidate_logits(vectors, rows)
    looped = np.stack([model.logits(v, rows) for v in vectors])  # loads each into the peft model

    assert stacked.shape == (9, len(rows), 6) and stacked.dtype == np.float32
    assert np.abs(stacked - looped).max() < 1e-4
    predicted = looped.argmax(-1)
    assert len(np.unique(predicted)) > 2  # the candidates disagree: the comparison means something
    assert np.array_equal(stacked.argmax(-1), predicted)
    expected_f1 = per_class_f1_batch(predicted, model.train_labels[rows], model.num_classes)
    assert np.array_equal(model.score(vectors, rows), expected_f1)
    model.logits(vectors[0], rows)  # loads vectors[0]; stacked scoring must leave it loaded
    loaded = {k: v.clone() for k, v in model.peft_model.state_dict().items()}
    model.score(vectors[1:], rows)
    assert all(torch.equal(loaded[k], v) for k, v in model.peft_model.state_dict().items())


def test_two_adapted_layers_score_one_candidate_at_a_time(small_task, cache_dir):
    model = load(small_task, cache_dir, adapt_layers=2)
    assert not model.batched_score
    vectors, rows = candidates(model, 3), validation_rows(model)
    looped = np.stack([model.logits(v, rows) for v in vectors])
    assert np.array_equal(model.candidate_logits(vectors, rows), looped)
    expected_f1 = per_class_f1_batch(looped.argmax(-1), model.train_labels[rows], 6)
    assert np.array_equal(model.score(vectors, rows), expected_f1)


def test_stacked_scoring_without_the_feature_cache(small_task, cache_dir):
    model = load(small_task, cache_dir, feature_cache=False)  # lower layers run on every call
    assert model.batched_score
    vectors, rows = candidates(model, 3), validation_rows(model)
    looped = np.stack([model.logits(v, rows) for v in vectors])
    assert np.abs(model.candidate_logits(vectors, rows) - looped).max() < 1e-4


def test_stacked_scoring_is_exact_for_any_number_of_candidates_and_rows(small_task, cache_dir):
    # the feed-forward buffer kept between calls grows and is reused; > 128 rows run in two chunks
    model = load(small_task, cache_dir)
    vectors = candidates(model, 9)
    everything = np.random.default_rng(3).permutation(model.pool_size)  # 140 rows: 128 + 12
    for count, rows in [(9, validation_rows(model)), (2, everything), (9, everything[:7])]:
        stacked = model.candidate_logits(vectors[:count], rows)
        looped = np.stack([model.logits(v, rows) for v in vectors[:count]])
        assert stacked.shape == looped.shape and np.abs(stacked - looped).max() < 1e-4


def test_a_top_layer_unlike_bert_is_scored_one_candidate_at_a_time(small_task, cache_dir):
    model = load(small_task, cache_dir)
    backbone = model._backbone
    backbone.pooler.activation = torch.nn.ReLU()  # not the tanh the stacked pass writes out
    assert BatchedScorer.build(backbone, model.peft_model, model._schema) is None
