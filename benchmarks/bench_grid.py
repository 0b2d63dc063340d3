"""What the experiment grid's engineering choices buy, as ratios measured side by side in one run.

    python benchmarks/bench_grid.py [--quick] [--json results.json]

1. Frozen-lower-layer feature cache: one grid cell with `LearnConfig(feature_cache=True)` vs `False`.
2. Loading the base model once per worker: model load time vs one cell's time (what reloading per cell costs).
3. Worker processes: the same few cells with workers=2 vs workers=1 (each including its processes' start and
   model loads, as a real grid pays them), as cells per minute.

Absolute times depend on the machine and on what else runs on it; the ratios are what to read.
Full mode uses the default grid's cell (TREC, 16 peers) shortened to 2 rounds; --quick uses 8 peers, 1 round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from p2pfed.learn import TaskModel  # noqa: E402
from p2pfed.sims import grid_runner  # noqa: E402
from p2pfed.sims.experiment import ExperimentConfig, Grid, base_from_mapping  # noqa: E402
from p2pfed.sims.simulate import SimConfig, run_simulation  # noqa: E402


def base_config(quick: bool) -> SimConfig:
    if quick:
        return base_from_mapping({"peers": 8, "rounds": 1, "local_steps": 4, "gossip_steps": 2}, source="bench")
    return base_from_mapping({"rounds": 2}, source="bench")


def timed_cell(cfg: SimConfig) -> tuple[float, float, float]:
    """(model load seconds, cell seconds, final honest accuracy) for one cell in this process."""
    started = time.perf_counter()
    model = TaskModel.load(cfg.learn)
    load = time.perf_counter() - started
    started = time.perf_counter()
    summary = run_simulation(cfg, model=model).summary
    return load, time.perf_counter() - started, summary["final"]["honest_accuracy_mean"]


def grid_throughput(base: SimConfig, cells: int, workers: int) -> tuple[float, float, int]:
    """(wall seconds from a cold start, mean seconds per cell inside its worker, cells) for `cells`
    attack-free cells, one per defence, run with `workers` processes."""
    grid = Grid(attacks=("none",), defences=Grid().defences[:cells], byzantine=(1,), workers=workers)
    cfg = ExperimentConfig(base=base, grid=grid)
    grid_runner._MODELS.clear()  # workers=1 runs in this process: start it as cold as a worker
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = grid_runner.run_grid(cfg, Path(out), progress=False, report=False)
        seconds = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"{result.failed} cells failed: {[r['error'] for r in result.rows if r['error']]}")
    per_cell = sum(r["sim_seconds"] for r in result.rows) / len(result.rows)  # model loads excluded
    return seconds, per_cell, len(result.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 peers, 1 round (a couple of minutes)")
    parser.add_argument("--cells", type=int, default=4, help="cells for the workers comparison")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = base_config(args.quick)
    cell = dataclasses.replace(base, defence="mean")
    print(f"cell: {cell.learn.run.task}, {cell.peers} peers, {cell.gossip.rounds} rounds, K={cell.gossip.local_steps}, "
          f"Q={cell.gossip.gossip_steps}, {os.cpu_count()} cores")

    load_cached, cell_cached, acc_cached = timed_cell(cell)
    uncached = dataclasses.replace(cell, learn=dataclasses.replace(cell.learn, feature_cache=False))
    load_plain, cell_plain, acc_plain = timed_cell(uncached)
    one_seconds, one_cell, n = grid_throughput(base, args.cells, workers=1)
    two_seconds, two_cell, _ = grid_throughput(base, args.cells, workers=2)

    results = {
        "cell_seconds_feature_cache": cell_cached,
        "cell_seconds_no_feature_cache": cell_plain,
        "feature_cache_speedup": cell_plain / cell_cached,
        "accuracy_feature_cache": acc_cached,
        "accuracy_no_feature_cache": acc_plain,
        "model_load_seconds": load_cached,
        "reload_per_cell_overhead": load_cached / cell_cached,
        "cells": n,
        "grid_seconds_workers_1": one_seconds,
        "grid_seconds_workers_2": two_seconds,
        "workers_2_speedup_cold": one_seconds / two_seconds,
        "cell_seconds_workers_1": one_cell,
        "cell_seconds_workers_2": two_cell,
        # once started, 2 workers finish 2 cells per (cell time under contention)
        "workers_2_speedup_steady": 2 * one_cell / two_cell,
    }
    rows = [
        ("feature cache on / off, one cell", f"{cell_cached:.1f} s / {cell_plain:.1f} s",
         f"{results['feature_cache_speedup']:.2f}x faster"),
        ("  final honest accuracy on / off", f"{acc_cached:.3f} / {acc_plain:.3f}", "should match"),
        ("model load vs one cell", f"{load_cached:.1f} s / {cell_cached:.1f} s",
         f"+{100 * results['reload_per_cell_overhead']:.0f}% per cell if reloaded"),
        (f"{n} cells from cold, workers 1 / 2", f"{one_seconds:.1f} s / {two_seconds:.1f} s",
         f"{results['workers_2_speedup_cold']:.2f}x throughput (incl. process start, model loads)"),
        ("one cell inside workers 1 / 2", f"{one_cell:.1f} s / {two_cell:.1f} s",
         f"{results['workers_2_speedup_steady']:.2f}x steady-state throughput"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'choice':<{width}}  {'measured':>22}  ratio")
    for name, measured, ratio in rows:
        print(f"{name:<{width}}  {measured:>22}  {ratio}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
