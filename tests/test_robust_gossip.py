"""Defences, attacks and reputation together in a tiny pure-numpy gossip network (no trio, no model).

Ten peers on a complete graph: eight honest ones train toward a hidden optimum t (a step toward t plus
noise) and validate by closeness to t; two colluding attackers run an omniscient attack every step.
"""

from __future__ import annotations

import numpy as np
import pytest

from p2pfed.attacks.base import AttackContext, Behaviour
from p2pfed.attacks.registry import load_behaviour
from p2pfed.robust.base import Defence, DefenceInput
from p2pfed.robust.registry import load_defence
from p2pfed.robust.reputation import ReputationTable
from p2pfed.types import FloatMatrix

DIM, HONEST, BYZANTINE, STEPS = 16, 8, 2, 30


def evaluate_against(target: np.ndarray):  # type: ignore[no-untyped-def]
    def evaluate(x: FloatMatrix) -> FloatMatrix:
        score = -np.linalg.norm(x - target[None, :], axis=1)
        return np.repeat(score[:, None], 2, axis=1).astype(np.float32)

    return evaluate


def run(
    defence: Defence, attack: str, seed: int = 0
) -> tuple[float, list[ReputationTable], list[str]]:
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(DIM)
    ids = [f"h{i}" for i in range(HONEST)] + [f"b{i}" for i in range(BYZANTINE)]
    colluders = frozenset(ids[HONEST:])
    behaviours: list[Behaviour] = load_behaviour(attack, count=BYZANTINE)
    x = rng.standard_normal((HONEST, DIM))
    tables = [ReputationTable() for _ in range(HONEST)]
    weights = np.full(len(ids), 1.0 / len(ids), np.float32)
    for step in range(STEPS):
        x = x + 0.3 * (target - x) + 0.05 * rng.standard_normal(x.shape)
        honest = x.astype(np.float32)
        new = np.empty_like(x)
        for i in range(HONEST):
            crafted = []
            for b, behaviour in zip(ids[HONEST:], behaviours, strict=True):
                ctx = AttackContext(
                    round=step,
                    step=0,
                    recipient=ids[i],
                    own=honest.mean(axis=0),
                    received=honest,
                    senders=tuple(ids[:HONEST]),
                    colluders=colluders,
                    honest_seen=honest,
                    sent_history=(),
                    received_history=(),
                    rng=np.random.default_rng([seed, step, i]),
                )
                message = behaviour.outgoing(ctx)
                assert message is not None and message.vector is not None, b
                crafted.append(message.vector)
            others = [j for j in range(HONEST) if j != i]
            inp = DefenceInput(
                own=honest[i],
                received=np.vstack([honest[others], np.stack(crafted)]),
                senders=tuple(ids[j] for j in others) + tuple(ids[HONEST:]),
                mixing_weights=weights,
                reputation=tables[i].snapshot(),
                evaluate=evaluate_against(target),
                rng=np.random.default_rng([seed, step, i, 7]),
                round=step,
            )
            out = defence(inp)
            new[i] = out.mixed
            tables[i].update(out.verdicts, step)
            tables[i].end_round(step)
        x = new
    return float(np.linalg.norm(x.mean(axis=0) - target)), tables, list(colluders)


@pytest.mark.parametrize("attack", ["ipm", "alie", "sign_flip", "adaptive", "dissensus"])
def test_bristle_keeps_honest_peers_near_the_optimum_under_attack(attack: str) -> None:
    error, _, _ = run(load_defence("bristle"), attack)
    no_attack, _, _ = run(load_defence("mean"), "honest")
    assert error < 1.2 * no_attack, (error, no_attack)


@pytest.mark.parametrize("attack", ["ipm", "sign_flip", "dissensus"])
def test_reputation_quarantines_clearly_harmful_attackers_and_keeps_honest_peers(
    attack: str,
) -> None:
    _, tables, attackers = run(load_defence("bristle"), attack)
    for table in tables:
        assert all(table.score(b) < 0.1 for b in attackers)
        honest = [s for peer, s in table.snapshot().items() if peer.startswith("h")]
        assert min(honest) > 0.3 and not table.quarantined().keys() - set(attackers)


def test_plain_mean_is_pulled_away_and_bristle_is_not() -> None:
    for attack in ("ipm", "sign_flip"):
        attacked_mean, _, _ = run(load_defence("mean"), attack)
        attacked_bristle, _, _ = run(load_defence("bristle"), attack)
        assert attacked_mean > 5 * attacked_bristle
