"""Is gossip nearly free, and is the frozen base shared? Two ratios measured side by side in one run.

    python benchmarks/bench_sim.py [--peers 8] [--rounds 3] [--local-steps 10]
    python benchmarks/bench_sim.py --batched 16 64 256 [--rounds 1] [--per-peer-max 64]

1. Throughput, in peer-steps per second (peers × rounds × K / wall time, model load and evaluation excluded):
   - `plain peft loop`: one peer, a textbook training loop — HF model + peft LoRA on the same layers, the same
     tokenizer, batch size, max tokens and optimizer, no gossip, nothing cached;
   - `p2pfed sim, no feature cache`: N real Peers (signing, verification, Q gossip steps, Metropolis mixing,
     reputation, bookkeeping) computing every layer every step, as the plain loop does;
   - `p2pfed sim`: the same with the frozen lower layers computed once and shared (the default).
   The first ratio is the cost of everything that is not training (goal ≥ 0.9); the second is what sharing
   the frozen base buys.
2. Memory per additional peer: how much the resident set grows over the loaded model while a 2-peer and a
   2+N-peer simulation run (each in a fresh process), the difference divided by N, next to the size of the
   base model's weights (what a peer would cost if the frozen base were copied).
ρ = 0 everywhere, so that a step is one forward/backward in all setups (SAM would double every setup alike).

With `--batched N...` it measures instead, for each N, the whole simulation (training, Q=4 gossip steps
of signed envelopes, D-PSGD mixing; no evaluation) in peer-steps per second, side by side in one run:
   - `per-peer`: every peer's local training its own `LocalModel.train` call, peers taking turns;
   - `batched`: the sim's scheduler, every waiting peer's training in one `train_many` call (the default);
at the default ρ (SAM, two passes a step). Per-peer cost does not grow with N, so above `--per-peer-max`
peers it is not run again and the ratio uses the per-peer rate of the largest N it ran at (marked *).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from p2pfed.config import GossipConfig  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402
from p2pfed.peer.topology import fit_degree  # noqa: E402
from p2pfed.sims.simulate import SimConfig, run_simulation  # noqa: E402


def sim_config(
    peers: int, rounds: int, steps: int, cache: bool, *, batched: bool = True, rho: float = 0.0
) -> SimConfig:
    return SimConfig(
        peers=peers,
        degree=fit_degree(peers),
        evaluate_every=0,
        defence="mean",  # D-PSGD mixing: what is measured is the cost of gossip, not of a defence
        save_adapters=False,
        batched=batched,
        gossip=GossipConfig(rounds=rounds, local_steps=steps, gossip_steps=4, rho=rho),
        learn=LearnConfig(feature_cache=cache),
    )


def batched_against_per_peer(counts: list[int], rounds: int, steps: int, per_peer_max: int) -> None:
    """Whole-simulation peer-steps/s, per-peer and batched, at every peer count (see the docstring)."""
    model = TaskModel.load(LearnConfig())
    rho = GossipConfig.rho
    print(f"simulation throughput, K={steps}, Q=4, ρ={rho}, {rounds} round(s), peer-steps/s (wall)")
    print(f"  {'peers':>6}{'per-peer':>12}{'batched':>12}{'ratio':>9}")
    per_peer, figures = 0.0, {}
    for n in counts:
        measured = n <= per_peer_max or per_peer == 0.0
        if measured:
            per_peer = run_rate(sim_config(n, rounds, steps, True, batched=False, rho=rho), model)
        batched = run_rate(sim_config(n, rounds, steps, True, rho=rho), model)
        mark = "" if measured else "*"
        print(f"  {n:>6}{per_peer:>11.2f}{mark:1}{batched:>12.2f}{batched / per_peer:>8.2f}×", flush=True)
        figures[n] = {"per_peer": per_peer, "per_peer_measured": measured, "batched": batched}
    print(json.dumps(figures))


def run_rate(cfg: SimConfig, model: TaskModel) -> float:
    started = time.perf_counter()
    run_simulation(cfg, model=model)
    return cfg.peers * cfg.gossip.rounds * cfg.gossip.local_steps / (time.perf_counter() - started)


def sim_steps_per_second(cfg: SimConfig) -> float:
    model = TaskModel.load(cfg.learn)
    started = time.perf_counter()
    run_simulation(cfg, model=model)
    return cfg.peers * cfg.gossip.rounds * cfg.gossip.local_steps / (time.perf_counter() - started)


def plain_peft_steps_per_second(steps: int, learn: LearnConfig) -> float:
    """A one-peer training loop as a peft tutorial writes it, on the same model, layers and batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from p2pfed.learn.data import load_task
    from p2pfed.learn.models import resolve_model

    spec = resolve_model(learn.run.model)
    data = load_task(learn.source)
    tokenizer = AutoTokenizer.from_pretrained(spec.directory)
    model = AutoModelForSequenceClassification.from_pretrained(spec.directory, num_labels=len(data.label_names))
    layers = model.config.num_hidden_layers
    top = list(range(layers - learn.run.adapt_layers, layers))
    lora = LoraConfig(
        r=learn.run.lora_rank,
        lora_alpha=learn.run.lora_alpha,
        target_modules=["query", "key", "value"],
        layers_to_transform=top,
        modules_to_save=["classifier"],
        lora_dropout=0.0,
    )
    model = get_peft_model(model, lora)
    model.eval()  # no dropout, as in p2pfed
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rng = np.random.default_rng(0)
    texts, labels = data.texts, data.labels

    def step() -> None:
        rows = rng.choice(len(texts), size=learn.batch_size, replace=False)
        batch = tokenizer(
            [texts[i] for i in rows], truncation=True, max_length=learn.run.max_tokens, padding=True, return_tensors="pt"
        )
        loss = model(**batch, labels=torch.as_tensor(labels[rows])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def simulation_growth_mb(peers: int) -> tuple[float, float]:
    """(resident MB after loading the shared model, peak growth over that while `peers` peers run)."""
    model = TaskModel.load(LearnConfig())
    loaded = rss_mb()
    samples = [loaded]
    run_simulation(sim_config(peers, 2, 2, True), model=model, progress=lambda *_: samples.append(rss_mb()))
    return loaded, max(samples) - loaded


def growth_in_fresh_process(peers: int) -> tuple[float, float]:
    code = f"from benchmarks.bench_sim import simulation_growth_mb; print(*simulation_growth_mb({peers}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, growth = out.stdout.strip().splitlines()[-1].split()
    return float(loaded), float(growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--memory-peers", type=int, default=14, help="extra peers for the memory measurement")
    parser.add_argument("--batched", type=int, nargs="+", metavar="N", default=None,
                        help="measure batched against per-peer simulation at these peer counts instead")
    parser.add_argument("--per-peer-max", type=int, default=64,
                        help="with --batched: largest peer count the per-peer path is run at")
    args = parser.parse_args()
    if args.batched:
        batched_against_per_peer(args.batched, args.rounds, args.local_steps, args.per_peer_max)
        return

    steps = args.peers * args.rounds * args.local_steps
    plain = plain_peft_steps_per_second(steps, LearnConfig())
    uncached = sim_steps_per_second(sim_config(args.peers, args.rounds, args.local_steps, cache=False))
    cached = sim_steps_per_second(sim_config(args.peers, args.rounds, args.local_steps, cache=True))
    print(f"throughput, {args.peers} peers × {args.rounds} rounds × K={args.local_steps} (= {steps} steps), Q=4, ρ=0")
    print(f"  {'setup':<34}{'peer-steps/s':>14}{'vs plain peft':>15}")
    for name, value in (
        ("plain peft loop (1 peer)", plain),
        ("p2pfed sim, no feature cache", uncached),
        ("p2pfed sim (default)", cached),
    ):
        print(f"  {name:<34}{value:>14.2f}{value / plain:>14.2f}×")

    (loaded, small), (_, large) = growth_in_fresh_process(2), growth_in_fresh_process(2 + args.memory_peers)
    base = TaskModel.load(LearnConfig()).peft_model
    base_mb = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    per_peer = (large - small) / args.memory_peers
    print(f"memory: {loaded:.0f} MB resident once the shared model and features are loaded;")
    print(f"  while running, RSS grows {small:.1f} MB with 2 peers and {large:.1f} MB with {2 + args.memory_peers}")
    print(f"  per additional peer: {per_peer:.2f} MB  (base model weights: {base_mb:.1f} MB;"
          f" ratio {per_peer / base_mb:.4f})")
    print(json.dumps({"plain": plain, "sim_uncached": uncached, "sim": cached, "mb_per_peer": per_peer,
                      "base_mb": base_mb}))


if __name__ == "__main__":
    main()
