"""Runs an experiment's cells in parallel worker processes, resumably, then writes its report.

Each finished cell (or failed one, with its error) becomes one line of `results.jsonl`, written by this
process only, flushed and fsynced; a rerun skips every cell whose id already has an "ok" line, so a grid
killed at any moment loses at most the cells that were running. Workers are spawned (never forked from a
process whose torch threads already run), load the base model once and reuse it for every cell they run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from p2pfed.config import write_atomic
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.sims.experiment import Cell, ExperimentConfig, check_cells, to_toml
from p2pfed.sims.report import load_results, write_report
from p2pfed.sims.simulate import run_simulation

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "experiment.toml"

CellRunner = Callable[[Cell], dict[str, Any]]
"""Runs one cell and returns its summary (as `run_simulation(...).summary`); must be picklable when
workers > 1 (a module-level function or a functools.partial of one)."""

_MODELS: dict[LearnConfig, TaskModel] = {}  # this process's loaded base model, keyed by what it depends on


def _model_for(learn: LearnConfig) -> TaskModel:
    model = _MODELS.get(learn)
    if model is None:
        _MODELS.clear()  # one base model per process: holding two would double the memory
        model = _MODELS[learn] = TaskModel.load(learn)
    return model


def run_cell(cell: Cell, runs_dir: Path | None = None) -> dict[str, Any]:
    """The real runner: one simulation on this process's cached base model (reloaded only if the seed or
    another LearnConfig field differs from the previous cell's)."""
    out = runs_dir / cell.id if runs_dir is not None else None
    return run_simulation(cell.config, out=out, model=_model_for(cell.config.learn)).summary


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(requested: int, cells: int) -> int:
    return max(1, min(requested or available_cores(), cells))


@dataclass
class GridResult:
    out: Path
    rows: list[dict[str, Any]]  # the latest row of every cell of this grid that has one
    ran: int  # cells run in this session
    skipped: int  # cells already finished by an earlier session
    failed: int  # cells of this grid whose latest row is an error
    wall_seconds: float
    report: list[Path]


def run_grid(
    cfg: ExperimentConfig,
    out: Path,
    *,
    runner: CellRunner | None = None,
    progress: bool = True,
    keep_runs: bool = False,
    report: bool = True,
    ray_address: str | None = None,
) -> GridResult:
    """Run every cell of `cfg` that has no "ok" row in `out/results.jsonl` yet, then write the report.

    Every cell's options are checked first (`check_cells`): one that cannot run stops the grid before
    anything starts, with the list of every such cell. With `ray_address` ("auto" or a cluster address)
    the cells run as Ray tasks on that cluster (`ray_grid`) instead of local worker processes. A failing cell is recorded with its error and the grid goes on; an interrupt (Ctrl-C) stops the
    workers and propagates, leaving every finished cell recorded for the next run.
    """
    started = time.perf_counter()
    cells = cfg.cells()
    check_cells(cells)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG, to_toml(cfg).encode())
    results = out / RESULTS
    ids = {c.id for c in cells}
    finished = {r["id"] for r in load_results(results) if r.get("status") == "ok"}
    todo = [c for c in cells if c.id not in finished]
    skipped = len(cells) - len(todo)
    if skipped:
        log.info("resuming %s: %d of %d cells already done", out, skipped, len(cells))
    if runner is None:
        runner = functools.partial(run_cell, runs_dir=out / "runs") if keep_runs else run_cell
    workers = resolve_workers(cfg.grid.workers, len(todo))

    bar = tqdm(total=len(cells), initial=skipped, unit="cell", desc="experiment", dynamic_ncols=True,
               disable=not progress)
    failures = 0

    def record(cell: Cell, outcome: dict[str, Any]) -> None:
        nonlocal failures
        row = _row(cell, outcome)
        sink.append(row)
        if row["status"] == "ok":
            accuracy = row["final"].get("honest_accuracy_mean")
            status = f"{cell.attack}/{cell.defence}: {accuracy:.3f}" if accuracy is not None else cell.label
            log.info("cell %s (%s) done in %.0f s: %s", cell.id, cell.label, row["wall_seconds"], accuracy)
        else:
            failures += 1
            status = f"{cell.attack}/{cell.defence}: FAILED"
            log.warning("cell %s (%s) failed: %s", cell.id, cell.label, row["error"])
        bar.update(1)
        bar.set_postfix_str(status + (f" ({failures} failed)" if failures else ""))

    with bar, logging_redirect_tqdm(), ResultsLog(results) as sink:
        if ray_address is not None:
            from p2pfed.sims.ray_grid import run_cells_on_ray

            run_cells_on_ray(todo, runner, ray_address, record)
        elif workers == 1:
            for cell in todo:
                record(cell, _execute(runner, cell))
        else:
            threads = max(1, available_cores() // workers)
            _run_in_pool(todo, runner, workers, threads, record)

    rows = [r for r in load_results(results) if r["id"] in ids]
    wall = time.perf_counter() - started
    written: list[Path] = []
    if report:
        written = write_report(
            rows, out, attacks=cfg.grid.attacks, defences=cfg.grid.defences, config_toml=to_toml(cfg),
            wall_seconds=wall,
        )
    failed = sum(1 for r in rows if r.get("status") != "ok")
    return GridResult(out, rows, ran=len(todo), skipped=skipped, failed=failed, wall_seconds=wall, report=written)


def _execute(runner: CellRunner, cell: Cell) -> dict[str, Any]:
    """Runs in the worker: one cell, its exception (if any) turned into a picklable outcome."""
    started = time.perf_counter()
    try:
        summary = runner(cell)
    except Exception as exc:
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - started,
        }
    return {"status": "ok", "summary": summary, "seconds": time.perf_counter() - started}


