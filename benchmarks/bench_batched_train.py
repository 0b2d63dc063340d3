"""Local training of many simulated peers: one stacked pass (TaskModel.train_many) against one peer at a time.

    python benchmarks/bench_batched_train.py [--peers 16 64 256] [--local-steps 10] [--per-peer-sample 32]

For each peer count, the peers' training rows are the shards `p2pfed sim` gives them (its default partition
and validation split) and every peer does one round of local training: K SAM steps (the default ρ, Adam,
logit adjustment) from the run's initial vector. Printed: local-training throughput in peer-steps per
second of
- `per-peer`: `TaskModel.train` once per peer, as `p2pfed sim` runs it today. Its cost per peer does not
  depend on how many peers wait, so it is timed on the first `--per-peer-sample` peers;
- `batched`: `TaskModel.train_many` of all the peers at once (after one warm-up call on a few peers);
and their ratio. Both are measured in the same process, one after the other, for each peer count.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from p2pfed.config import GossipConfig, RunManifest  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel, partition, split_validation  # noqa: E402
from p2pfed.learn.batched_train import TrainJob  # noqa: E402
from p2pfed.seeds import Seed, partition_rng, validation_rng  # noqa: E402
from p2pfed.sims.simulate import SimConfig  # noqa: E402


def training_rows(model: TaskModel, peers: int, cfg: SimConfig) -> list[np.ndarray]:
    """Every peer's training rows, as run_simulation splits them."""
    shards = partition(
        model.train_labels,
        peers,
        cfg.partition,
        alpha=cfg.alpha,
        classes_per_peer=cfg.classes_per_peer,
        rng=partition_rng(cfg.seed),
    )
    return [
        split_validation(shard, cfg.val_fraction, validation_rng(cfg.seed, i))[0]
        for i, shard in enumerate(shards)
    ]


def jobs_for(model: TaskModel, rows: list[np.ndarray], seed: int) -> list[TrainJob]:
    start = model.initial_vector()
    return [
        TrainJob(start, r, np.random.default_rng([seed, i, 0, Seed.LOCAL_TRAINING]))
        for i, r in enumerate(rows)
    ]


def per_peer_steps_per_second(
    model: TaskModel, jobs: list[TrainJob], gossip: GossipConfig
) -> float:
    started = time.perf_counter()
    for job in jobs:
        model.train(
            job.vector,
            job.indices,
            steps=gossip.local_steps,
            lr=gossip.lr,
            rho=gossip.rho,
            rng=job.rng,
            logit_adjust=gossip.logit_adjust,
        )
    return len(jobs) * gossip.local_steps / (time.perf_counter() - started)


def batched_steps_per_second(model: TaskModel, jobs: list[TrainJob], gossip: GossipConfig) -> float:
    started = time.perf_counter()
    model.train_many(
        jobs,
        steps=gossip.local_steps,
        lr=gossip.lr,
        rho=gossip.rho,
        logit_adjust=gossip.logit_adjust,
    )
    return len(jobs) * gossip.local_steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--local-steps", type=int, default=GossipConfig().local_steps)
    parser.add_argument("--per-peer-sample", type=int, default=32)
    parser.add_argument("--task", default=RunManifest().task)
    args = parser.parse_args()

    learn = LearnConfig(run=RunManifest(task=args.task))
    sim = SimConfig(learn=learn)
    gossip = GossipConfig(local_steps=args.local_steps)
    model = TaskModel.load(learn)
    assert model.batched_train, "this model shape has no batched trainer"
    warm_up = jobs_for(model, training_rows(model, 4, sim), sim.seed)
    batched_steps_per_second(model, warm_up, gossip)
    print(
        f"local training, {learn.run.model} on {learn.run.task}, K={gossip.local_steps} SAM steps "
        f"(ρ={gossip.rho}, {learn.optimizer}, batch {learn.batch_size}), one round from the initial vector"
    )
    print(f"  {'peers':>6}{'per-peer steps/s':>18}{'batched steps/s':>17}{'speed-up':>10}")
    for peers in args.peers:
        jobs = jobs_for(model, training_rows(model, peers, sim), sim.seed)
        looped = per_peer_steps_per_second(model, jobs[: args.per_peer_sample], gossip)
        batched = batched_steps_per_second(model, jobs, gossip)
        print(f"  {peers:>6}{looped:>18.1f}{batched:>17.1f}{batched / looped:>9.1f}×")


if __name__ == "__main__":
    main()
