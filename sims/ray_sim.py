"""`p2pfed sim --ray`: the peers of one simulation spread over Ray actors, for when one machine is not enough.

Each actor (`PeerBatch`, one CPU) loads one frozen base model and runs a batch of the run's peers on trio,
built by the same `build_peers` as the in-process sim, so the Peer code, the data shards, the defences and
the attacks are the same. Peers exchange the same signed envelopes: within an actor over trio channels,
between actors through `RayNetwork` (`p2pfed.net.ray_transport`). Every actor sends its peers' round
reports and final states back, and this process writes the run directory as `p2pfed sim` does.

The final vectors equal the in-process run's for the same seed: a peer waits for every neighbour's update
of a step and mixes them in sender order, so when they arrive does not matter; and all Byzantine peers sit
on one actor, since colluders share one in-memory board (`Collusion`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pfed.errors import ConfigError
from p2pfed.learn import TaskModel
from p2pfed.net.ray_transport import RayNetwork
from p2pfed.peer.peer import RoundReport
from p2pfed.robust.reputation import ReputationTable
from p2pfed.sims.ray_cluster import cluster_cpus, ray_cluster
from p2pfed.sims.simulate import (
    SimConfig,
    SimResult,
    _run_peers,
    build_peers,
    finish_run,
    make_recorder,
    peer_identities,
    placement_of,
    topology_of,
    validate,
)

log = logging.getLogger(__name__)

POLL_S = 1.0  # seconds between progress updates from the actors
DELIVERY_THREADS = 16  # actor threads that take deliveries from other actors at once


@dataclass
class PeerState:
    """What an actor sends back of one peer at the end (see `simulate.FinishedPeer`)."""

    index: int
    byzantine: bool
    vector: np.ndarray
    reputation: ReputationTable


@dataclass
class BatchOutcome:
    reports: list[RoundReport]
    peers: list[PeerState]


class PeerBatch:
    """A Ray actor: one frozen base model and a batch of the run's peers (by index).

    `run` occupies its own thread (concurrency group "run") for the whole simulation; `deliver` and `done`
    are answered on the other threads meanwhile."""

    def __init__(self, cfg: SimConfig, indices: list[int]) -> None:
        self.cfg = cfg
        self.indices = indices
        self.model = TaskModel.load(cfg.learn)
        self.network = RayNetwork()
        self.reports: list[RoundReport] = []

    def ready(self) -> int:
        """Answers once the base model is loaded: how many peers this actor holds."""
        return len(self.indices)

    def route(self, routes: Mapping[str, Any]) -> None:
        self.network.route(routes)

    def deliver(self, sender: str, to: str, data: bytes) -> bool:
        return self.network.deliver_from_thread(sender, to, data)

    def done(self) -> int:
        """Peer-rounds finished so far."""
        return len(self.reports)

    def run(self) -> BatchOutcome:
        return trio.run(self._run)

    async def _run(self) -> BatchOutcome:
        cfg = self.cfg
        ids = [identity.peer_id for identity in peer_identities(cfg)]
        adjacency = topology_of(cfg)
        transports = {i: self.network.add(ids[i], [ids[j] for j in adjacency[i]]) for i in self.indices}
        compute = trio.CapacityLimiter(1)  # one torch job at a time: the actor's model is not thread-safe
        peers = build_peers(cfg, self.model, transports, on_round=self.reports.append, compute=compute)
        self.network.open()
        try:
            await _run_peers(peers, cfg.gossip.rounds)
        finally:
            self.network.close()
        states = [PeerState(p.index, p.byzantine, p.vector, p.reputation) for p in peers]
        return BatchOutcome(self.reports, states)


def assign_batches(cfg: SimConfig, actors: int) -> list[list[int]]:
    """Peer indices per actor, as even as the count allows; the Byzantine peers come first, all in one
    batch, so that colluders share their board (a batch is larger than `peers / actors` only to hold them)."""
    byzantine = placement_of(cfg).byzantine
    honest = [i for i in range(cfg.peers) if i not in set(byzantine)]
    actors = max(1, min(actors, cfg.peers))
    size = -(-cfg.peers // actors)  # ceiling division
    first = max(size, len(byzantine))
    order = sorted(byzantine) + honest
    batches = [order[:first]]
    rest = order[first:]
    remaining = actors - 1
    for k in range(remaining):
        share = -(-len(rest) // (remaining - k)) if remaining - k else 0
        batches.append(rest[:share])
        rest = rest[share:]
    return [sorted(b) for b in batches if b]


def run_on_ray(
    cfg: SimConfig,
    address: str,
    *,
    out: Path | None = None,
    model: TaskModel | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    actors: int | None = None,
) -> SimResult:
    """Run a simulation on the Ray cluster at `address` ("auto": this machine's, or a new local one).

    `actors`: how many `PeerBatch` actors (default: one per CPU of the cluster, at most one per peer).
    `model` (the base on this machine) is needed only for the run directory and the summary's baseline.
    """
    started = time.perf_counter()
    validate(cfg)
    if cfg.drop or cfg.delay:
        raise ConfigError("--drop and delays are simulated by the in-process memory transport only: drop --ray")
    with ray_cluster(address) as ray:
        batches = assign_batches(cfg, actors or cluster_cpus(ray))
        log.info("%d peers on %d Ray actors: %s", cfg.peers, len(batches), [len(b) for b in batches])
        outcomes = _run_batches(ray, cfg, batches, progress)
    model = model or TaskModel.load(cfg.learn)
    recorder = make_recorder(cfg)
    reports = sorted((r for o in outcomes for r in o.reports), key=lambda r: (r.round, r.index))
    for report in reports:
        recorder.record(report)
    result = finish_run(cfg, recorder, [p for o in outcomes for p in o.peers], model, out, time.perf_counter() - started)
    if progress is not None:
        progress(len(reports), len(reports), recorder._status())
    return result


def _run_batches(
    ray: Any, cfg: SimConfig, batches: list[list[int]], progress: Callable[[int, int, str], None] | None
) -> list[BatchOutcome]:
    """Start one actor per batch, wire them to each other, run them all, and return what they send back."""
    actor_class = ray.remote(num_cpus=1, max_concurrency=DELIVERY_THREADS, concurrency_groups={"run": 1})(PeerBatch)
    handles = [actor_class.remote(cfg, batch) for batch in batches]
    total = cfg.peers * cfg.gossip.rounds
    if progress is not None:
        progress(0, total, f"starting {len(handles)} actors (each loads the base model)")
    try:
        ray.get([h.ready.remote() for h in handles])  # every base model loaded before any peer starts
        ids = [identity.peer_id for identity in peer_identities(cfg)]
        routes = {ids[i]: handle for handle, batch in zip(handles, batches, strict=True) for i in batch}
        ray.get([h.route.remote(routes) for h in handles])
        runs = [h.run.options(concurrency_group="run").remote() for h in handles]
        pending = runs
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            if progress is not None and pending:
                progress(sum(ray.get([h.done.remote() for h in handles])), total, f"{len(handles)} actors running")
        outcomes: list[BatchOutcome] = ray.get(runs)
        return outcomes
    finally:
        for handle in handles:
            ray.kill(handle)
