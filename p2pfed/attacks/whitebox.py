"""A white-box attacker: every step, the most damaging vector that the honest peers' defence still accepts.

It knows the defence's code and parameters (`ctx.defence`, the very object the honest peers run), sees the
honest vectors its colluders received (`ctx.honest_seen`), and stands in for each victim's validation data
with its own (`ctx.evaluate`). For one recipient r it rebuilds the defence's input as r would see it:

- own = r's vector this step; r's anchor ≈ what r sent at the end of the previous round (from the attacker's
  history of what it received; in round 0 the run's shared initial vector); r's trained vector = what r sent
  at this round's first step;
- neighbours = the `peers_modelled` honest vectors nearest to r's, plus one candidate, at equal
  Metropolis-Hastings weights and equal (new) reputation;
- r's validation class count, from the Collusion board (a simulation tells the attackers every peer's):
  a defence that ignores single-class validation scores is modelled as doing so.

Then, for each harmful direction d — toward zero as IPM does (−μ/‖μ‖, μ the honest mean), undoing r's local
update (−Δ_r), away from the honest mean as dissensus does, and −σ as ALIE does — it bisects for the largest
scale s at which the defence KEEPS x_r + s·d, and measures the harm: how far that candidate moves r's mixed
vector along d, against r's mix without it. It sends the candidate of greatest harm. When no direction does
harm that the defence would accept, it sends r's own vector back: it behaves, and earns reputation.

This is the adaptive-attack recipe of Tramèr, Carlini, Brendel & Mądry ("On Adaptive Attacks to Adversarial
Example Defenses", NeurIPS 2020), and Shejwalkar & Houmansadr's optimisation of an attack against a known
aggregation rule ("Manipulating the Byzantine", NDSS 2021), applied to one step of a decentralized defence:
maximise harm subject to acceptance. Against a rule that accepts everything (mean) the scale stops at
`max_scale` × r's local update. Colluders share one search per (round, step, recipient) through the
Collusion board and each adds an offset of its own, just over the defence's `duplicate_factor` when it has
one, so that their copies are not grouped as one neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pfed.attacks._honest import honest_vectors, recipient_vector
from p2pfed.attacks.adaptive import largest_scale
from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.robust.base import DefenceInput
from p2pfed.types import Outcome

Floats = npt.NDArray[np.float64]
CANDIDATE = "candidate"


@dataclass(frozen=True)
class Victim:
    """What the attacker reconstructs of one recipient's defence step."""

    own: Floats
    anchor: Floats | None
    trained: Floats | None
    neighbours: Floats  # (m, d) honest vectors it would also see
    validation_classes: int | None = None  # classes in its validation split, if the colluders know it


def unit(v: Floats) -> Floats | None:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 and np.isfinite(norm) else None


def directions(victim: Victim, honest: Floats) -> list[Floats]:
    """The harmful directions tried: toward zero (IPM), undo the victim's update, away from the honest
    mean (dissensus), −σ (ALIE). Degenerate ones (zero length) are left out."""
    mean = honest.mean(axis=0)
    candidates = [-mean, victim.own - mean, -honest.std(axis=0)]
    if victim.anchor is not None and victim.trained is not None:
        candidates.insert(1, victim.anchor - victim.trained)
    return [d for d in (unit(c) for c in candidates) if d is not None]


