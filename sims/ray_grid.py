"""`p2pfed experiment --ray`: an experiment's cells as Ray tasks, one CPU each, anywhere on a cluster.

Only the executor changes: every outcome comes back to the driver, which writes `results.jsonl` as the
process-pool path does, so a grid started with `--ray` resumes with or without it. A worker keeps its
loaded base model between the cells it runs (`grid_runner._model_for`), as a pool worker does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from p2pfed.sims.experiment import Cell
from p2pfed.sims.ray_cluster import ray_cluster

log = logging.getLogger(__name__)


def run_cells_on_ray(
    todo: list[Cell],
    runner: Callable[[Cell], dict[str, Any]],
    address: str,
    record: Callable[[Cell, dict[str, Any]], None],
) -> None:
    """Run `todo` as Ray tasks and `record` each outcome as it finishes. An interrupt (Ctrl-C) cancels
    the tasks still running and propagates; every cell recorded before it stays recorded."""
    from p2pfed.sims.grid_runner import _execute

    if not todo:
        return
    with ray_cluster(address) as ray:
        task = ray.remote(num_cpus=1, max_retries=0)(_execute)
        runner_ref = ray.put(runner)
        pending = {task.remote(runner_ref, cell): cell for cell in todo}
        log.info("%d cells submitted to Ray (%s CPUs)", len(pending), ray.cluster_resources().get("CPU"))
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    record(cell, _outcome(ray, ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def _outcome(ray: Any, ref: Any) -> dict[str, Any]:
    """The task's outcome; a task that died (its worker killed, out of memory) becomes an error row."""
    try:
        outcome: dict[str, Any] = ray.get(ref)
    except Exception as exc:  # RayTaskError, WorkerCrashedError, ...
        return {"status": "error", "error": f"Ray task failed: {type(exc).__name__}: {exc}"}
    return outcome
