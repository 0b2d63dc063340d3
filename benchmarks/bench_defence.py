"""Time one defence step of every rule: 16 neighbours of dimension d, with a fake `evaluate`.

    python benchmarks/bench_defence.py --dim 100000 --repeats 20

The fake evaluate costs one (m, d) @ (d, classes) product, about what a linear head on cached features
costs; swap in `LocalModel.validation_scores` to time the real thing (that is where Bristle's time goes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from p2pfed.robust.base import DefenceInput
from p2pfed.robust.registry import DEFENCES, load_defence
from p2pfed.types import FloatMatrix


def fake_evaluate(dim: int, classes: int, seed: int = 0) -> Callable[[FloatMatrix], FloatMatrix]:
    head = np.random.default_rng(seed).standard_normal((dim, classes)).astype(np.float32) / np.sqrt(
        dim
    )

    def evaluate(x: FloatMatrix) -> FloatMatrix:
        return np.tanh(x @ head)

    return evaluate


def make_input(
    dim: int, neighbours: int, evaluate: Callable[[FloatMatrix], FloatMatrix], seed: int
) -> DefenceInput:
    rng = np.random.default_rng(seed)
    own = rng.standard_normal(dim).astype(np.float32)
    received = (own + 0.1 * rng.standard_normal((neighbours, dim))).astype(np.float32)
    received[-2:] *= -5.0  # two attackers
    senders = tuple(f"peer-{i:02d}" for i in range(neighbours))
    return DefenceInput(
        own=own,
        received=received,
        senders=senders,
        mixing_weights=np.full(neighbours + 1, 1.0 / (neighbours + 1), np.float32),
        reputation={s: 0.8 for s in senders},
        evaluate=evaluate,
        rng=np.random.default_rng(seed),
    )


def time_defence(name: str, inp: DefenceInput, repeats: int) -> float:
    """Median seconds per call."""
    defence = load_defence(name)
    defence(inp)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        defence(inp)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=100_000, help="vector dimension d")
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    evaluate = fake_evaluate(args.dim, args.classes)
    calls = 0

    def counted(x: FloatMatrix) -> FloatMatrix:
        nonlocal calls
        calls += 1
        return evaluate(x)

    inp = make_input(args.dim, args.neighbours, counted, seed=0)
    print(
        f"d={args.dim} neighbours={args.neighbours} classes={args.classes} (median of {args.repeats})"
    )
    for name in sorted(DEFENCES):
        seconds = time_defence(name, inp, args.repeats)
        print(f"{name:>16}  {seconds * 1e3:9.2f} ms")
    start = time.perf_counter()
    for _ in range(args.repeats):
        evaluate(np.zeros((9, args.dim), np.float32))
    print(
        f"{'(fake evaluate)':>16}  {(time.perf_counter() - start) / args.repeats * 1e3:9.2f} ms per call"
    )


if __name__ == "__main__":
    main()
