from __future__ import annotations

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.peer.topology import TOPOLOGIES, build_topology, metropolis_matrix, renormalize


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("n", [4, 9, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metropolis_weights_are_doubly_stochastic(name: str, n: int, seed: int) -> None:
    adjacency = build_topology(name, n, degree=3 if n % 2 == 0 else 4, seed=seed)
    w = metropolis_matrix(adjacency)
    assert np.allclose(w.sum(axis=0), 1.0)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.allclose(w, w.T)
    assert (w >= 0).all()
    assert (np.diag(w) > 0).all()


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_graphs_are_undirected_connected_and_simple(name: str) -> None:
    adjacency = build_topology(name, 12, degree=4, seed=3)
    for i, neighbours in enumerate(adjacency):
        assert i not in neighbours
        assert len(set(neighbours)) == len(neighbours)
        assert all(i in adjacency[j] for j in neighbours)
    seen, frontier = {0}, [0]
    while frontier:
        for j in adjacency[frontier.pop()]:
            if j not in seen:
                seen.add(j)
                frontier.append(j)
    assert len(seen) == 12


def test_shapes_of_the_named_graphs() -> None:
    assert [len(a) for a in build_topology("ring", 6)] == [2] * 6
    assert [len(a) for a in build_topology("complete", 5)] == [4] * 5
    assert [len(a) for a in build_topology("regular", 10, degree=4, seed=7)] == [4] * 10


def test_same_seed_same_graph() -> None:
    assert build_topology("erdos-renyi", 10, seed=5) == build_topology("erdos-renyi", 10, seed=5)


def test_impossible_regular_graph_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="regular"):
        build_topology("regular", 5, degree=3)
    with pytest.raises(ConfigError, match="unknown topology"):
        build_topology("star", 5)


def test_renormalize_over_arrivals() -> None:
    w = renormalize(0.4, {"a": 0.2, "b": 0.2, "c": 0.2}, ["a", "c"])
    assert np.allclose(w, [0.5, 0.25, 0.25])
    assert np.allclose(renormalize(0.4, {"a": 0.6}, []), [1.0])


def test_a_live_neighbour_view_follows_its_source() -> None:
    from p2pfed.peer.topology import LiveNeighbours

    current = {"a": 2}
    view = LiveNeighbours(lambda: current)
    assert dict(view.items()) == {"a": 2} and "a" in view and len(view) == 1
    current = {"b": 3, "c": 1}
    assert dict(view.items()) == {"b": 3, "c": 1} and "a" not in view and view["b"] == 3