def _row(cell: Cell, outcome: dict[str, Any]) -> dict[str, Any]:
    summary = outcome.get("summary") or {}
    return {
        "id": cell.id,
        "attack": cell.attack,
        "defence": cell.defence,
        "byzantine": cell.byzantine,
        "seed": cell.seed,
        "status": outcome["status"],
        "final": summary.get("final", {}),
        "curve": summary.get("curve", []),
        "byzantine_peers": summary.get("byzantine_peers", []),
        "wall_seconds": round(float(outcome.get("seconds", 0.0)), 2),  # including a model load, if any
        "sim_seconds": summary.get("wall_seconds"),  # the simulation alone
        "error": outcome.get("error"),
        "traceback": outcome.get("traceback"),
        "config": cell.config.to_dict(),
    }


def _init_worker(threads: int) -> None:
    # Ctrl-C reaches the whole process group; the parent alone handles it (and terminates the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)


def _run_in_pool(
    todo: list[Cell],
    runner: CellRunner,
    workers: int,
    threads: int,
    record: Callable[[Cell, dict[str, Any]], None],
) -> None:
    """At most `workers` cells in flight (so a dead worker costs only those); a broken pool is replaced."""
    queue = deque(todo)
    context = multiprocessing.get_context("spawn")
    with _native_threads(threads):
        while queue:
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
            inflight: dict[Future[dict[str, Any]], Cell] = {}
            broken = False
            try:
                while inflight or (queue and not broken):
                    while queue and not broken and len(inflight) < workers:
                        cell = queue.popleft()
                        inflight[pool.submit(_execute, runner, cell)] = cell
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in done:
                        cell = inflight.pop(future)
                        try:
                            outcome = future.result()
                        except BrokenProcessPool as exc:
                            broken = True
                            outcome = {"status": "error", "error": f"worker process died (out of memory?): {exc}"}
                        except Exception as exc:  # e.g. a summary that does not pickle
                            outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                        record(cell, outcome)
            except BaseException:
                # ProcessPoolExecutor cannot cancel running work (before Python 3.14's terminate_workers)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)


# Thread-pool sizes that native libraries read once, when they load. numpy's OpenBLAS otherwise starts one
# thread per core in every worker: two workers on two cores then fight over spinning BLAS threads, which
# made the adaptive attack's cells (many small vector products per message) 3.7× slower (measured: 131 s
# against 35 s per cell, identical results).
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _native_threads(threads: int) -> Iterator[None]:
    """Worker processes spawned inside start their native thread pools at `threads` (unless the user set
    the variables); this process's environment is restored afterwards."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ResultsLog:
    """Append-only results.jsonl; every line is on disk (fsync) before the next cell is recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> ResultsLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in __exit__
        if self._fh.tell() > 0 and not self._ends_with_newline():
            self._fh.write(b"\n")  # a killed run left a torn line: start ours on a fresh one
        return self

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write((json.dumps(row) + "\n").encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._fh.close()
