"""`p2pfed sim`: N real `Peer`s in one process over the in-memory transport, sharing one frozen base model.

Writes a run directory: config.json, metrics.jsonl (one row per peer per round), summary.json,
reputation.json, accuracy.png and each peer's final adapter as a peft adapter directory.

The graph is drawn once from the seed (`p2pfed.peer.topology`) and the Byzantine peers placed on it
(`p2pfed.sims.placement`). With `membership="static"` it stays; with "sampling" it is only the first
neighbours, and each peer's `Membership` (the one `join` runs) rewires it between rounds from its
defence's evidence (`p2pfed.net.memory_membership`). Every row records the peer's share of Byzantine
neighbours in that round and the rewiring it went through on entering it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import trio

from p2pfed.attacks.base import Behaviour, Collusion
from p2pfed.attacks.instruction_poisoning import Backdoor
from p2pfed.attacks.kinds import poisons_labels, poisons_rows
from p2pfed.attacks.registry import load_behaviour
from p2pfed.attacks.sybil import SybilMember
from p2pfed.config import MAX_NEIGHBOURS, SHARED_SCHEDULE, GossipConfig, RunManifest, write_atomic
from p2pfed.errors import ConfigError
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.learn.partition import partition, split_validation
from p2pfed.net.libp2p_transport import Libp2pConfig
from p2pfed.net.loopback import loopback_transports
from p2pfed.net.memory import MemoryNetwork
from p2pfed.net.memory_membership import MemoryMembership
from p2pfed.net.transport import Transport
from p2pfed.peer.byzantine import Attacker
from p2pfed.peer.local import LocalModel
from p2pfed.peer.peer import TENSOR, Peer, ResumedRound, RoundReport
from p2pfed.peer.scheduler import ComputeScheduler
from p2pfed.peer.topology import DEFAULT_DEGREE, LiveNeighbours, build_topology
from p2pfed.robust.base import Defence
from p2pfed.robust.registry import DEFAULT_DEFENCE, load_defence
from p2pfed.robust.reputation import ReputationTable
from p2pfed.seeds import Seed, partition_rng, validation_rng
from p2pfed.sims.oracle import ORACLE, Oracle
from p2pfed.sims.placement import Placement, byzantine_shares, place_byzantine
from p2pfed.sims.plots import plot_accuracy
from p2pfed.wire import Identity, Schema

log = logging.getLogger(__name__)

TRANSPORTS = ("memory", "libp2p")
MEMBERSHIPS = ("static", "sampling")
SAMPLE_FROM = 64  # peers from which rounds are evaluated on a test sample by default
EVAL_SAMPLE = 200  # its rows: ±3.5 points per peer, the honest mean over hundreds of peers far tighter


@dataclass(frozen=True)
class SimConfig:
    peers: int = 10
    topology: str = "regular"
    degree: int = DEFAULT_DEGREE  # neighbours per peer (regular, small-world)
    edge_probability: float = 0.3  # erdos-renyi
    partition: str = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration; smaller = more non-IID
    classes_per_peer: int = 2  # k-classes partition
    val_fraction: float = 0.15  # of each peer's shard held out for its own validation (defences)
    byzantine: int = 0  # how many peers are Byzantine
    placement: str = "random"  # where they sit on the graph: "random", or "eclipse" (around honest victims)
    # "static": the drawn graph for the whole run; "sampling": peers rewire it from their defence's evidence
    # (memory transport). Static stays the default until the sparse preset shows sampling is never worse.
    membership: str = "static"
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    defence: str = DEFAULT_DEFENCE  # Bristle-style with reputation; "mean" is plain D-PSGD mixing
    defence_params: dict[str, Any] = field(default_factory=dict)
    evaluate_every: int = 1  # rounds between global-test evaluations of every honest peer
    delay: float = 0.0  # memory transport: seconds per message
    drop: float = 0.0  # memory transport: probability a message is lost
    save_adapters: bool = True
    # every waiting peer's local training and evaluation in one stacked call (p2pfed.peer.scheduler);
    # False: each peer's own call in a worker thread, peers taking turns (the daemon's path)
    batched: bool = True
    # test rows each peer is evaluated on after a round: 0 = the full test set up to SAMPLE_FROM peers and
    # EVAL_SAMPLE rows above; the final round is always scored on the full set
    eval_sample: int = 0
    gossip: GossipConfig = field(default_factory=GossipConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)  # its `run` is the contract of the simulated run

    def __post_init__(self) -> None:
        # a simulation's schedule sets Q and the round window; its contract records them
        run = dataclasses.replace(self.learn.run, **{k: getattr(self.gossip, k) for k in SHARED_SCHEDULE})
        object.__setattr__(self, "learn", dataclasses.replace(self.learn, run=run))

    @property
    def seed(self) -> int:
        return self.learn.run.seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SimResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path | None
    vectors: list[np.ndarray] = field(default_factory=list)  # each peer's final flat adapter vector


def topology_of(cfg: SimConfig) -> tuple[tuple[int, ...], ...]:
    """The run's static graph: each peer's neighbour indices."""
    return _cached_topology(cfg.topology, cfg.peers, cfg.degree, cfg.edge_probability, cfg.seed)


@functools.lru_cache(maxsize=8)  # an experiment validates many cells on the same graph
def _cached_topology(name: str, peers: int, degree: int, p: float, seed: int) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, build_topology(name, peers, degree=degree, p=p, seed=seed)))


def placement_of(cfg: SimConfig) -> Placement:
    """Which peers are Byzantine (and, with eclipse placement, which honest peers they surround)."""
    placement = place_byzantine(cfg.placement, topology_of(cfg), cfg.byzantine, cfg.seed)
    if cfg.byzantine and cfg.attack == "none":
        raise ConfigError("--byzantine needs an --attack (see `p2pfed sim --help` for the list)")
    return placement


def byzantine_indices(cfg: SimConfig) -> list[int]:
    return placement_of(cfg).byzantine


def validate(cfg: SimConfig) -> None:
    """Fail fast on options that cannot work, before anything slow (model loading) happens."""
    if cfg.membership not in MEMBERSHIPS:
        raise ConfigError(f"unknown --membership {cfg.membership!r}; choose one of {', '.join(MEMBERSHIPS)}")
    placement_of(cfg)
    make_defence(cfg, frozenset())
    if cfg.byzantine:
        load_behaviour(cfg.attack, count=cfg.byzantine, **cfg.attack_params)


def make_defence(cfg: SimConfig, byzantine: frozenset[str]) -> Defence:
    """The defence of one honest peer. "oracle" (a reference for experiments) is told the Byzantine peer
    IDs and wraps the default defence, built with `defence_params`."""
    if cfg.defence == ORACLE:
        return Oracle(byzantine, load_defence(DEFAULT_DEFENCE, **cfg.defence_params))
    return load_defence(cfg.defence, **cfg.defence_params)


def run_simulation(
    cfg: SimConfig,
    *,
    out: Path | None = None,
    model: TaskModel | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    transport: str = "memory",
) -> SimResult:
    """Run a whole simulation (blocking). `model` lets callers reuse a loaded base across runs.

    `transport`: "memory" (in-memory channels) or "libp2p" (one real host per peer on 127.0.0.1).
    """
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    if transport != "memory" and cfg.membership != "static":
        raise ConfigError("--membership sampling runs on the memory transport (join always samples)")
    started = time.perf_counter()
    validate(cfg)
    model = model or TaskModel.load(cfg.learn)
    return trio.run(_simulate, cfg, model, out, progress, started, transport)


async def _simulate(
    cfg: SimConfig,
    model: TaskModel,
    out: Path | None,
    progress: Callable[[int, int, str], None] | None,
    started: float,
    transport: str = "memory",
) -> SimResult:
    adjacency = topology_of(cfg)
    identities = peer_identities(cfg)
    ids = [identity.peer_id for identity in identities]
    placement = placement_of(cfg)
    if cfg.placement == "eclipse":
        log.info("eclipse placement: %d Byzantine peers surround honest peers %s", len(placement.byzantine),
                 placement.victims)
    compute = trio.CapacityLimiter(1)  # one torch job at a time: the shared model is not thread-safe
    scheduler = ComputeScheduler(compute) if cfg.batched else None
    sample = eval_sample_of(cfg, len(model.test_labels))
    run_digest = run_contract(cfg, model).digest()
    network = _memory_network(cfg, ids, adjacency, placement) if transport == "memory" else None
    recorder = make_recorder(cfg, progress, network)
    if model.kind == "instruction":  # round 0: the base model itself (every adapter starts at B = 0)
        base = model.evaluate(model.initial_vector())
        recorder.base = language_metrics(base.loss, base.accuracy)

    def wire(transports: list[Transport]) -> list[Peer]:
        return build_peers(
            cfg, model, dict(enumerate(transports)), on_round=recorder.record, compute=compute,
            test_sample=sample, network=network, scheduler=scheduler,
        )

    if transport == "libp2p":  # real hosts on 127.0.0.1, meshed; each Peer still talks to its topology only
        config = Libp2pConfig(run_digest=run_digest, max_neighbours=max(MAX_NEIGHBOURS, cfg.peers - 1))
        async with loopback_transports(identities, config, timeout_s=60 + cfg.peers) as hosts:
            peers = wire(list(hosts))
            await _run_peers(peers, cfg.gossip.rounds, scheduler)
    else:
        assert network is not None
        peers = wire([network.add(ids[i], [ids[j] for j in adjacency[i]]) for i in range(cfg.peers)])
        async with trio.open_nursery() as nursery:
            await nursery.start(network.run)
            await _run_peers(peers, cfg.gossip.rounds, scheduler)
            nursery.cancel_scope.cancel()

    honest = [p for p in peers if not p.byzantine]
    if sample is not None and honest and recorder.scored_final_round():  # on a sample: again on the full set
        if progress is not None:
            progress(recorder.done, recorder.done, f"scoring {len(honest)} final vectors on the full test set")
        recorder.rescore_last(honest, model.evaluate_many(np.stack([p.vector for p in honest])))
    extra: dict[str, Any] = {"eval_sample": None if sample is None else len(sample)}
    if scheduler is not None:
        log.info("scheduler: %s", scheduler.stats)
        extra["batches"] = dataclasses.asdict(scheduler.stats)
    return finish_run(cfg, recorder, peers, model, out, time.perf_counter() - started, extra)


class FinishedPeer(Protocol):
    """What the run directory keeps of a peer: a `Peer`, or its final state sent back by a Ray actor."""

    index: int
    vector: np.ndarray
    reputation: ReputationTable

    @property
    def byzantine(self) -> bool: ...


def finish_run(
    cfg: SimConfig, recorder: _Recorder, peers: Sequence[FinishedPeer], model: TaskModel, out: Path | None,
    wall: float, extra: Mapping[str, Any] | None = None,
) -> SimResult:
    """The summary of a finished run, written to `out` (if given) with every peer's final state."""
    peers = sorted(peers, key=lambda p: p.index)
    summary = recorder.summary(wall, majority_baseline(model))
    summary.update(extra or {})
    backdoor = backdoor_of(cfg)
    if backdoor is not None and model.kind == "instruction":
        summary["final"].update(backdoor_success(model, backdoor, [p.vector for p in peers if not p.byzantine]))
    if out is not None:
        _write_run_dir(out, cfg, recorder, summary, peers, model)
        if model.kind == "instruction":
            write_samples(out / "samples.jsonl", model, model.initial_vector(), peers)
    return SimResult(summary=summary, rows=recorder.rows, out=out, vectors=[p.vector for p in peers])


