"""Churn soak: the code behind `p2pfed sim --transport libp2p --processes --churn RATE` runs ten `p2pfed
join` processes (small shards, so that each embeds its rows quickly) for fifteen rounds while the supervisor
SIGKILLs and restarts them at random. No checkpoint is ever corrupt, no round of any peer outlasts its step
deadlines, every peer ends within the consensus distance the same run has without churn, and the adapter each
one saved loads with peft and is that peer's model. About 5 minutes (both runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed.config import GossipConfig, RunManifest
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.sims.processes import run_processes
from p2pfed.sims.simulate import SimConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
]

PEERS, ROUNDS, K, Q = 10, 15, 3, 2
STEP_TIMEOUT = 10.0
CHURN = 0.08  # per peer and round: about ten kills over the run
# "within the normal consensus distance": the worst peer's distance to the mean, against the worst peer's in
# the same run without churn (`calm`: same shards and deadlines; one peer whose last mix was partial sets it)
CLOSE_TO_NORMAL = 3.0


def soak_config() -> SimConfig:
    return SimConfig(peers=PEERS, topology="complete", partition="iid", save_adapters=True,
                     gossip=GossipConfig(rounds=ROUNDS, local_steps=K, gossip_steps=Q, step_timeout=STEP_TIMEOUT))


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("soak") / "run"
    result = run_processes(soak_config(), out, eval_rows=100, max_rows=150, churn=CHURN, timeout_s=1800)
    return out, result.summary


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same run without churn: what the consensus distance normally is (about a minute)."""
    out = tmp_path_factory.mktemp("calm") / "run"
    return run_processes(soak_config(), out, eval_rows=100, max_rows=150, timeout_s=1800).summary


def test_killed_peers_keep_whole_checkpoints_and_nobody_stalls(soak: tuple[Path, dict[str, Any]]) -> None:
    out, summary = soak
    churn = summary["churn"]
    print("churn:", json.dumps(churn))
    assert churn["kills"] >= 3 and len(churn["killed_peers"]) >= 3  # the soak really churned
    assert churn["checkpoints_checked_after_kill"] == churn["kills"]
    assert churn["corrupt_checkpoints"] == []
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for p in range(PEERS):
        ran = {r["round"] for r in rows if r["peer"] == p}
        assert ROUNDS - 1 in ran, p  # everyone ran the last round
        # only a killed peer may skip rounds: it caught up with the network's round when it came back
        assert ran == set(range(ROUNDS)) or p in churn["killed_peers"], (p, sorted(ran))
    training = float(np.median([r["seconds"] for r in rows]))
    assert churn["slowest_round_seconds"] <= Q * STEP_TIMEOUT + 3 * training + 5.0, churn


def test_every_peer_ends_near_the_others_with_an_adapter_peft_loads(
    soak: tuple[Path, dict[str, Any]], calm: dict[str, Any]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from p2pfed.learn.models import resolve_model

    out, summary = soak
    churn = summary["churn"]
    model = TaskModel.load(LearnConfig(run=RunManifest(task="sms-spam")))
    churned, normal = summary["final"], calm["final"]
    print(f"consensus distance (mean / worst peer): churned {churned['consensus_distance']:.3g} / "
          f"{churned['consensus_distance_max']:.3g}, the same run without churn {normal['consensus_distance']:.3g} / "
          f"{normal['consensus_distance_max']:.3g}; to the never-killed peers' mean, killed peers end up to "
          f"{churn['distance_killed_max']:.3g} (peer {churn['distance_killed_max_peer']}), the never-killed up to "
          f"{churn['distance_never_killed_max']:.3g}")
    assert churned["consensus_distance_max"] <= CLOSE_TO_NORMAL * normal["consensus_distance_max"]

    directory = resolve_model("minilm").directory
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = np.arange(0, 200, 4)
    batch = tokenizer(model.pool_texts(rows), padding=True, truncation=True, max_length=64, return_tensors="pt")
    for i in range(PEERS):
        node = out / f"peer-{i:02d}"
        base = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2)
        loaded = PeftModel.from_pretrained(base, node / "adapter").eval()
        predicted = loaded(**batch).logits.argmax(-1).numpy()
        state = load_checkpoint(node)
        assert state is not None and state.round == ROUNDS
        assert (predicted == model.logits(state.vector, rows).argmax(-1)).mean() >= 0.99, i
