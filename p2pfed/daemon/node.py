"""One peer of a live network: identity + run manifest + TaskModel + libp2p transport + `Peer` + status.

`Node.load` does the blocking part (check the manifest against the local model, load model and data,
restore the checkpoint); `Node.run` serves until the last round or until cancelled. Every round ends with
an atomic checkpoint, a metrics row and a status update, so a killed node loses at most the round it was
in. A resumed node never signs a round twice (`mark_signed`): its second envelopes of a step would carry
another mix than the first, which its neighbours would take for an equivocation. Each envelope is on disk
before it is sent (`save_sealed`), so a node killed mid-round resumes that round at the last step it sent,
with the same bytes; its neighbours send it their updates of the round again when they see that repeat.
Then it catches up with its neighbours' median round if they are ahead.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from p2pfed.attacks.base import Behaviour
from p2pfed.config import ANNOUNCE_INTERVAL_S, LINGER_S, MAX_NEIGHBOURS, GossipConfig, RunManifest
from p2pfed.daemon.files import (
    IDENTITY_FILE,
    claim_directory,
    load_or_create_identity,
    swap_adapter,
)
from p2pfed.daemon.metrics import NodeMetrics
from p2pfed.daemon.runfile import RunFile
from p2pfed.daemon.status import STATUS_FILE, NodeStatus, append_metrics, metrics_row, progress_line
from p2pfed.errors import CheckpointError, ConfigError, NetworkError
from p2pfed.learn import LearnConfig, TaskModel, split_validation
from p2pfed.net.libp2p_transport import Libp2pConfig, Libp2pTransport
from p2pfed.peer.checkpoint import Checkpoint, load_checkpoint, resume_point
from p2pfed.peer.local import LocalModel
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.peer.topology import LiveNeighbours
from p2pfed.robust.registry import DEFAULT_DEFENCE, load_defence
from p2pfed.robust.reputation import ReputationTable
from p2pfed.seeds import validation_rng
from p2pfed.wire import Identity, Schema

if TYPE_CHECKING:
    # trio exports trio.TaskStatus, but mypy reads trio-typing's stale trio stubs (a libp2p
    # dependency, they shadow trio's own types), which have it only as trio_typing.TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

SETTLE_QUIET_S = 1.0  # before round 0: no new neighbour for this long means discovery has settled
SETTLE_MAX_S = 5.0


@dataclass(frozen=True)
class NodeConfig:
    run_file: Path
    data: Path  # the peer's private .jsonl
    out: Path = Path("p2pfed-node")
    eval_data: Path | None = None  # test rows; default: `eval_size` rows held out of `data`
    identity: Path | None = None  # default: <out>/identity.key, created on first start
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()  # addresses to tell other peers (a public IP behind 0.0.0.0)
    mdns: bool = False
    dht: bool = True  # find the run's peers through the Kademlia DHT (provider record of the run digest)
    private: bool = False  # behind NAT: reserve a relay slot and announce the relayed address
    autonat: bool = True  # ask peers to dial us back; act as `private` if none can
    relay_service: bool | None = None  # relay for others; None: yes unless `private`
    gossip: GossipConfig | None = None  # None: the run file's [gossip] table; Q, round window: the run's
    defence: str = DEFAULT_DEFENCE
    defence_params: dict[str, Any] = field(default_factory=dict)
    max_neighbours: int = MAX_NEIGHBOURS
    min_neighbours: int = 1  # round 0 waits for this many neighbours
    neighbour_wait_s: float = 600.0  # give up (error) if they do not show up by then
    linger_s: float = LINGER_S  # after the last round: serve neighbours still behind it, this long at most
    val_fraction: float = 0.15  # of the training rows, held out for the defence's validation scores
    eval_size: int = 200  # held-out evaluation rows when there is no --eval file (at most 1/5 of the data)
    evaluate_every: int = 1
    threads: int = 0  # torch threads; 0 = torch's default
    announce_interval_s: float = ANNOUNCE_INTERVAL_S  # presence (peer exchange, degrees) on the run's topic
    index: int | None = None  # seed stream of this peer; None: derived from the peer ID (simulations set it)
    # a Byzantine peer for `p2pfed sim --processes`: an attack that needs no colluders (see `node_attack`)
    attack: str | None = None
    attack_params: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str], None]


def peer_index(peer_id: str) -> int:
    """A stable per-peer integer for seed streams (simulations number peers; a network cannot)."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:4], "big")