def _memory_network(
    cfg: SimConfig, ids: list[str], adjacency: tuple[tuple[int, ...], ...], placement: Placement
) -> MemoryNetwork:
    """The memory switchboard; with sampling membership, every peer's `Membership` starts from the drawn
    graph (its target degree: its degree there). Under eclipse placement the Byzantine peers advertise
    only each other in peer exchange."""
    membership = None
    if cfg.membership == "sampling":
        bad = [ids[i] for i in placement.byzantine]
        membership = MemoryMembership(
            {ids[i]: max(1, len(adjacency[i])) for i in range(cfg.peers)},
            seed=cfg.seed,
            advertise_only={p: bad for p in bad} if cfg.placement == "eclipse" else None,
        )
        membership.install({ids[i]: [ids[j] for j in adjacency[i]] for i in range(cfg.peers)})
    return MemoryNetwork(delay=cfg.delay, drop=cfg.drop, seed=cfg.seed, membership=membership)


class _GatedPeer(Peer):
    """A simulated Peer under sampling membership: it starts each round once the network has rewired for
    it, and at the end of a round hands its defence's evidence to
    membership (`Peer.membership_evidence`), as `join` does after every round."""

    def __init__(self, *, network: MemoryNetwork, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = network

    async def run_round(self, rnd: int, *, resume: ResumedRound | None = None) -> None:
        await self.network.wait_round(rnd)
        await super().run_round(rnd, resume=resume)
        self.network.round_finished(self.peer_id, rnd, self.membership_evidence())


async def _run_peers(peers: list[Peer], rounds: int, scheduler: ComputeScheduler | None = None) -> None:
    async with trio.open_nursery() as outer:
        if scheduler is not None:
            outer.start_soon(scheduler.serve)
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(lambda p=peer: p.run(rounds=rounds))
        outer.cancel_scope.cancel()


def eval_sample_of(cfg: SimConfig, test_rows: int) -> np.ndarray | None:
    """The fixed test positions every peer is scored on after a round (drawn once from the seed), or
    None for the full test set (see SimConfig.eval_sample)."""
    size = cfg.eval_sample or (EVAL_SAMPLE if cfg.peers > SAMPLE_FROM else 0)
    if size <= 0 or size >= test_rows:
        return None
    rng = np.random.default_rng([cfg.seed, Seed.SIM_EVAL_SAMPLE])
    return np.sort(rng.choice(test_rows, size=size, replace=False)).astype(np.int64)


def peer_identities(cfg: SimConfig) -> list[Identity]:
    return [Identity.for_peer(cfg.seed, i) for i in range(cfg.peers)]


def make_recorder(
    cfg: SimConfig, progress: Callable[[int, int, str], None] | None = None, network: MemoryNetwork | None = None
) -> _Recorder:
    """What turns every peer's round reports into the run's rows, curve and summary (with sampling
    membership, `network` tells it each round's neighbours and rewires)."""
    placement = placement_of(cfg)
    return _Recorder(cfg, [i.peer_id for i in peer_identities(cfg)], placement,
                     byzantine_shares(topology_of(cfg), placement.byzantine), progress, network)


def build_peers(
    cfg: SimConfig,
    model: TaskModel,
    transports: Mapping[int, Transport],
    *,
    on_round: Callable[[RoundReport], None],
    compute: trio.CapacityLimiter,
    test_sample: np.ndarray | None = None,
    network: MemoryNetwork | None = None,
    scheduler: ComputeScheduler | None = None,
) -> list[Peer]:
    """The Peers of the indices in `transports`, wired the same way whatever the transport and whichever
    process builds them (all peers here; a batch of them on each Ray actor with `--ray`): every peer's
    data, defence, attack and neighbours follow from the seed alone. The Byzantine peers among them share
    one `Collusion` board, so colluders must be built together."""
    shards = partition(
        model.train_labels, cfg.peers, cfg.partition, alpha=cfg.alpha, classes_per_peer=cfg.classes_per_peer,
        rng=partition_rng(cfg.seed),
    )
    adjacency = topology_of(cfg)
    identities = peer_identities(cfg)
    ids = [identity.peer_id for identity in identities]
    byzantine = placement_of(cfg).byzantine
    behaviours: dict[int, Behaviour] = {}
    if byzantine:
        group = load_behaviour(cfg.attack, count=len(byzantine), **cfg.attack_params)
        check_attack_fits(cfg.attack, group[0], model.kind)
        behaviours = dict(zip(byzantine, group, strict=True))
    colluders = frozenset(ids[i] for i in byzantine)
    collusion = Collusion() if byzantine else None
    schema = Schema.from_tensors({TENSOR: np.zeros(model.dim, dtype=np.float32)})
    run_digest = run_contract(cfg, model).digest()
    initial = model.initial_vector()
    peers: list[Peer] = []
    for i, transport in transports.items():
        train_idx, val_idx = split_validation(shards[i], cfg.val_fraction, validation_rng(cfg.seed, i))
        behaviour = behaviours.get(i)
        labels = None
        if behaviour is not None:
            train_idx, labels = poisoned_data(model, behaviour, train_idx, [cfg.seed, i, Seed.LABEL_POISON])
        local = LocalModel(model, train_idx, val_idx, cfg.gossip, labels=labels, test_sample=test_sample)
        if collusion is not None:  # white-box attackers know their victims' validation class counts
            collusion.validation_classes[ids[i]] = local.validation_classes
        neighbours: Mapping[str, int] = {ids[j]: len(adjacency[j]) for j in adjacency[i]}
        gate: dict[str, Any] = {}
        if network is not None and network.membership is not None:  # sampling: neighbours change per round
            neighbours = LiveNeighbours(transport.neighbour_degrees)  # type: ignore[attr-defined]
            gate = {"network": network}
        peers.append(
            (_GatedPeer if gate else Peer)(
                index=i,
                identity=identities[i],
                transport=transport,
                local=local,
                run_digest=run_digest,
                schema=schema,
                neighbour_degrees=neighbours,
                gossip=cfg.gossip,
                defence=make_defence(cfg, colluders),
                initial=initial,
                seed=cfg.seed,
                compute=compute,
                behaviour=None if behaviour is None else Attacker(
                    behaviour, gossip_steps=cfg.gossip.gossip_steps, colluders=colluders, collusion=collusion
                ),
                reputation=ReputationTable(),
                on_round=on_round,
                evaluate_every=cfg.evaluate_every,
                run_blocking=None if scheduler is None else scheduler.runner(i),
                **gate,
            )
        )
    return peers


def check_attack_fits(name: str, behaviour: Behaviour, kind: str) -> None:
    """A data-poisoning attack must poison the kind of data the task has: labels or instruction rows."""
    if kind == "instruction" and poisons_labels(behaviour):
        raise ConfigError(
            f"attack {name!r} flips class labels, but this task is instruction data; "
            "use --attack wrong_answers or backdoor"
        )
    if kind != "instruction" and poisons_rows(behaviour):
        raise ConfigError(
            f"attack {name!r} rewrites instruction rows, but this task is classification data; "
            "use --attack label_flip"
        )


def poisoned_data(
    model: TaskModel, behaviour: Behaviour, train_idx: np.ndarray, seed: list[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A Byzantine peer's training rows and labels (None: the true ones) after its data-level attack:
    classification labels through `poison_labels`, instruction rows through `poison_rows` (the rewritten
    rows are added to the model's pool, see TaskModel.add_rows)."""
    rng = np.random.default_rng(seed)
    if model.kind == "instruction":
        rows = model.pool_conversations(train_idx)
        poisoned_rows = behaviour.poison_rows(rows, rng)
        return (train_idx if poisoned_rows is rows else model.add_rows(poisoned_rows)), None
    true = model.train_labels[train_idx]
    poisoned = behaviour.poison_labels(true, model.num_classes, rng)
    return train_idx, None if poisoned is true else poisoned


SAMPLE_PROMPTS = 8  # held-out test prompts answered in samples.jsonl
BACKDOOR_PROMPTS = 8  # triggered held-out prompts each honest peer answers to measure a backdoor
BACKDOOR_TOKENS = 24  # enough for a short payload sentence


def backdoor_of(cfg: SimConfig) -> Backdoor | None:
    """The run's backdoor attack (directly or behind Sybil identities), None for any other attack."""
    if not cfg.byzantine:
        return None
    behaviour = load_behaviour(cfg.attack, **cfg.attack_params)
    if isinstance(behaviour, SybilMember):
        behaviour = behaviour.group.inner
    return behaviour if isinstance(behaviour, Backdoor) else None


def backdoor_success(model: TaskModel, backdoor: Backdoor, vectors: Sequence[np.ndarray]) -> dict[str, Any]:
    """The attack success rate: the share of triggered held-out prompts whose greedy answer carries the
    payload, for each honest peer (mean and worst peer) and for the base model (the false-alarm level)."""
    contexts = [backdoor.triggered(c) for c, _ in model.test_conversations(BACKDOOR_PROMPTS)]

    def rate(vector: np.ndarray) -> float:
        answers = model.generate(vector, contexts, max_new_tokens=BACKDOOR_TOKENS)
        return float(np.mean([backdoor.hit(a) for a in answers])) if answers else 0.0

    rates = [rate(v) for v in vectors]
    return {
        "backdoor_success_mean": round(float(np.mean(rates)), 4) if rates else None,
        "backdoor_success_max": round(float(np.max(rates)), 4) if rates else None,  # the worst honest peer
        "backdoor_success_base": rate(model.initial_vector()),
        "backdoor_prompts": len(contexts),
    }


def language_metrics(loss: float, token_accuracy: float) -> dict[str, float]:
    """Held-out response loss, its perplexity exp(loss) and next-token accuracy, rounded for reading."""
    return {
        "loss": round(loss, 4),
        "perplexity": round(float(np.exp(loss)), 3),
        "token_accuracy": round(token_accuracy, 4),
    }


def write_samples(path: Path, model: TaskModel, initial: np.ndarray, peers: Sequence[FinishedPeer]) -> None:
    """Greedy answers to the first test prompts from the base model and from the first honest peer's
    final adapter (adapters/peer-NN), next to the reference answers: one JSON object per prompt."""
    honest = next((p for p in peers if not p.byzantine), None)
    if honest is None:
        return
    conversations = model.test_conversations(SAMPLE_PROMPTS)
    contexts = [c for c, _ in conversations]
    base = model.generate(initial, contexts)
    tuned = model.generate(honest.vector, contexts)
    rows = [
        {
            "prompt": context[-1][1],
            "reference": reference,
            "base": b,
            "adapter": t,
            "adapter_dir": f"adapters/peer-{honest.index:02d}",
        }
        for (context, reference), b, t in zip(conversations, base, tuned, strict=True)
    ]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def majority_baseline(model: TaskModel) -> float | None:
    """The accuracy of always answering the test set's most common class (None for instruction data)."""
    labels = model.test_labels
    if model.num_classes < 2 or labels.size == 0:
        return None
    return float(np.bincount(labels, minlength=model.num_classes).max() / labels.size)


def run_contract(cfg: SimConfig, model: TaskModel) -> RunManifest:
    """The contract a simulation's peers agree on: the configured one, pinned to the loaded base model."""
    return dataclasses.replace(cfg.learn.run, base_hash=model.base_hash, labels=tuple(model.label_names))


class _Recorder:
    """Collects round reports; once every peer has reported a round, derives the per-round metrics."""

    def __init__(
        self,
        cfg: SimConfig,
        ids: list[str],
        placement: Placement,
        byzantine_shares: list[float],  # each peer's share of Byzantine neighbours on the static graph
        progress: Callable[[int, int, str], None] | None,
        network: MemoryNetwork | None = None,  # its membership's per-round neighbours, if it has one
    ) -> None:
        self.cfg = cfg
        self.network = network if network is not None and network.membership is not None else None
        self.share_rows: list[list[float]] = []  # per round, each peer's share of Byzantine neighbours
        self.rewire_rows: list[list[int]] = []  # per round, each peer's evictions at that round's boundary
        self.ids = ids
        self.index = {pid: i for i, pid in enumerate(ids)}
        self.byzantine = set(placement.byzantine)
        self.victims = placement.victims
        self.shares = byzantine_shares
        self.progress = progress
        self.pending: dict[int, list[RoundReport]] = defaultdict(list)
        self.rows: list[dict[str, Any]] = []
        self.curve: list[dict[str, Any]] = []
        self.last: dict[int, RoundReport] = {}
        self.done = 0
        self.base: dict[str, float] | None = None  # instruction data: the base model's test metrics

    def record(self, report: RoundReport) -> None:
        self.pending[report.round].append(report)
        self.last[report.index] = report
        self.done += 1
        if self.progress is not None:
            total = self.cfg.peers * self.cfg.gossip.rounds
            self.progress(self.done, total, self._status())
        if len(self.pending[report.round]) == self.cfg.peers:
            self._close_round(report.round, self.pending.pop(report.round))

    def _status(self) -> str:
        if not self.curve:
            return ""
        last = self.curve[-1]
        rounds = self.cfg.gossip.rounds
        return f"round {last['round'] + 1}/{rounds} acc {last['honest_accuracy_mean']:.3f}"

    def _close_round(self, rnd: int, reports: list[RoundReport]) -> None:
        reports = sorted(reports, key=lambda r: r.index)  # arrival order varies; float sums must not
        honest = [r for r in reports if not r.byzantine]
        mean = np.mean([r.vector for r in honest], axis=0)
        shares, changes = self._neighbourhood(rnd)
        for r in reports:
            self.rows.append(
                {
                    "round": rnd,
                    "peer": r.index,
                    "peer_id": r.peer,
                    "byzantine": r.byzantine,
                    "accuracy": r.accuracy,
                    "loss": r.loss,
                    "train_loss": r.train_loss,
                    "consensus_distance": float(np.linalg.norm(r.vector - mean)),
                    "byzantine_neighbour_share": round(shares[r.index], 4),
                    # what its neighbourhood went through entering this round (sampling membership)
                    "rewires": changes[r.index][0],  # neighbours it evicted for evidence
                    "neighbours_added": changes[r.index][1],
                    "neighbours_removed": changes[r.index][2],
                    "bytes_sent": r.bytes_sent,
                    "bytes_received": r.bytes_received,
                    "seconds": round(r.seconds, 4),
                    "outcomes": r.outcomes,
                    "rejections": r.rejections,
                    "reputation": {str(self.index.get(k, k)): round(v, 4) for k, v in r.reputation.items()},
                }
            )
        accuracies = [r.accuracy for r in honest if r.accuracy is not None]
        if accuracies:
            self.curve.append(
                {
                    "round": rnd,
                    "honest_accuracy_mean": float(np.mean(accuracies)),
                    "honest_accuracy_std": float(np.std(accuracies)),
                    "honest_accuracy_min": float(np.min(accuracies)),
                    "honest_accuracy_max": float(np.max(accuracies)),
                    "consensus_distance": float(np.mean([np.linalg.norm(r.vector - mean) ** 2 for r in honest])),
                }
            )
            if self.base is not None:  # instruction data: accuracy is next-token accuracy, loss the response loss
                perplexities = [float(np.exp(r.loss)) for r in honest if r.loss is not None]
                self.curve[-1]["honest_perplexity_mean"] = float(np.mean(perplexities))
                self.curve[-1]["honest_perplexity_max"] = float(np.max(perplexities))  # the worst honest peer

    def _neighbourhood(self, rnd: int) -> tuple[list[float], list[tuple[int, int, int]]]:
        """Each peer's share of Byzantine neighbours in round `rnd`, and (evicted, added, removed) at its
        boundary: the static graph's shares and no changes without membership."""
        none = [(0, 0, 0)] * len(self.ids)
        if self.network is None:
            shares, changes = list(self.shares), none
        else:
            current = self.network.neighbours_at.get(rnd, {})
            shares = [
                sum(self.index[n] in self.byzantine for n in current.get(pid, [])) / max(1, len(current.get(pid, [])))
                for pid in self.ids
            ]
            at = self.network.changes_at.get(rnd, {})
            changes = [
                (c.evicted, c.added, c.removed) if (c := at.get(pid)) is not None else (0, 0, 0) for pid in self.ids
            ]
        self.share_rows.append(shares)
        self.rewire_rows.append([c[0] for c in changes])
        return shares, changes

    def recovery(self) -> dict[str, Any]:
        """How the eclipse victims and the honest peers' neighbourhoods fared, round by round."""
        honest = [i for i in range(len(self.ids)) if i not in self.byzantine]
        rewires = [row[i] for row in self.rewire_rows for i in honest]
        majority = [all(row[v] < 0.5 for v in self.victims) for row in self.share_rows]
        first = next((r for r, ok in enumerate(majority) if ok), None)
        return {
            # rounds (from the start) until every victim has a majority of honest neighbours; None: never
            "victims_honest_majority_round": first if self.victims else None,
            "victims_keep_majority": None if first is None or not self.victims else all(majority[first:]),
            "byzantine_share_mean_by_round": [
                round(float(np.mean([row[i] for i in honest])), 4) for row in self.share_rows
            ] if honest else [],
            "rewires_per_peer_round_mean": round(float(np.mean(rewires)), 4) if rewires else 0.0,
            "rewires_per_peer_round_max": int(max(rewires, default=0)),
        }

    def scored_final_round(self) -> bool:
        """Whether the final vectors were evaluated after the last round (not so with evaluate_every=0,
        or when the last round is not a multiple of it): only then is there a final figure to rescore."""
        return bool(self.curve) and self.curve[-1]["round"] == self.cfg.gossip.rounds - 1

    def rescore_last(self, honest: list[Peer], results: list[Any]) -> None:
        """Replace the last round's sampled accuracies with the final vectors' on the full test set."""
        if not honest or not self.scored_final_round():
            return
        last = self.curve[-1]["round"]
        by_index = {p.index: r for p, r in zip(honest, results, strict=True)}
        for row in self.rows:
            if row["round"] == last and row["peer"] in by_index:
                row["accuracy"], row["loss"] = by_index[row["peer"]].accuracy, by_index[row["peer"]].loss
        accuracies = [r.accuracy for r in results]
        self.curve[-1].update(
            honest_accuracy_mean=float(np.mean(accuracies)),
            honest_accuracy_std=float(np.std(accuracies)),
            honest_accuracy_min=float(np.min(accuracies)),
            honest_accuracy_max=float(np.max(accuracies)),
            full_test_set=True,
        )

    def summary(self, wall: float, majority_baseline: float | None = None) -> dict[str, Any]:
        final = self.curve[-1] if self.curve else {}
        honest = [i for i in range(len(self.ids)) if i not in self.byzantine]
        shares = self.share_rows[-1] if self.share_rows else self.shares  # in the last round
        worst = max(honest, key=lambda i: shares[i]) if honest else None
        return {
            "final": {
                "round": final.get("round"),
                "honest_accuracy_mean": final.get("honest_accuracy_mean"),
                "honest_accuracy_std": final.get("honest_accuracy_std"),
                "honest_accuracy_min": final.get("honest_accuracy_min"),  # the worst honest peer
                # instruction data: held-out response perplexity (mean, and the worst honest peer's)
                "honest_perplexity_mean": final.get("honest_perplexity_mean"),
                "honest_perplexity_max": final.get("honest_perplexity_max"),
                "consensus_distance": final.get("consensus_distance"),
                # always answering the test set's most common class scores this: an honest peer below it
                # has learnt nothing useful, whatever the mean says
                "majority_baseline": majority_baseline,
                # the worst-off honest peer's share of Byzantine neighbours, and who that is
                "byzantine_share_max": None if worst is None else round(shares[worst], 4),
                "byzantine_share_max_peer": worst,
            },
            "curve": self.curve,
            "base_model": self.base,  # instruction data: round 0, before any training
            "byzantine_peers": sorted(self.byzantine),
            "byzantine_peer_ids": [self.ids[i] for i in sorted(self.byzantine)],
            "placement": self.cfg.placement,
            "eclipse_victims": self.victims,
            "membership": self.cfg.membership,
            "neighbourhoods": self.recovery(),
            "attack": self.cfg.attack,
            "defence": self.cfg.defence,
            "peers": self.cfg.peers,
            "wall_seconds": round(wall, 2),
        }


def _write_run_dir(
    out: Path, cfg: SimConfig, recorder: _Recorder, summary: dict[str, Any], peers: Sequence[FinishedPeer],
    model: TaskModel,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in recorder.rows).encode())
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    reputation = {
        str(p.index): {str(recorder.index.get(k, k)): v for k, v in p.reputation.snapshot().items()}
        for p in peers
        if not p.byzantine
    }
    write_atomic(out / "reputation.json", json.dumps(reputation, indent=2).encode())
    plot_accuracy(recorder.curve, recorder.rows, out / "accuracy.png", title=_title(cfg))
    if cfg.save_adapters:
        for p in peers:
            model.save_adapter(p.vector, out / "adapters" / f"peer-{p.index:02d}")


def _title(cfg: SimConfig) -> str:
    attack = f", {cfg.byzantine} Byzantine ({cfg.attack}), defence {cfg.defence}" if cfg.byzantine else ""
    return (
        f"{cfg.learn.run.task} · {cfg.learn.run.model} · {cfg.peers} peers ({cfg.topology}, {cfg.partition} α={cfg.alpha})"
        f" · K={cfg.gossip.local_steps} Q={cfg.gossip.gossip_steps} ρ={cfg.gossip.rho}{attack}"
    )
