"""Byzantine `p2pfed join` processes (`p2pfed sim --processes --byzantine N`): which attacks a lone process
can run, and how the supervisor reads who ended next to whom from the nodes' own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pfed.attacks.model_poisoning import SignFlip
from p2pfed.attacks.patient import Patient
from p2pfed.daemon.node import node_attack
from p2pfed.errors import ConfigError
from p2pfed.sims.processes import gather, majority_share
from p2pfed.sims.simulate import SimConfig


def test_a_model_level_attack_runs_in_a_join_process() -> None:
    assert node_attack(None, {}) is None
    assert node_attack("none", {}) is None
    flip = node_attack("sign_flip", {"scale": 2.0})
    assert isinstance(flip, SignFlip) and flip.scale == 2.0
    patient = node_attack("patient", {"inner": "sign_flip", "strike_round": 2})
    assert isinstance(patient, Patient) and isinstance(patient.inner, SignFlip)


@pytest.mark.parametrize(
    ("attack", "params", "says"),
    [
        ("whitebox", {}, "colluders' view"),  # waits each step for the honest updates its colluders saw
        ("dissensus", {}, "colluders' view"),
        ("patient", {"inner": "dissensus"}, "colluders' view"),  # what it strikes with counts too
        ("label_flip", {}, "poisons its data"),
        ("sybil", {}, "one identity"),
        ("no_such_attack", {}, "unknown attack"),
    ],
)
def test_an_attack_a_lone_process_cannot_run_is_refused_with_what_to_do(
    attack: str, params: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        node_attack(attack, params)


def write_node(node: Path, peer_id: str, rounds: list[list[str]], accuracy: float | None) -> None:
    node.mkdir(parents=True)
    (node / "status.json").write_text(json.dumps({"peer_id": peer_id}))
    rows = [{"round": r, "peer_id": peer_id, "accuracy": accuracy, "seconds": 1.0, "neighbour_ids": ids}
            for r, ids in enumerate(rounds)]
    (node / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_gather_reports_each_honest_peers_byzantine_neighbours_round_by_round(tmp_path: Path) -> None:
    # peer 1 is Byzantine; peer 0 drops it after round 0, peer 2 keeps it to the end
    write_node(tmp_path / "n0", "A", [["B", "C"], ["C"]], accuracy=0.9)
    write_node(tmp_path / "n1", "B", [["A", "C"], ["A", "C"]], accuracy=None)
    write_node(tmp_path / "n2", "C", [["A", "B"], ["A", "B"]], accuracy=0.7)
    cfg = SimConfig(peers=3, byzantine=1, attack="sign_flip")
    summary = gather(cfg, tmp_path, [tmp_path / n for n in ("n0", "n1", "n2")], wall=1.0, byzantine={1},
                     majority_baseline=0.8).summary

    assert summary["byzantine_peers"] == [1] and summary["byzantine_peer_ids"] == ["B"]
    assert summary["neighbourhoods"]["byzantine_share_mean_by_round"] == [0.5, 0.25]
    assert summary["neighbourhoods"]["honest_peers_with_byzantine_neighbours"] == [2]
    final = summary["final"]
    assert (final["byzantine_share_max"], final["byzantine_share_max_peer"]) == (0.5, 2)
    assert (final["honest_accuracy_mean"], final["honest_accuracy_min"]) == (pytest.approx(0.8), 0.7)
    assert final["majority_baseline"] == 0.8
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["byzantine"] for r in rows if r["round"] == 0] == [False, True, False]


def test_majority_share_is_what_always_answering_the_commonest_label_scores(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"text": "t", "label": label}) + "\n" for label in "aaab"))
    assert majority_share(path) == 0.75
