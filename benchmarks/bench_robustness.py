"""What one Bristle step costs next to one round of local training, with the real model.

    python benchmarks/bench_robustness.py [--task trec] [--peers 16] [--neighbours 16] [--repeats 5]
        [--threads 1]

Partitions the task as `p2pfed sim` does (seed 0, Dirichlet α=0.5), takes the median-sized peer's shard
and validation split,
and times, interleaved: one real K-step `train()` call (a round's local training), one Bristle step
over `--neighbours` received vectors whose `evaluate` is the real `TaskModel.score()` on that validation
split, and the vectors one Bristle step scores, once through `score()` (all candidates stacked in one
pass when the model allows it, see p2pfed/learn/batched_score.py) and once one forward per candidate
(`logits()` of each, what `score()` falls back to). After the warm-up `score()` has kept what does not
depend on the candidate for that split, as in a run, where a peer scores on the same split every round.
Prints the medians and the ratios (target: Bristle / training ≤ 0.1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from p2pfed.config import (
    GossipConfig,  # noqa: E402
    RunManifest,  # noqa: E402
)
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402
from p2pfed.learn.partition import partition, split_validation  # noqa: E402
from p2pfed.robust.base import DefenceInput  # noqa: E402
from p2pfed.robust.bristle import Bristle  # noqa: E402
from p2pfed.seeds import partition_rng, validation_rng  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="trec")
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    # 1 keeps the ratio meaningful on a busy machine: with 2 threads on 2 shared cores, runs of many
    # small ops (training, the per-candidate loop) slow down far more than large matrix products
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()

    gossip = GossipConfig()
    model = TaskModel.load(LearnConfig(run=RunManifest(task=args.task), threads=args.threads))
    rng = np.random.default_rng(0)
    shards = partition(  # the split `p2pfed sim` makes with seed 0
        model.train_labels,
        args.peers,
        "dirichlet",
        alpha=0.5,
        rng=partition_rng(0),
    )
    peer = int(np.argsort([len(s) for s in shards])[len(shards) // 2])  # the median-sized shard
    train_idx, val_idx = split_validation(
        shards[peer], args.val_fraction, validation_rng(0, peer)
    )
    own = model.initial_vector()

    def train() -> np.ndarray:
        vector, _ = model.train(
            own, train_idx, steps=gossip.local_steps, lr=gossip.lr, rho=gossip.rho, rng=rng
        )
        return vector

    trained = train()  # warm-up, and realistic neighbour vectors around a trained model
    step = trained - own
    received = (
        trained[None, :] + 0.5 * rng.standard_normal((args.neighbours, own.size)) * np.abs(step)
    ).astype(np.float32)
    senders = tuple(f"peer-{i:02d}" for i in range(args.neighbours))
    inp = DefenceInput(
        own=trained,
        received=received,
        senders=senders,
        mixing_weights=np.full(args.neighbours + 1, 1 / (args.neighbours + 1), np.float32),
        reputation={s: 0.5 for s in senders},
        evaluate=lambda x: model.score(x, val_idx),
        rng=np.random.default_rng(2),
        anchor=own,  # the round's own evidence, as the Peer passes it: amplify rule and bound run too
        trained=trained,
    )
    bristle = Bristle()
    bristle(inp)  # warm-up
    evaluated = 1 + min(args.neighbours, bristle.keep + bristle.explore)  # [own, *kept] ...
    evaluated += int(bristle.anchor_reference)  # ... and the round's anchor, the validation reference
    scored = np.vstack([trained, received[: evaluated - 1]])
    runs = {
        "train": train,
        "bristle": lambda: bristle(inp),
        "score": lambda: model.score(scored, val_idx),
        "loop": lambda: [model.logits(v, val_idx) for v in scored],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    train_s, bristle_s, score_s, loop_s = (statistics.median(t) for t in times.values())
    print(
        f"task {args.task}, dim {model.dim}, {len(train_idx)} training rows, "
        f"{len(val_idx)} validation rows, {args.neighbours} neighbours "
        f"({evaluated} vectors scored per step)"
    )
    print(f"local training, K={gossip.local_steps} steps: {train_s * 1000:8.1f} ms (median)")
    print(f"one Bristle step:                 {bristle_s * 1000:8.1f} ms (median)")
    print(f"ratio Bristle / local training:   {bristle_s / train_s:8.3f}  (goal <= 0.15)")
    path = "stacked" if model.batched_score else "one forward per candidate"
    print(f"scoring {evaluated} vectors, score() ({path}): {score_s * 1000:8.1f} ms (median)")
    print(f"scoring {evaluated} vectors, one forward each:   {loop_s * 1000:8.1f} ms (median)")
    print(f"speed-up of score():                  {loop_s / score_s:8.2f}x")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
