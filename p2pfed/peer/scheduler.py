"""One simulation's compute, batched across its peers: every waiting peer's local training in one
`TaskModel.train_many` call, every waiting evaluation in one `TaskModel.evaluate_many` call.

The Peer round loop does not change: a simulated Peer gets `ComputeScheduler.run` as its blocking
runner, and the scheduler recognises the two calls it can batch (`LocalModel.train`, `LocalModel.evaluate`)
by the bound method it is handed. Anything else (defences, checkpoints) runs as before, in a worker
thread, one job at a time. The daemon runs one peer per process and keeps the per-peer path.

When to start a batch decides both speed and reproducibility. The scheduler waits until every task of
the run is blocked (`trio.testing.wait_all_tasks_blocked`) and no other job is in flight: then no peer
can ask for more work until some is done, so the batch holds everyone who will ask, and which peers
share a batch depends only on the run's causal order, not on thread timing. In the in-memory sim every
peer trains at the start of its round and waits for nothing but its neighbours' messages, so one round's
training is one batch of all peers. Jobs are ordered by peer index inside a batch, so a seed gives the
same vectors run after run (tests/test_sim_scheduler.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import trio
import trio.testing

from p2pfed.learn import EvalResult
from p2pfed.learn.batched_train import TrainJob
from p2pfed.peer.local import LocalModel
from p2pfed.types import FloatVector

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Request:
    """One peer's call waiting for its batch; `result` is set before `done`."""

    index: int  # the peer's, to order a batch
    local: LocalModel
    args: tuple[Any, ...]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the scheduler ran: how well requests were gathered (for logs and benchmarks)."""

    train_batches: int = 0
    train_jobs: int = 0
    eval_batches: int = 0
    eval_jobs: int = 0
    largest: int = 0
    train_seconds: float = 0.0  # wall time inside batched training
    eval_seconds: float = 0.0


class ComputeScheduler:
    """The blocking runner of a simulation's peers (see the module docstring). Start `serve` in a
    nursery that outlives the peers; hand `runner(i)` to peer i as its `run_blocking`."""

    def __init__(self, compute: trio.CapacityLimiter) -> None:
        self._compute = compute
        self._train: list[_Request] = []
        self._eval: list[_Request] = []
        self._wake = trio.Event()
        self._in_flight = 0  # jobs running in worker threads outside a batch
        self.stats = BatchStats()

    def runner(self, index: int) -> Callable[..., Awaitable[Any]]:
        """Peer `index`'s blocking runner (its index orders it within a batch)."""
        return partial(self.run, index)

    async def run(self, index: int, fn: Callable[..., T], *args: Any) -> T:
        """Peer.blocking's runner: batch what can be batched, run the rest in a worker thread."""
        owner, func = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
        if isinstance(owner, LocalModel) and func is LocalModel.train:
            return await self._wait(self._train, _Request(index, owner, args))  # type: ignore[no-any-return]
        if isinstance(owner, LocalModel) and func is LocalModel.evaluate:
            return await self._wait(self._eval, _Request(index, owner, args))  # type: ignore[no-any-return]
        self._in_flight += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._compute)
        finally:
            self._in_flight -= 1
            self._wake.set()

    async def _wait(self, queue: list[_Request], request: _Request) -> Any:
        queue.append(request)
        self._wake.set()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    async def serve(self) -> None:
        """Forever: once the run is quiet, run what is waiting as (at most) two batched calls."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if self._in_flight or not (self._train or self._eval):
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            started = time.perf_counter()
            if self._train:
                batch, self._train = self._train, []
                await self._run_batch(batch, _train_batch)
                self.stats.train_batches += 1
                self.stats.train_jobs += len(batch)
                self.stats.train_seconds += time.perf_counter() - started
            else:
                batch, self._eval = self._eval, []
                await self._run_batch(batch, _evaluate_batch)
                self.stats.eval_batches += 1
                self.stats.eval_jobs += len(batch)
                self.stats.eval_seconds += time.perf_counter() - started
            self.stats.largest = max(self.stats.largest, len(batch))

    async def _run_batch(self, batch: list[_Request], work: Callable[[list[_Request]], list[Any]]) -> None:
        batch.sort(key=lambda r: r.index)
        try:
            results = await trio.to_thread.run_sync(work, batch, limiter=self._compute)
        except Exception as error:  # every waiting peer sees the failure, none hangs
            log.exception("batched %s of %d peers failed", work.__name__, len(batch))
            for request in batch:
                request.error = error
                request.done.set()
            return
        for request, result in zip(batch, results, strict=True):
            request.result = result
            request.done.set()


def _train_batch(batch: list[_Request]) -> list[tuple[FloatVector, float]]:
    """LocalModel.train of every request, as one train_many call per (model, settings) group."""
    groups: dict[tuple[int, int, float, float, float], list[int]] = {}
    for i, request in enumerate(batch):
        g = request.local.gossip
        groups.setdefault((id(request.local.model), g.local_steps, g.lr, g.rho, g.logit_adjust), []).append(i)
    results: list[tuple[FloatVector, float] | None] = [None] * len(batch)
    for members in groups.values():
        first = batch[members[0]].local
        jobs = [_job(batch[i]) for i in members]
        trained = first.model.train_many(
            jobs,
            steps=first.gossip.local_steps,
            lr=first.gossip.lr,
            rho=first.gossip.rho,
            logit_adjust=first.gossip.logit_adjust,
        )
        for i, result in zip(members, trained, strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def _job(request: _Request) -> TrainJob:
    vector, rng = request.args
    local = request.local
    return TrainJob(np.asarray(vector, dtype=np.float32), local.train_indices, rng, local.labels)


def _evaluate_batch(batch: list[_Request]) -> list[EvalResult]:
    """LocalModel.evaluate of every request, one evaluate_many call per (model, test sample) group."""
    groups: dict[tuple[int, bytes | None], list[int]] = {}
    for i, request in enumerate(batch):
        sample = request.local.test_sample
        key = (id(request.local.model), None if sample is None else sample.tobytes())
        groups.setdefault(key, []).append(i)
    results: list[EvalResult | None] = [None] * len(batch)
    for members in groups.values():
        local = batch[members[0]].local
        vectors = np.stack([np.asarray(batch[i].args[0], dtype=np.float32) for i in members])
        for i, result in zip(members, local.model.evaluate_many(vectors, local.test_sample), strict=True):
            results[i] = result
    return [r for r in results if r is not None]
