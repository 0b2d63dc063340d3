"""How fast is a local step, an evaluation and a defence's score() call, with and without the feature cache.

    python benchmarks/bench_learn_step.py [--task sms-spam] [--steps 200]

Prints seconds per SAM training step (K=1, median of interleaved repeated calls) for: the default (top layer adapted,
frozen lower layers cached), the same without the cache (lower layers recomputed every step), and all six
layers adapted without a cache (the naive setup); then eval and score() times and the accuracy one peer
with all the data reaches after N steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from p2pfed.config import GossipConfig, RunManifest  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved so that load from other processes on a
    shared machine hits every setup alike (the ratios are what to read)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(setups: dict[str, LearnConfig], repeats: int) -> dict[str, dict[str, float]]:
    models, results = {}, {}
    for name, cfg in setups.items():
        started = time.perf_counter()
        models[name] = TaskModel.load(cfg)
        results[name] = {"load": time.perf_counter() - started, "dim": models[name].dim}
    rng = np.random.default_rng(0)

    def step(m: TaskModel) -> Callable[[], object]:
        rows, v = np.arange(m.pool_size), m.initial_vector()
        return lambda: m.train(v, rows, steps=1, lr=GossipConfig.lr, rho=GossipConfig.rho, rng=rng)

    def evaluate(m: TaskModel) -> Callable[[], object]:
        return lambda: m.evaluate(m.initial_vector())

    def score(m: TaskModel) -> Callable[[], object]:
        return lambda: m.score(np.stack([m.initial_vector()] * 5), np.arange(50))

    for what, make, n in (("step", step, repeats), ("eval", evaluate, 3), ("score", score, 5)):
        for name, seconds in interleaved_medians(
            {k: make(m) for k, m in models.items()}, n
        ).items():
            results[name][what] = seconds
    return results


def accuracy_after(cfg: LearnConfig, steps: int) -> list[tuple[int, float, float]]:
    model = TaskModel.load(cfg)
    v, rng, out, spent = model.initial_vector(), np.random.default_rng(0), [], 0.0
    chunk = max(1, steps // 4)
    for done in range(chunk, steps + 1, chunk):
        started = time.perf_counter()
        v, _ = model.train(
            v, np.arange(model.pool_size), steps=chunk, lr=GossipConfig.lr, rho=GossipConfig.rho, rng=rng
        )
        spent += time.perf_counter() - started
        out.append((done, model.evaluate(v).accuracy, spent))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sms-spam")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run = RunManifest(task=args.task)
    base = LearnConfig(run=run)
    setups = {
        f"top {run.adapt_layers} layer(s), cached": base,
        f"top {run.adapt_layers} layer(s), no cache": LearnConfig(run=run, feature_cache=False),
        "all 6 layers, no cache": LearnConfig(run=RunManifest(task=args.task, adapt_layers=6), feature_cache=False),
    }
    results = measure(setups, args.repeats)
    print(
        f"task {args.task}, batch {base.batch_size}, max {run.max_tokens} tokens, SAM rho {GossipConfig.rho}"
    )
    print(
        f"{'setup':34s} {'load s':>7s} {'step s':>8s} {'eval s':>7s} {'score5 s':>9s} {'dim':>7s}"
    )
    for name, r in results.items():
        print(
            f"{name:34s} {r['load']:7.2f} {r['step']:8.4f} {r['eval']:7.3f} {r['score']:9.4f} {r['dim']:7.0f}"
        )
    cached = results[next(iter(setups))]
    for name, r in list(results.items())[1:]:
        print(
            f"cached vs {name}: step {r['step'] / cached['step']:.1f}x faster, "
            f"eval {r['eval'] / cached['eval']:.1f}x faster"
        )
    for done, accuracy, spent in accuracy_after(base, args.steps):
        print(
            f"one peer, all data: {done:4d} steps -> test accuracy {accuracy:.3f} ({spent:.1f} s training)"
        )


if __name__ == "__main__":
    main()