def check_base_model(manifest: RunManifest) -> None:
    """Refuse to join with a base model whose content differs from the one the run pinned."""
    from p2pfed.learn.models import resolve_model

    if not manifest.base_hash:
        log.warning("the run manifest pins no base_hash: peers cannot check they share the base model")
        return
    local = resolve_model(manifest.model).base_hash
    if local != manifest.base_hash:
        raise ConfigError(
            f"the local base model {manifest.model!r} has content hash {local[:16]}…, but the run pins "
            f"{manifest.base_hash[:16]}…: install the exact model the run was created with"
        )


def node_attack(name: str | None, params: dict[str, Any]) -> Behaviour | None:
    """The behaviour of a Byzantine `join` process (simulations only), or None for an honest one.

    A process knows no colluders and shares no board with them, so only attacks that act on what this one
    peer holds can run there: not the omniscient ones (`waits_for_honest`: they wait each step for the
    honest updates their colluders saw), not Sybil groups, and not data poisoning (the in-process
    simulation poisons a Byzantine peer's training labels before round 0; a node trains on its file)."""
    if name is None or name == "none":
        return None
    from p2pfed.attacks.kinds import poisons_data
    from p2pfed.attacks.registry import SYBIL, load_behaviour

    if name.strip().lower() == SYBIL:
        raise ConfigError("a join process is one identity: run the sybil attack in an in-process simulation")
    behaviour = load_behaviour(name, **params)
    layers, inner = [behaviour], getattr(behaviour, "inner", None)
    while isinstance(inner, Behaviour):  # patient, targeted: what they strike with counts too
        layers.append(inner)
        inner = getattr(inner, "inner", None)
    for layer in layers:
        if layer.waits_for_honest or poisons_data(layer):
            kind = "waits each step for its colluders' view" if layer.waits_for_honest else "poisons its data"
            raise ConfigError(
                f"attack {layer.name!r} {kind}, which a single join process cannot do: run it in an in-process "
                "simulation (drop --processes), or pick a model-level attack such as sign_flip or gaussian"
            )
    return behaviour


