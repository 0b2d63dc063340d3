"""The sim's compute scheduler (p2pfed.peer.scheduler): every waiting peer's training and evaluation in
one stacked call gives what each peer's own calls give, run after run, on the real MiniLM and a small
slice of trec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from small_tasks import load, write_slice

from p2pfed.config import GossipConfig
from p2pfed.learn import TaskModel
from p2pfed.sims.simulate import SimConfig, SimResult, run_simulation

pytestmark = pytest.mark.slow

PEERS, ROUNDS = 5, 2


@pytest.fixture(scope="module")
def small_task(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_slice("trec", 30, tmp_path_factory.mktemp("data") / "trec-small.jsonl")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config(model: TaskModel, **changes: object) -> SimConfig:
    base = SimConfig(
        peers=PEERS,
        degree=2,
        defence="mean",
        save_adapters=False,
        learn=model.cfg,
        gossip=GossipConfig(rounds=ROUNDS, local_steps=3, gossip_steps=2, lr=1.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def vectors(result: SimResult) -> np.ndarray:
    return np.stack(result.vectors)


def relative_difference(a: SimResult, b: SimResult, model: TaskModel) -> float:
    """Largest coordinate difference of the final vectors, relative to the largest move from the start."""
    scale = np.abs(vectors(b) - model.initial_vector()).max()
    assert scale > 1e-3  # the peers learnt something: the comparison means something
    return float(np.abs(vectors(a) - vectors(b)).max() / scale)


@pytest.mark.parametrize("defence", ["mean", "bristle"])
def test_batched_and_per_peer_simulations_give_the_same_vectors(small_task, cache_dir, defence) -> None:
    model = load(small_task, cache_dir, optimizer="sgd")
    cfg = config(model, defence=defence)

    batched = run_simulation(cfg, model=model)
    per_peer = run_simulation(dataclasses.replace(cfg, batched=False), model=model)

    assert batched.summary["batches"]["largest"] == PEERS  # one round's training was one call
    assert batched.summary["batches"]["train_batches"] == ROUNDS
    assert relative_difference(batched, per_peer, model) < 1e-4
    accuracy = [[r["accuracy"] for r in result.rows] for result in (batched, per_peer)]
    assert accuracy[0] == pytest.approx(accuracy[1], abs=1e-6)


def test_a_batched_simulation_repeats_exactly_for_a_seed(small_task, cache_dir) -> None:
    model = load(small_task, cache_dir)  # Adam, the default
    cfg = config(model, byzantine=1, attack="label_flip")

    first, second = run_simulation(cfg, model=model), run_simulation(cfg, model=model)

    assert np.array_equal(vectors(first), vectors(second))
    assert first.rows == [dict(r, seconds=s["seconds"]) for r, s in zip(second.rows, first.rows, strict=True)]


def test_rounds_are_scored_on_the_sample_and_the_last_on_the_full_test_set(small_task, cache_dir) -> None:
    model = load(small_task, cache_dir)
    result = run_simulation(config(model, eval_sample=10), model=model)

    assert result.summary["eval_sample"] == 10
    first, last = result.summary["curve"]
    # ten rows: every accuracy of the first round is a multiple of a tenth
    assert all(round(r["accuracy"] * 10, 6).is_integer() for r in result.rows if r["round"] == 0)
    assert last["full_test_set"] and "full_test_set" not in first
    full = [model.evaluate(v).accuracy for v in result.vectors]
    assert last["honest_accuracy_mean"] == pytest.approx(np.mean(full), abs=1e-6)
    assert result.summary["final"]["honest_accuracy_min"] == pytest.approx(min(full), abs=1e-6)


def test_a_run_that_scores_no_round_does_not_score_the_full_test_set_either(
    small_task, cache_dir, monkeypatch
) -> None:
    """`evaluate_every=0` (what bench_sim measures): a sampled run has no final figure to replace, so
    scoring every honest peer on the full test set at the end would be work for nothing."""
    model = load(small_task, cache_dir)
    scored: list[int] = []
    evaluate_many = model.evaluate_many
    monkeypatch.setattr(model, "evaluate_many", lambda vectors, *a, **k: scored.append(len(vectors)) or evaluate_many(vectors, *a, **k))

    result = run_simulation(config(model, eval_sample=10, evaluate_every=0), model=model)
    assert scored == [] and result.summary["curve"] == []

    run_simulation(config(model, eval_sample=10), model=model)
    assert PEERS in scored  # the same run scoring its rounds does rescore the final vectors
