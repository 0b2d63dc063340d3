"""SmolLM2 instruction tuning: p2pfed's training step against a plain peft training loop, side by side.

    PYTHONPATH=. python benchmarks/bench_llm.py [--task chatterbot] [--steps 20] [--adapt-layers 1]

Both train the same LoRA (same target modules on the same top layers, only B trainable as in shared-a
mode) with Adam on the same batches of the same chat-rendered rows. The plain loop is what one writes
with transformers + peft: a full forward with labels masked to -100 on prompt and padding, the LM head on
every position. p2pfed reads the frozen lower layers from its feature cache and runs the LM head on
answer positions only. Prints median seconds per step (calls interleaved, so load from other processes
hits both alike), rows per second and their ratio; then the ratio once the one-off frozen-feature pass
is charged to a default `p2pfed sim` (10 peers x 6 rounds x K=10 steps), and p2pfed's step with SAM
(rho=0.05, the simulation default, two gradient passes) against the plain loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from p2pfed.config import GossipConfig, RunManifest  # noqa: E402
from p2pfed.learn import LearnConfig, TaskModel  # noqa: E402
from p2pfed.learn.adapters import lora_config  # noqa: E402
from p2pfed.learn.chat import render  # noqa: E402
from p2pfed.learn.data import load_task  # noqa: E402
from p2pfed.learn.models import cache_root, resolve_model  # noqa: E402

SIM_STEPS = 10 * GossipConfig.rounds * GossipConfig.local_steps  # steps of a default 10-peer simulation


class PlainLoop:
    """transformers + peft as documented: full forward with masked labels, Adam on the LoRA B weights."""

    def __init__(self, run: RunManifest, rows: list[tuple[list[int], int]], lr: float) -> None:
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(resolve_model(run.model).directory, dtype=torch.float32)
        base.requires_grad_(False)
        layers = int(base.config.num_hidden_layers)
        config = lora_config(run, r"model\.layers", ("q_proj", "k_proj", "v_proj", "o_proj"), layers, ())
        self.model = get_peft_model(base, config).eval()  # eval: no dropout, as in p2pfed
        trainable = [p for n, p in self.model.named_parameters() if "lora_B" in n]
        for n, p in self.model.named_parameters():
            p.requires_grad_("lora_B" in n)
        self.optimizer = torch.optim.Adam(trainable, lr=lr)
        self.rows = rows

    def step(self, batch: np.ndarray) -> float:
        picked = [self.rows[i] for i in batch.tolist()]
        width = max(len(ids) for ids, _ in picked)
        input_ids = torch.zeros(len(picked), width, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for i, (ids, prompt_len) in enumerate(picked):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        loss = self.model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def interleaved(fns: dict[str, Callable[[np.ndarray], object]], batches: list[np.ndarray]) -> dict[str, float]:
    """Median seconds per call of each fn on the same batch, calls interleaved (first batch: warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i, batch in enumerate(batches):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn(batch)
            if i:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="chatterbot", help="instruction task or .jsonl file")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setup (after one warm-up)")
    parser.add_argument("--adapt-layers", type=int, default=RunManifest.adapt_layers)
    parser.add_argument("--batch-size", type=int, default=LearnConfig.batch_size)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunManifest(model="smollm2", task=args.task, adapt_layers=args.adapt_layers)
    lr = GossipConfig.lr

    # a fresh feature cache (the model cache is shared) so that the one-off frozen-feature pass is timed
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").symlink_to(cache_root() / "models")
        resolve_model("smollm2")  # dequantize first if needed, outside the timing
        os.environ["P2PFED_CACHE"] = tmp
        started = time.perf_counter()
        model = TaskModel.load(LearnConfig(run=run, batch_size=args.batch_size))
        load_s = time.perf_counter() - started

    from transformers import AutoTokenizer

    data = load_task(args.task)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").directory)
    rows = [render(tokenizer, c, a, run.max_tokens) for c, a in zip(data.contexts, data.responses, strict=True)]
    plain = PlainLoop(run, rows, lr)
    pool = model.pool_rows  # the same training-pool rows for both
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(pool), size=args.batch_size, replace=False) for _ in range(args.steps + 1)]
    vector = model.initial_vector()

    def ours(rho: float) -> Callable[[np.ndarray], object]:
        def step(pick: np.ndarray) -> object:
            return model.train(vector, pick, steps=1, lr=lr, rho=rho, rng=np.random.default_rng(0))

        return step

    medians = interleaved(
        {"p2pfed": ours(0.0), "p2pfed_sam": ours(GossipConfig.rho), "plain": lambda p: plain.step(pool[p])},
        picks,
    )
    b = args.batch_size
    print(f"SmolLM2-135M, {args.task}, LoRA r={run.lora_rank} on the top {args.adapt_layers} of 30 layers, "
          f"batch {b}, max {run.max_tokens} tokens, {args.steps} timed steps, torch threads {torch.get_num_threads()}")
    print(f"{'setup':<44} {'s/step':>8} {'rows/s':>8} {'vs plain':>9}")
    for name, label in (("plain", "plain peft loop (full forward, Adam)"),
                        ("p2pfed", "p2pfed (cached lower layers, Adam)"),
                        ("p2pfed_sam", f"p2pfed as simulated (SAM rho={GossipConfig.rho})")):
        s = medians[name]
        print(f"{label:<44} {s:>8.3f} {b / s:>8.1f} {medians['plain'] / s:>8.2f}x")
    with_pass = (SIM_STEPS * medians["plain"]) / (load_s + SIM_STEPS * medians["p2pfed"])
    print(f"one-off load + frozen-feature pass: {load_s:.1f} s ({len(data)} rows); charged to a default "
          f"simulation's {SIM_STEPS} steps the ratio is {with_pass:.2f}x")


if __name__ == "__main__":
    main()
