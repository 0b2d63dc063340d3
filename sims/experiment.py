"""`p2pfed experiment`: what a grid is — attacks × defences × Byzantine count × seeds — and its cells.

An `ExperimentConfig` is a base `SimConfig` plus a `Grid` of axes. `cells()` expands it into one `Cell`
per simulation, each named by a stable id (a hash of its full `SimConfig`), which is what makes a grid
resumable: `p2pfed.sims.grid_runner` runs the cells whose id has no result yet. A TOML file has a `[base]`
table (fields of SimConfig, GossipConfig, LearnConfig and its run contract, flat) and a `[grid]` table
(fields of `Grid`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from p2pfed.attacks.base import Behaviour
from p2pfed.attacks.registry import ATTACKS, SYBIL, load_behaviour
from p2pfed.config import SHARED_SCHEDULE, GossipConfig, RunManifest, from_mapping
from p2pfed.errors import ConfigError
from p2pfed.learn import LearnConfig
from p2pfed.robust.registry import DEFAULT_DEFENCE, DEFENCES, load_defence
from p2pfed.sims.oracle import ORACLE
from p2pfed.sims.report import (
    ATTACK_FREE,  # the baseline row: no attack, 0 Byzantine, once per defence/seed
)
from p2pfed.sims.simulate import SimConfig, validate

ALL = "all"  # in an attacks/defences list: every registered name
# SimConfig fields the grid sets per cell; in [base] they would be silently overridden, so they are refused.
GRID_OWNED = {
    "attack": "attacks",
    "attack_params": "attack_params",
    "defence": "defences",
    "defence_params": "defence_params",
    "byzantine": "byzantine",
    "seed": "seeds",
}


def attack_names(kind: str = "classification") -> tuple[str, ...]:
    """Every registered attack that fits `kind` of data ("classification" or "instruction"), Sybil
    included; the honest behaviour is not an attack. Data poisoning fits one kind: label flipping rewrites
    class labels, wrong answers and the backdoor rewrite instruction rows. Model-level attacks fit both."""
    other = "poison_rows" if kind == "classification" else "poison_labels"  # the hook of the other kind
    return (
        *[
            name
            for name, factory in ATTACKS.items()
            if factory is not Behaviour and getattr(factory, other, None) is getattr(Behaviour, other)
        ],
        SYBIL,
    )


def defence_names() -> tuple[str, ...]:
    """Every registered defence, then the oracle: the reference column (it is told who is Byzantine)."""
    return (*DEFENCES, ORACLE)


def default_base() -> SimConfig:
    """TREC (6 classes), 16 peers, Dirichlet non-IID, on a complete graph; everything else as `p2pfed sim`.

    Complete, because that is the network `p2pfed join` forms at this size (it keeps up to 16 neighbours),
    and because it gives every honest peer the same ⅓ Byzantine neighbourhood: on a sparse random graph,
    5 attackers of 16 form a majority around some honest peers, whom no aggregation rule can protect
    (`--topology regular --degree 4` shows that case).

    10 rounds, not `p2pfed sim`'s 6: at 6 rounds TREC is still climbing (about 1.5 points a round), so
    the 5 Byzantine peers' missing data alone cost 2.8 points (the oracle's drop); by round 10 that cost is
    about 0.6, and the table measures the defences rather than how far training got."""
    return SimConfig(
        peers=16,
        topology="complete",
        save_adapters=False,
        gossip=GossipConfig(rounds=10),
        learn=LearnConfig(run=RunManifest(task="trec")),
    )


SAMPLING = "+sampling"  # a defence name's suffix: that defence with sampling membership (bristle+sampling)

# `p2pfed experiment --preset sparse`: the sparse robustness grid of issue 14. 64 peers of degree 6, ⅓
# Byzantine, on TREC with Dirichlet α=0.5; every attack; the default defence with static membership beside
# it with sampling, and mean, clipped_gossip and the oracle. Run it once per placement (--placement
# random, then --placement eclipse). 12 rounds: at 6 every curve was still climbing (issue 14); that 12
# is enough to level off is not measured yet.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sparse": {
        "base": {
            "peers": 64, "topology": "regular", "degree": 6, "task": "trec", "partition": "dirichlet",
            "alpha": 0.5, "rounds": 12,
        },
        "grid": {
            "byzantine": [21],
            "defences": ["mean", "clipped_gossip", DEFAULT_DEFENCE, DEFAULT_DEFENCE + SAMPLING, ORACLE],
        },
    },
}


def split_membership(defence: str) -> tuple[str, str | None]:
    """'bristle+sampling' -> ('bristle', 'sampling'); a plain name keeps the base's membership (None)."""
    if defence.endswith(SAMPLING):
        return defence[: -len(SAMPLING)], "sampling"
    return defence, None


def _normalise(name: str) -> str:
    return name if ":" in name else name.strip().lower().replace("-", "_")


