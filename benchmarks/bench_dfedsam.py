"""DFedSAM-MGS versus D-PSGD on non-IID TREC, side by side from the same seeds.

    python benchmarks/bench_dfedsam.py [--peers 16] [--alpha 0.3] [--rounds 10] [--seeds 0,1] [--targets 0.5,0.6,0.7,0.75]

Both runs use the same data split, topology, initial adapter and local step count K; they differ only in
the algorithm: DFedSAM-MGS = SAM local steps (ρ > 0) + Q = 4 gossip steps per round; D-PSGD = plain local
steps (ρ = 0) + one gossip step. Prints the honest peers' mean accuracy per round (mean over seeds), the
rounds each needs to reach --target, the final spread across peers, and the bytes each peer sent.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from p2pfed.config import GossipConfig, RunManifest  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402
from p2pfed.sims.simulate import SimConfig, run_simulation  # noqa: E402

ALGORITHMS = {
    "DFedSAM-MGS (ρ=0.05, Q=4)": {"rho": 0.05, "gossip_steps": 4},
    "D-PSGD (ρ=0, Q=1)": {"rho": 0.0, "gossip_steps": 1},
}


def rounds_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--targets", default="0.5,0.6,0.7,0.75", help="accuracies to report rounds-to-reach for")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    curves: dict[str, list[list[float]]] = {name: [] for name in ALGORITHMS}
    spread: dict[str, list[float]] = {name: [] for name in ALGORITHMS}
    sent: dict[str, list[float]] = {name: [] for name in ALGORITHMS}
    for seed in seeds:
        learn = LearnConfig(run=RunManifest(task="trec", seed=seed))
        model = TaskModel.load(learn)  # one load per seed, shared by both algorithms
        for name, algo in ALGORITHMS.items():
            cfg = SimConfig(
                peers=args.peers,
                alpha=args.alpha,
                defence="mean",  # the algorithms' own mixing; defences are compared in `p2pfed experiment`
                save_adapters=False,
                learn=learn,
                gossip=GossipConfig(rounds=args.rounds, local_steps=args.local_steps, **algo),
            )
            result = run_simulation(cfg, model=model)
            curves[name].append([c["honest_accuracy_mean"] for c in result.summary["curve"]])
            spread[name].append(result.summary["final"]["honest_accuracy_std"])
            sent[name].append(float(np.mean([r["bytes_sent"] for r in result.rows])))
            print(f"  seed {seed}: {name}: final {curves[name][-1][-1]:.4f}  ({result.summary['wall_seconds']:.0f} s)",
                  flush=True)

    mean_curves = {name: np.mean(c, axis=0) for name, c in curves.items()}
    names = list(ALGORITHMS)
    print(f"\ntrec, {args.peers} peers, Dirichlet α={args.alpha}, K={args.local_steps}, seeds {seeds}: "
          "honest mean accuracy on the global test set")
    print(f"{'round':>5}" + "".join(f"{n:>28}" for n in names))
    for r in range(args.rounds):
        print(f"{r + 1:>5}" + "".join(f"{mean_curves[n][r]:>28.4f}" for n in names))
    for target in (float(t) for t in args.targets.split(",")):
        print(f"rounds to reach {target}:" + "".join(
            f"  {n}: {rounds_to(list(mean_curves[n]), target) or f'>{args.rounds}'}" for n in names))
    print("final sd across honest peers:" + "".join(f"  {n}: {np.mean(spread[n]):.4f}" for n in names))
    print("bytes sent per peer per round:" + "".join(f"  {n}: {np.mean(sent[n]) / 1e3:.0f} kB" for n in names))


if __name__ == "__main__":
    main()