class WhiteBox(Behaviour):
    name = "whitebox"
    waits_for_honest = True
    uses_model = True

    def __init__(
        self, peers_modelled: int = 6, iterations: int = 10, max_scale: float = 8.0
    ) -> None:
        self.peers_modelled = peers_modelled
        self.iterations = iterations
        self.max_scale = max_scale

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        if ctx.recipient in ctx.colluders or ctx.defence is None or ctx.evaluate is None:
            return Outgoing(vector=ctx.own)
        key = ("whitebox", ctx.round, ctx.step, ctx.recipient)
        shared = ctx.collusion.shared if ctx.collusion is not None else {}
        if key not in shared:
            shared[key] = self.search(ctx)
        best: Floats = shared[key]
        return Outgoing(vector=(best + self.offset(ctx, best)).astype(np.float32))

    def search(self, ctx: AttackContext) -> Floats:
        """The accepted candidate of greatest harm to `ctx.recipient`, or its own vector."""
        assert ctx.defence is not None and ctx.evaluate is not None
        honest = honest_vectors(ctx)
        victim = self.victim(ctx, honest)
        defence, evaluate = ctx.defence, ctx.evaluate
        seed = int(ctx.rng.integers(1 << 62))

        def step(candidate: Floats | None) -> tuple[bool, Floats]:
            rows = [*victim.neighbours] + ([candidate] if candidate is not None else [])
            senders = tuple(f"honest-{i}" for i in range(len(victim.neighbours)))
            if candidate is not None:
                senders += (CANDIDATE,)
            inp = DefenceInput(
                own=victim.own.astype(np.float32),
                received=np.asarray(rows, dtype=np.float32).reshape(len(rows), victim.own.size),
                senders=senders,
                mixing_weights=np.full(len(rows) + 1, 1.0 / (len(rows) + 1), dtype=np.float32),
                reputation={},
                evaluate=evaluate,
                rng=np.random.default_rng(seed),
                round=ctx.round,
                anchor=None if victim.anchor is None else victim.anchor.astype(np.float32),
                trained=None if victim.trained is None else victim.trained.astype(np.float32),
                validation_classes=victim.validation_classes,
            )
            out = defence(inp)
            kept = any(
                v.sender == CANDIDATE and v.outcome is Outcome.KEPT and v.weight > 0
                for v in out.verdicts
            )
            return kept, out.mixed.astype(np.float64)

        _, without = step(None)
        scale = self.scale(victim, honest)
        best, best_harm = victim.own, 0.0
        for d in directions(victim, honest):
            # a def, not a lambda: mypy cannot infer a lambda with default arguments
            def accepts(s: float, d: Floats = d) -> bool:
                return step(victim.own + s * d)[0]

            s = largest_scale(accepts, 0.0, self.max_scale * scale, self.iterations)
            if s <= 0:
                continue
            candidate = victim.own + s * d
            kept, mixed = step(candidate)
            harm = float((mixed - without) @ d) if kept else 0.0
            if harm > best_harm:
                best, best_harm = candidate, harm
        return best

    def victim(self, ctx: AttackContext, honest: Floats) -> Victim:
        own = recipient_vector(ctx)
        if own is None:
            own = honest.mean(axis=0)
        sent = [(r, s, v) for r, s, sender, v in ctx.received_history if sender == ctx.recipient]
        trained: npt.NDArray[np.floating] | None = next(
            (v for r, s, v in sent if r == ctx.round and s == 0), None
        )
        if ctx.step == 0:
            trained = own
        previous = [(s, v) for r, s, v in sent if r == ctx.round - 1]
        anchor = max(previous, key=lambda sv: sv[0])[1] if previous else ctx.anchor
        others = honest[np.any(honest != own[None, :], axis=1)]
        nearest = np.argsort(np.linalg.norm(others - own[None, :], axis=1))[: self.peers_modelled]
        return Victim(
            own=own,
            anchor=None if anchor is None else np.asarray(anchor, dtype=np.float64),
            trained=None if trained is None else np.asarray(trained, dtype=np.float64),
            neighbours=others[nearest],
            validation_classes=(
                ctx.collusion.validation_classes.get(ctx.recipient) if ctx.collusion is not None else None
            ),
        )

    @staticmethod
    def scale(victim: Victim, honest: Floats) -> float:
        """The victim's local update's length, or else the median honest distance to it."""
        if victim.anchor is not None and victim.trained is not None:
            length = float(np.linalg.norm(victim.trained - victim.anchor))
            if length > 0:
                return length
        distances = np.linalg.norm(honest - victim.own[None, :], axis=1)
        return float(np.median(distances)) if distances.size else 1.0

    @staticmethod
    def offset(ctx: AttackContext, best: Floats) -> Floats:
        """A small random offset per colluder, just over the defence's near-duplicate radius."""
        factor = float(getattr(ctx.defence, "duplicate_factor", 0.0))
        if factor <= 0:
            return np.zeros(best.shape)
        anchor = ctx.anchor if ctx.anchor is not None else np.zeros(best.shape)
        length = 2.0 * factor * float(np.linalg.norm(ctx.own.astype(np.float64) - anchor))
        u = ctx.rng.standard_normal(best.shape)
        return length * u / max(float(np.linalg.norm(u)), 1e-12)