def _expand(names: tuple[str, ...], every: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        for item in every if _normalise(name) == ALL else (_normalise(name),):
            if item not in out:
                out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class Grid:
    attacks: tuple[str, ...] = field(default_factory=lambda: (ATTACK_FREE, *attack_names()))
    defences: tuple[str, ...] = field(default_factory=defence_names)
    byzantine: tuple[int | float, ...] = (5,)  # counts (>= 1), or fractions of the peers (0 < f < 1)
    seeds: tuple[int, ...] = (0,)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack name -> its parameters
    defence_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # defence name -> its parameters
    workers: int = 0  # parallel processes; 0 = one per core. Capped by the number of cells left to run

    def __post_init__(self) -> None:
        if any(isinstance(s, bool) or not isinstance(s, int | float) or not float(s).is_integer() for s in self.seeds):
            raise ConfigError(f"seeds must be whole numbers, got {list(self.seeds)}")
        normalised = {
            "attacks": _expand(tuple(self.attacks), (ATTACK_FREE, *attack_names())),
            "defences": _expand(tuple(self.defences), defence_names()),
            "byzantine": tuple(self.byzantine),
            "seeds": tuple(int(s) for s in self.seeds),
            "attack_params": {_normalise(k): dict(v) for k, v in self.attack_params.items()},
            "defence_params": {_normalise(k): dict(v) for k, v in self.defence_params.items()},
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        for axis in ("attacks", "defences", "byzantine", "seeds"):
            if not getattr(self, axis):
                raise ConfigError(f"the grid's {axis} list is empty; give at least one value")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0 = one per core), got {self.workers}")
        for value in self.byzantine:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                isinstance(value, float) and value >= 1 and not value.is_integer()
            ):
                raise ConfigError(f"byzantine values are counts (5) or fractions of the peers (0.25), got {value!r}")
        problems = []  # fail now, with the registry's list of names, not an hour into the grid; all at once
        for name in self.defences:
            try:
                rule = split_membership(name)[0]
                load_defence(DEFAULT_DEFENCE if rule == ORACLE else rule, **self.defence_params.get(name, {}))
            except ConfigError as exc:
                problems.append(str(exc))
        for name in self.attacks:
            try:
                if name != ATTACK_FREE:
                    load_behaviour(name, count=1, **self.attack_params.get(name, {}))
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))
        for kind, params, names in (
            ("attack", self.attack_params, self.attacks),
            ("defence", self.defence_params, self.defences),
        ):
            stray = sorted(set(params) - set(names))
            if stray:
                raise ConfigError(f"{kind}_params given for {stray}, which the grid does not run ({list(names)})")

    def count(self, value: int | float, peers: int) -> int:
        """A byzantine axis value as a number of peers."""
        count = round(value * peers) if isinstance(value, float) and value < 1 else int(value)
        if count >= peers:
            raise ConfigError(f"byzantine {value} means {count} of {peers} peers; keep it below the peer count")
        return count


@dataclass(frozen=True)
class Cell:
    """One simulation of the grid."""

    attack: str
    defence: str
    byzantine: int
    seed: int
    config: SimConfig

    @property
    def id(self) -> str:
        return cell_id(self.config)

    @property
    def label(self) -> str:
        return f"{self.attack}/{self.defence} byz={self.byzantine} seed={self.seed}"


# SimConfig fields added after grids were first run: hashed only when they differ from these values, so
# that a grid run before they existed keeps its cell ids (and resumes instead of starting again)
_HASHED_UNLESS: dict[str, object] = {"placement": "random", "membership": "static", "batched": True, "eval_sample": 0}


