"""What sampling membership costs per round, as a fraction of one round's local training (goal <= 0.02).

    PYTHONPATH=. python benchmarks/bench_membership.py [--peers 256] [--degree 6] [--rounds 4]

Membership: every peer's `Membership` at one round boundary (`MemoryMembership.rewire`: cooldowns,
evictions, presence from every other peer, dials and hellos), on a random regular graph with ⅓ of the
peers Byzantine under eclipse placement and every Byzantine neighbour reported each round (the busiest
case: every peer evicts and replaces). Local training: one peer's round (K local SAM steps on a shard of
1/peers of the training pool), times the number of peers. The two are timed alternately in one run, so
the load of a shared machine hits both alike; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from p2pfed.config import GossipConfig, RunManifest  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402
from p2pfed.net.membership import Evidence, EvidenceKind  # noqa: E402
from p2pfed.net.memory_membership import MemoryMembership  # noqa: E402
from p2pfed.peer.topology import build_topology  # noqa: E402
from p2pfed.sims.placement import place_byzantine  # noqa: E402

EVIDENCE = Evidence(EvidenceKind.QUARANTINED, "benchmark")


def eclipsed(peers: int, degree: int, seed: int) -> tuple[MemoryMembership, list[str], set[str]]:
    adjacency = build_topology("regular", peers, degree=degree, seed=seed)
    ids = [f"peer-{i:04d}" for i in range(peers)]
    bad = {ids[i] for i in place_byzantine("eclipse", adjacency, peers // 3, seed).byzantine}
    network = MemoryMembership(
        {ids[i]: len(adjacency[i]) for i in range(peers)}, seed=seed, advertise_only={p: bad for p in bad}
    )
    network.install({ids[i]: [ids[j] for j in adjacency[i]] for i in range(peers)})
    return network, ids, bad


def rewire_seconds(network: MemoryMembership, ids: list[str], bad: set[str], rnd: int) -> float:
    for peer in ids:
        if peer not in bad:
            for neighbour in network.neighbours(peer):
                if neighbour in bad:
                    network.report(peer, neighbour, EVIDENCE)
    started = time.perf_counter()
    network.rewire(rnd)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=256)
    parser.add_argument("--degree", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4, help="round boundaries timed (and peer rounds trained)")
    parser.add_argument("--task", default="trec")
    args = parser.parse_args()

    model = TaskModel.load(LearnConfig(run=RunManifest(task=args.task)))
    shard = np.array_split(np.arange(model.pool_size), args.peers)[0]
    gossip = GossipConfig()
    vector, rng = model.initial_vector(), np.random.default_rng(0)
    network, ids, bad = eclipsed(args.peers, args.degree, seed=0)
    model.train(vector, shard, steps=gossip.local_steps, lr=gossip.lr, rho=gossip.rho, rng=rng)  # warm-up

    membership, training = [], []
    for rnd in range(1, args.rounds + 1):
        membership.append(rewire_seconds(network, ids, bad, rnd))
        started = time.perf_counter()
        model.train(vector, shard, steps=gossip.local_steps, lr=gossip.lr, rho=gossip.rho, rng=rng)
        training.append((time.perf_counter() - started) * args.peers)
    per_round, train_round = statistics.median(membership), statistics.median(training)
    honest = [p for p in ids if p not in bad]
    share = np.mean([sum(n in bad for n in network.neighbours(p)) / max(1, len(network.neighbours(p))) for p in honest])
    print(f"{args.peers} peers, degree {args.degree}, {len(bad)} Byzantine (eclipse), {args.rounds} boundaries timed")
    print(f"membership per round (all peers):      {per_round:8.3f} s  (per peer {per_round / args.peers * 1e3:.2f} ms)")
    print(f"local training per round (all peers):  {train_round:8.3f} s  (K={gossip.local_steps}, {len(shard)} rows a peer)")
    print(f"membership / local training:           {per_round / train_round:8.4f}  (goal <= 0.02)")
    print(f"honest peers' Byzantine-neighbour share after the last boundary: {share:.3f}")


if __name__ == "__main__":
    main()
