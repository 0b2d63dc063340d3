"""Where Byzantine peers sit on a simulation's graph, their share around each honest peer, and the options
`p2pfed sim` / `p2pfed experiment` check before any model loads (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.errors import ConfigError
from p2pfed.learn import TaskModel
from p2pfed.peer.topology import build_topology
from p2pfed.sims.placement import byzantine_shares, place_byzantine


def byzantine_neighbours(adjacency: list[list[int]], peer: int, byzantine: list[int]) -> int:
    return sum(j in byzantine for j in adjacency[peer])


@pytest.mark.parametrize(
    ("topology", "peers", "degree", "count"),
    [("regular", 16, 4, 5), ("regular", 64, 6, 12), ("ring", 12, 2, 3), ("small-world", 30, 4, 8)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_eclipse_leaves_each_victim_one_honest_neighbour(
    topology: str, peers: int, degree: int, count: int, seed: int
) -> None:
    adjacency = build_topology(topology, peers, degree=degree, seed=seed)
    placed = place_byzantine("eclipse", adjacency, count, seed)
    assert len(placed.byzantine) == count == len(set(placed.byzantine))
    assert placed.victims, "the budget covers at least one neighbourhood"
    for victim in placed.victims:
        assert victim not in placed.byzantine
        assert byzantine_neighbours(adjacency, victim, placed.byzantine) == len(adjacency[victim]) - 1
    assert place_byzantine("eclipse", adjacency, count, seed) == placed  # the seed decides


def test_eclipse_surrounds_more_victims_with_a_larger_budget() -> None:
    adjacency = build_topology("regular", 40, degree=4, seed=0)
    victims = [len(place_byzantine("eclipse", adjacency, count, 0).victims) for count in (3, 12)]
    assert 1 <= victims[0] < victims[1]


def test_eclipse_with_too_small_a_budget_still_places_every_byzantine_peer() -> None:
    adjacency = build_topology("complete", 10)  # a victim would need 8 Byzantine neighbours
    placed = place_byzantine("eclipse", adjacency, 3, 0)
    assert placed.victims == [] and len(placed.byzantine) == 3


def test_random_placement_is_todays_draw_and_bad_names_are_clear() -> None:
    adjacency = build_topology("regular", 10, degree=4, seed=0)
    assert place_byzantine("random", adjacency, 3, 0).byzantine == [1, 2, 7]  # as before placements existed
    with pytest.raises(ConfigError, match="unknown --placement 'middle'; choose one of random, eclipse"):
        place_byzantine("middle", adjacency, 3, 0)
    with pytest.raises(ConfigError, match="--byzantine must be between 0 and peers-1"):
        place_byzantine("random", adjacency, 10, 0)


def test_byzantine_share_counts_the_neighbours_of_each_peer() -> None:
    ring = build_topology("ring", 6)  # 0-1-2-3-4-5-0
    assert byzantine_shares(ring, [0]) == [0.0, 0.5, 0.0, 0.0, 0.0, 0.5]
    assert byzantine_shares(ring, [0, 2]) == [0.0, 1.0, 0.0, 0.5, 0.0, 0.5]


class NoModel(Exception):
    """Raised where a model would load: what ran before it was only option checking."""


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NoModel

    monkeypatch.setattr(TaskModel, "load", refuse)


@pytest.mark.parametrize("peers", [2, 3, 4])
def test_sim_defaults_work_on_a_few_peers(peers: int, no_model: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", "--peers", str(peers), "--out", str(tmp_path)])
    assert isinstance(result.exception, NoModel), result.output  # the options passed; the model came next
    assert f"--degree {peers - 1} (every peer linked to every other)" in result.output


def test_sim_names_the_eclipse_victims_before_it_starts(no_model: None, tmp_path: Path) -> None:
    args = ["sim", "--peers", "16", "--byzantine", "5", "--attack", "sign_flip", "--placement", "eclipse"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)])
    assert isinstance(result.exception, NoModel), result.output
    assert "eclipse placement: Byzantine peers [" in result.output and "surround honest peers [" in result.output


def test_experiment_reports_every_invalid_cell_before_loading_a_model(no_model: None, tmp_path: Path) -> None:
    args = ["experiment", "--peers", "9", "--topology", "regular", "--degree", "5", "--attacks", "none,ipm",
            "--defences", "mean", "--byzantine", "2", "--seeds", "0,1", "--out", str(tmp_path), "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "4 of 4 cells cannot run, so none was started" in result.output
    assert "--peers × --degree must be even; use --degree 4 or 6, or --peers 10" in result.output
    for cell in ("none/mean byz=0 seed=0", "ipm/mean byz=2 seed=0", "none/mean byz=0 seed=1", "ipm/mean byz=2 seed=1"):
        assert cell in result.output
    assert not (tmp_path / "results.jsonl").exists()


def test_a_sparse_experiment_of_64_peers_gets_past_its_checks(no_model: None, tmp_path: Path) -> None:
    args = ["experiment", "--peers", "64", "--topology", "regular", "--degree", "6", "--attacks", "ipm",
            "--defences", "mean", "--byzantine", "8", "--placement", "eclipse", "--out", str(tmp_path),
            "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 cells run, 0 already done, 1 failed" in result.output  # failed where the model would load
    assert "NoModel" in (tmp_path / "results.jsonl").read_text()


def test_experiment_defaults_work_on_a_few_peers(tmp_path: Path) -> None:
    args = ["experiment", "--peers", "3", "--topology", "regular", "--attacks", "none", "--defences", "mean", "--byzantine", "1",
            "--list", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "degree 2 (every peer linked to every other)" in result.output and "1 cells, 1 to run" in result.output