def cell_id(cfg: SimConfig) -> str:
    """Stable across processes and runs: the hash of the cell's whole configuration."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in _HASHED_UNLESS or v != _HASHED_UNLESS[k]}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(b"p2pfed-cell:" + canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExperimentConfig:
    base: SimConfig = field(default_factory=default_base)
    grid: Grid = field(default_factory=Grid)

    def cells(self) -> list[Cell]:
        """Seed-major order, so that a worker reuses its loaded model (which depends on the seed)."""
        cells: dict[str, Cell] = {}
        counts = sorted({self.grid.count(v, self.base.peers) for v in self.grid.byzantine})
        for seed in self.grid.seeds:
            learn = dataclasses.replace(self.base.learn, run=dataclasses.replace(self.base.learn.run, seed=seed))
            for attack in self.grid.attacks:
                for byzantine in [0] if attack == ATTACK_FREE else counts:
                    for defence in self.grid.defences:
                        # an attack with 0 Byzantine peers is the attack-free cell
                        name = attack if byzantine else ATTACK_FREE
                        rule, membership = split_membership(defence)
                        config = dataclasses.replace(
                            self.base,
                            attack=name,
                            attack_params=self.grid.attack_params.get(name, {}),
                            defence=rule,
                            defence_params=self.grid.defence_params.get(defence, {}),
                            membership=membership or self.base.membership,
                            byzantine=byzantine,
                            learn=learn,
                        )
                        cell = Cell(name, defence, byzantine, seed, config)
                        cells.setdefault(cell.id, cell)
        return list(cells.values())

    def digest(self) -> str:
        """Names the default output directory, so rerunning the same command resumes the same grid."""
        mapping = to_mapping(self)
        mapping["grid"].pop("workers")
        canonical = json.dumps(mapping, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def check_cells(cells: list[Cell]) -> None:
    """Every cell's options checked as `p2pfed sim` checks them (graph, Byzantine count and placement,
    attack, defence), before any model loads; the invalid cells are reported together, grouped by
    what is wrong with them."""
    problems: dict[str, list[str]] = {}
    for cell in cells:
        try:
            validate(cell.config)
        except ConfigError as exc:
            problems.setdefault(str(exc), []).append(cell.label)
    if problems:
        count = sum(len(labels) for labels in problems.values())
        lines = [f"{count} of {len(cells)} cells cannot run, so none was started:"]
        for message, labels in problems.items():
            lines.append(f"- {message}\n  cells: {', '.join(labels)}")
        raise ConfigError("\n".join(lines))


# -- TOML ------------------------------------------------------------------------------------------

_SIM_KEYS = {f.name for f in dataclasses.fields(SimConfig)} - {"gossip", "learn"}
_GOSSIP_KEYS = {f.name for f in dataclasses.fields(GossipConfig)}
_LEARN_KEYS = {f.name for f in dataclasses.fields(LearnConfig)} - {"run"}
# the contract's fields a grid may set; Q and the round window are the schedule's, the rest the model's
_RUN_KEYS = {f.name for f in dataclasses.fields(RunManifest)} - {*SHARED_SCHEDULE, "base_hash", "labels",
                                                                 "protocol_version"}


def base_from_mapping(data: dict[str, Any], *, source: str, base: SimConfig | None = None) -> SimConfig:
    """A SimConfig from flat keys of SimConfig, GossipConfig, LearnConfig and its run contract, applied over
    `base` (default: the experiment's default base). No key belongs to two of them."""
    base = base or default_base()
    owned = sorted(set(data) & set(GRID_OWNED))
    if owned:
        moves = ", ".join(f"{k} -> [grid] {GRID_OWNED[k]}" for k in owned)
        raise ConfigError(f"{source}: the grid sets {owned} per cell; move them: {moves}")
    valid = _SIM_KEYS | _GOSSIP_KEYS | _LEARN_KEYS | _RUN_KEYS
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(valid - set(GRID_OWNED))}")

    def pick(keys: set[str], current: Any) -> dict[str, Any]:
        return {**dataclasses.asdict(current), **{k: v for k, v in data.items() if k in keys}}

    run = RunManifest.from_mapping(pick(_RUN_KEYS, base.learn.run), source=f"{source} run")
    learn = from_mapping(LearnConfig, {**pick(_LEARN_KEYS, base.learn), "run": run}, source=f"{source} learn")
    gossip = from_mapping(GossipConfig, pick(_GOSSIP_KEYS, base.gossip), source=f"{source} gossip")
    sim = {k: v for k, v in pick(_SIM_KEYS, base).items() if k not in ("gossip", "learn")}
    return from_mapping(SimConfig, {**sim, "gossip": gossip, "learn": learn}, source=source)


def experiment_from_mapping(data: dict[str, Any], *, source: str) -> ExperimentConfig:
    unknown = sorted(set(data) - {"base", "grid"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {unknown}; an experiment has [base] and [grid]")
    base = base_from_mapping(data.get("base", {}), source=f"{source} [base]")
    grid = from_mapping(Grid, data.get("grid", {}), source=f"{source} [grid]")
    return ExperimentConfig(base=base, grid=grid)


def load_experiment(path: Path) -> ExperimentConfig:
    return experiment_from_mapping(read_toml(path), source=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from exc


def to_mapping(cfg: ExperimentConfig) -> dict[str, Any]:
    """The `[base]` + `[grid]` tables that `experiment_from_mapping` reads back to the same config."""
    sim = cfg.base.to_dict()
    learn = sim.pop("learn")
    flat = {**sim.pop("gossip"), **learn.pop("run"), **learn, **sim}
    base = {k: v for k, v in flat.items() if k in _SIM_KEYS | _GOSSIP_KEYS | _LEARN_KEYS | _RUN_KEYS}
    base = {k: list(v) if isinstance(v, tuple) else v for k, v in base.items() if k not in GRID_OWNED and v is not None}
    grid = dataclasses.asdict(cfg.grid)
    grid = {k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()}
    return {"base": base, "grid": grid}


def to_toml(cfg: ExperimentConfig) -> str:
    return tomli_w.dumps(to_mapping(cfg))


__all__ = [
    "ALL",
    "ATTACK_FREE",
    "Cell",
    "ExperimentConfig",
    "Grid",
    "attack_names",
    "base_from_mapping",
    "cell_id",
    "check_cells",
    "default_base",
    "defence_names",
    "experiment_from_mapping",
    "load_experiment",
    "read_toml",
    "to_mapping",
    "to_toml",
]