def _count_rows(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


class Node:
    def __init__(
        self,
        cfg: NodeConfig,
        run: RunFile,
        identity: Identity,
        model: TaskModel,
        resume: Checkpoint | None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.manifest = run.manifest
        self.gossip = self.manifest.schedule(cfg.gossip or run.gossip)
        self.identity = identity
        self.model = model
        self.run_digest = self.manifest.digest()
        self.progress = progress or (lambda line: log.info("%s", line))
        self.out = Path(cfg.out)
        self.transport = Libp2pTransport(
            identity,
            Libp2pConfig(
                run_digest=self.run_digest,
                listen_addrs=cfg.listen,
                bootstrap=cfg.bootstrap,
                announce_addrs=cfg.announce,
                enable_mdns=cfg.mdns,
                enable_dht=cfg.dht,
                private=cfg.private,
                autonat=cfg.autonat,
                relay_service=(not cfg.private) if cfg.relay_service is None else cfg.relay_service,
                max_neighbours=cfg.max_neighbours,
                announce_interval_s=cfg.announce_interval_s,
            ),
        )
        self._index = peer_index(identity.peer_id) if cfg.index is None else cfg.index
        self._resumed = resume is not None
        point = resume_point(self.out, resume)  # killed mid-round: resume it, never sign it twice
        start_round = point.round
        if point.sealed:
            self.progress(f"round {start_round + 1} was under way when this node stopped: resuming it at step "
                          f"{max(point.sealed) + 1} with the updates it had sent")
        elif start_round > (0 if resume is None else resume.round):
            self.progress(f"round {start_round} was under way when this node stopped, its updates signed: "
                          f"going on from round {start_round + 1}")
        seed = self.manifest.seed
        train_idx, val_idx = split_validation(
            np.arange(model.pool_size), cfg.val_fraction, validation_rng(seed, self._index)
        )
        self.peer = Peer(
            index=self._index,
            identity=identity,
            transport=self.transport,
            local=LocalModel(model, train_idx, val_idx, self.gossip),
            run_digest=self.run_digest,
            schema=Schema.from_tensors({TENSOR: np.zeros(model.dim, dtype=np.float32)}),
            neighbour_degrees=LiveNeighbours(self.transport.neighbour_degrees),
            gossip=self.gossip,
            defence=load_defence(cfg.defence, **cfg.defence_params),
            initial=model.initial_vector() if resume is None else resume.vector,
            seed=seed,
            compute=trio.CapacityLimiter(1),
            reputation=ReputationTable.from_dict(resume.reputation) if resume else ReputationTable(),
            on_round=self._on_round,
            on_catch_up=self._on_catch_up,
            evaluate_every=cfg.evaluate_every,
            checkpoint_dir=self.out,  # written after every round, before `_on_round`
            start_round=start_round,
            mixed_through=None if resume is None else resume.round,  # a skipped signed round mixed nothing
            resumed=point,
            behaviour=node_attack(cfg.attack, cfg.attack_params),
            alone_wait_s=cfg.neighbour_wait_s,  # neighbours not started yet hold our round 2
        )
        self.status = NodeStatus(
            path=self.out / STATUS_FILE,
            peer_id=identity.peer_id,
            run_topic=self.manifest.topic,
            rounds=self.gossip.rounds,
            round=self.peer.round,
            resumed_from=None if resume is None else resume.round,
        )
        self._adapter_due = trio.Event()
        self._adapter_vector: np.ndarray | None = None
        self.metrics = NodeMetrics()  # `p2pfed join --metrics` serves it

    def _network_is_ahead(self) -> bool:
        """A fresh node whose neighbours say (unsigned presence hints) they are past round 0 waits for
        their signed updates before its first round: then the Peer starts at the network's round and
        takes their adapters at its first mix instead of training from scratch (`Peer.catch_up`)."""
        rounds = list(self.transport.neighbour_rounds().values())
        return not self._resumed and bool(rounds) and int(np.median(rounds)) > 0

    def _announced_finished(self, peer: str) -> bool:
        """Whether `peer`, a neighbour, announces (unsigned presence hint) that it ran every round."""
        return self.transport.neighbour_rounds().get(peer, -1) >= self.gossip.rounds

    def _on_catch_up(self, ours: int, network: int) -> None:
        if ours == 0 and not self._resumed:
            self.progress(f"the network is at round {network + 1}: starting there from the neighbours' adapters")
        else:
            self.progress(f"the network is at round {network + 1}: catching up from round {ours + 1}")
        self.transport.local_round = network
        self.status.round = network

    # ------------------------------------------------------------------ loading (blocking)
    @classmethod
    def load(cls, cfg: NodeConfig, *, progress: Progress | None = None) -> Node:
        say = progress or (lambda line: log.info("%s", line))
        node_attack(cfg.attack, cfg.attack_params)  # a bad attack fails now, not after the model has loaded
        run = RunFile.load(cfg.run_file)
        manifest = run.manifest
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        identity = load_or_create_identity(cfg.identity or out / IDENTITY_FILE)
        claim_directory(out, manifest, identity)
        check_base_model(manifest)
        if not cfg.data.is_file():
            raise ConfigError(f"data file {cfg.data} does not exist")
        rows = _count_rows(cfg.data)
        learn = LearnConfig(
            run=manifest, data=str(cfg.data), test_size=max(1, min(cfg.eval_size, rows // 5)), threads=cfg.threads
        )
        say(f"loading {manifest.model} and {cfg.data.name} ({rows} rows)")
        model = TaskModel.load(
            learn,
            progress=say,
            eval_task=None if cfg.eval_data is None else str(cfg.eval_data),
            label_names=manifest.labels,
        )
        if manifest.labels and tuple(model.label_names) != tuple(manifest.labels):
            raise ConfigError(
                f"{cfg.data} has labels {list(model.label_names)}, the run's are {list(manifest.labels)}"
            )
        resume = load_checkpoint(out)
        if resume is not None:
            if resume.run_digest and resume.run_digest != manifest.digest().hex():
                raise CheckpointError(f"the checkpoint in {out} belongs to another run; use another --out")
            if resume.vector.shape != (model.dim,):
                raise CheckpointError(
                    f"the checkpoint in {out} holds {resume.vector.size} values, this model needs {model.dim}"
                )
            say(f"resuming from the checkpoint in {out}: next round {resume.round + 1}")
        return cls(cfg, run, identity, model, resume, say)

    # ------------------------------------------------------------------ serving
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, wait for neighbours, run the rounds. Cancel to stop: the last round's checkpoint stays."""
        finished = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                self.status.listen_addrs = self.transport.listen_addrs
                self.status.state = "waiting"
                self._refresh_status()
                nursery.start_soon(self._status_loop)
                nursery.start_soon(self._adapter_writer)
                task_status.started()
                await self._wait_for_neighbours()
                self.transport.local_round = self.peer.round
                self.status.state, self.status.message = "running", ""
                await self.peer.run(rounds=self.gossip.rounds, join_late=self._network_is_ahead())
                await self._save_adapter(self.peer.vector)
                finished = True
                self.status.state, self.status.message = "finished", "serving neighbours still behind"
                self._refresh_status()
                await self.peer.serve_late_neighbours(self.cfg.linger_s, finished=self._announced_finished)
                self.status.message = ""
                nursery.cancel_scope.cancel()
        finally:
            self.status.state = "finished" if finished else "stopped"
            self._refresh_status(live=False)
            self.progress(f"{self.status.state} at round {self.peer.round}; files in {self.out}")

    async def _wait_for_neighbours(self) -> None:
        need = self.cfg.min_neighbours
        with trio.move_on_after(self.cfg.neighbour_wait_s) as scope:
            while len(self.transport.neighbours()) < need:
                have = len(self.transport.neighbours())
                self.status.message = f"waiting for neighbours ({have}/{need})"
                self.progress(f"{self.status.message} · listening on {', '.join(self.transport.listen_addrs)}")
                with trio.move_on_after(10):
                    await self.transport.wait_neighbours(need)
        if scope.cancelled_caught:
            raise NetworkError(
                f"no {need} neighbour(s) of this run within {self.cfg.neighbour_wait_s:.0f} s: check --bootstrap "
                "(a /ip4/.../tcp/.../p2p/<id> address of a running peer) or try --mdns on a LAN"
            )
        await self._settle_neighbours()
        self.progress(f"{len(self.transport.neighbours())} neighbour(s); starting at round {self.peer.round + 1}")

    async def _settle_neighbours(self) -> None:
        """Let peer exchange finish: a neighbour that arrives mid-round is only used from the next round,
        and until then it waits a whole step deadline for us."""
        with trio.move_on_after(SETTLE_MAX_S):
            while True:
                with trio.move_on_after(SETTLE_QUIET_S) as quiet:
                    await self.transport.wait_neighbours(len(self.transport.neighbours()) + 1)
                if quiet.cancelled_caught:
                    return

    def _on_round(self, report: RoundReport) -> None:
        self.transport.local_round = report.round + 1
        for pid, evidence in self.peer.membership_evidence():
            self.transport.report(pid, evidence)
        neighbours = len(self.transport.neighbours())
        self.metrics.observe(
            report, self.transport.neighbours(), self.transport.counters, self.transport.relay_use()
        )
        append_metrics(self.out, metrics_row(report, self.transport.neighbours()))
        self.status.round = report.round + 1
        self.status.rejections = dict(report.rejections)
        if report.accuracy is not None:
            self.status.last_eval = {"round": report.round, "accuracy": report.accuracy, "loss": report.loss}
        self._refresh_status()
        self.progress(progress_line(
            report, self.gossip.rounds, neighbours, self.transport.counters, instruction=not self.manifest.labels
        ))
        self._adapter_vector = report.vector
        self._adapter_due.set()

    def _refresh_status(self, *, live: bool = True) -> None:
        """`live=False` (the host is closed): keep the last neighbour list, refresh the rest."""
        degrees = self.transport.neighbour_degrees() if live else {
            pid: info["degree"] for pid, info in self.status.neighbours.items()
        }
        old = self.status.neighbours
        self.status.neighbours = {
            pid: {
                "reputation": round(self.peer.reputation.score(pid), 4),
                "degree": degree,
                # direct, or relayed (circuit relay v2) when no direct path was found
                "path": self.transport.path_to(pid) if live else old.get(pid, {}).get("path", "none"),
            }
            for pid, degree in degrees.items()
        }
        self.status.transport = dict(self.transport.counters)
        self.status.reachability = self.transport.reachability_status
        self.status.write()

    async def _status_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._refresh_status()

    async def _adapter_writer(self) -> None:
        while True:
            await self._adapter_due.wait()
            self._adapter_due = trio.Event()
            if self._adapter_vector is not None:
                await self._save_adapter(self._adapter_vector)

    async def _save_adapter(self, vector: np.ndarray) -> None:
        await trio.to_thread.run_sync(swap_adapter, self.model, vector, self.out, limiter=self.peer.compute)


async def serve(node: Node) -> None:
    """Run `node` until it finishes or SIGINT/SIGTERM arrives (then it stops cleanly; exit status 0)."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    node.progress(f"{signal.Signals(signum).name}: stopping (the last round's checkpoint is kept)")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await node.run()
            nursery.cancel_scope.cancel()
