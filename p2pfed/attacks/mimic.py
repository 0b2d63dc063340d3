"""Mimic (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
ICLR 2022): every attacker sends the current vector of one chosen honest peer i*. Each message is an honest
vector, so it is inside the spread; the harm is that one non-IID peer is over-represented and the others
under-represented, which biases every robust aggregator that trusts a majority.

The paper chooses i* as the honest peer that stands out most along the direction in which the honest
vectors vary most: during a warm-up, z = the top principal direction of the honest vectors (the authors'
code estimates it online by power iteration from a seeded random start) and i* = the peer with the
largest projection on z. We compute it exactly and deterministically: over the first `warmup` gossip
steps the colluders record every honest vector they receive, by sender ID; z = the top right singular
vector of all recorded vectors, each centred on its step's mean; and

    i* = argmax_i Σ_t ⟨z, x_i^t − μ^t⟩²        (ties: the smallest peer ID)

(squared, so that the arbitrary sign of z does not matter). During the warm-up the attackers send the
current best by the same score; from the first step after it, i* is fixed and they send i*'s vector of
this step (or the latest one any colluder received, if none has it yet).

The colluders share the record through a `MimicBoard` (`Mimic.group(count)`, which `load_behaviour` uses),
so that they all mimic the same peer. The choice is deterministic as long as every attacker has received
its warm-up steps' vectors before any attacker ends the warm-up, which the round loop gives when the
attackers are not starved of updates.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.types import FloatVector

log = logging.getLogger(__name__)

Step = tuple[int, int]


class MimicBoard:
    """The honest vectors the colluders received, by step and sender, and the peer they mimic."""

    def __init__(self, warmup: int) -> None:
        if warmup < 1:
            raise ValueError(f"mimic needs a warm-up of at least one gossip step, got {warmup}")
        self.warmup = warmup
        self.steps: list[Step] = []  # the warm-up steps, in the order first seen
        self.records: dict[Step, dict[str, npt.NDArray[np.float64]]] = {}
        self.latest: dict[str, tuple[Step, FloatVector]] = {}
        self.target: str | None = None

    def observe(self, step: Step, sender: str, vector: FloatVector) -> None:
        known = self.latest.get(sender)
        if known is None or known[0] <= step:
            self.latest[sender] = (step, vector)
        if step not in self.records and len(self.steps) < self.warmup and self.target is None:
            self.steps.append(step)
            self.records[step] = {}
        if step in self.records:
            self.records[step][sender] = vector.astype(np.float64)

    def in_warmup(self, step: Step) -> bool:
        return self.target is None and (step in self.records or len(self.steps) < self.warmup)

    def best(self) -> str | None:
        """argmax_i Σ_t ⟨z, x_i^t − μ^t⟩² over the recorded steps; None before anything was recorded."""
        rows: list[npt.NDArray[np.float64]] = []
        owners: list[str] = []
        for step in self.steps:
            got = self.records[step]
            if not got:
                continue
            ids = sorted(got)
            stacked = np.stack([got[i] for i in ids])
            rows.extend(stacked - stacked.mean(axis=0))
            owners.extend(ids)
        if not rows:
            return None
        centred = np.stack(rows)
        scores: dict[str, float] = {}
        if np.any(centred):
            z = np.linalg.svd(centred, full_matrices=False)[2][0]
            for owner, projection in zip(owners, centred @ z, strict=True):
                scores[owner] = scores.get(owner, 0.0) + float(projection) ** 2
        else:
            scores = dict.fromkeys(owners, 0.0)
        top = max(scores.values())
        return min(i for i, s in scores.items() if s == top)

    def fix_target(self) -> str | None:
        if self.target is None:
            self.target = self.best()
            self.records.clear()
            log.info("mimic: the attackers mimic %s", self.target)
        return self.target


class Mimic(Behaviour):
    """Sends the vector of the honest peer i* the colluders chose (see the module docstring)."""

    name = "mimic"
    waits_for_honest = True

    def __init__(self, warmup: int = 3, board: MimicBoard | None = None) -> None:
        self.board = board or MimicBoard(warmup)

    @classmethod
    def group(cls, count: int, warmup: int = 3) -> list[Mimic]:
        """`count` attackers sharing one board, so that they mimic the same peer."""
        board = MimicBoard(warmup)
        return [cls(board=board) for _ in range(count)]

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        step = (ctx.round, ctx.step)
        for sender, vector in zip(ctx.senders, ctx.received, strict=True):
            if sender not in ctx.colluders:
                self.board.observe(step, sender, vector)
        target = self.board.best() if self.board.in_warmup(step) else self.board.fix_target()
        if target is None or target not in self.board.latest:
            return Outgoing(vector=ctx.own)
        return Outgoing(vector=np.asarray(self.board.latest[target][1], dtype=np.float32))
