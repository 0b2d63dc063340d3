from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.peer.topology import (
    DEFAULT_DEGREE,
    TOPOLOGIES,
    build_topology,
    fit_degree,
    metropolis_matrix,
    renormalize,
)


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


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_same_seed_same_graph(name: str) -> None:
    assert build_topology(name, 40, degree=6, seed=5) == build_topology(name, 40, degree=6, seed=5)
    if name not in ("ring", "complete"):
        assert build_topology(name, 40, degree=6, seed=5) != build_topology(name, 40, degree=6, seed=6)


def connected(adjacency: list[list[int]]) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        for j in set(adjacency[frontier.pop()]) - seen:
            seen.add(j)
            frontier.append(j)
    return len(seen) == len(adjacency)


@pytest.mark.parametrize(("peers", "degree"), [(2, 1), (4, 3), (7, 4), (64, 6), (200, 5), (1000, 6)])
def test_sparse_regular_graphs_of_any_feasible_size_are_drawn_quickly(peers: int, degree: int) -> None:
    started = time.perf_counter()
    adjacency = build_topology("regular", peers, degree=degree, seed=0)
    assert time.perf_counter() - started < 2.0
    assert [len(a) for a in adjacency] == [degree] * peers
    assert all(i not in a and len(set(a)) == degree for i, a in enumerate(adjacency))
    assert connected(adjacency)


def test_small_degree_regular_graphs_are_the_ones_drawn_before() -> None:
    """Up to degree 4 the old configuration model is tried first, so every figure measured on it holds."""
    assert build_topology("regular", 10, degree=4, seed=0)[:3] == [[2, 3, 4, 8], [3, 5, 8, 9], [0, 6, 7, 9]]


@pytest.mark.parametrize(
    ("name", "peers", "options", "message"),
    [
        ("regular", 4, {"degree": 4}, "no 4-regular graph on 4 peers: --degree must be below --peers; use --degree 3"),
        ("regular", 5, {"degree": 3}, "--peers × --degree must be even; use --degree 2 or 4, or --peers 6"),
        ("regular", 9, {"degree": 1}, "use --degree 2 or more"),
        ("small-world", 4, {"degree": 4}, "use --degree 3"),
        ("erdos-renyi", 100, {"p": 0.001}, "use --edge-probability 0.0921 or more"),
        ("erdos-renyi", 10, {"p": 0.0}, "--edge-probability must be in (0, 1]"),
        ("star", 5, {}, "unknown topology 'star'"),
        ("ring", 1, {}, "at least 2 peers, got --peers 1"),
    ],
)
def test_impossible_graphs_say_which_option_to_change(name: str, peers: int, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_topology(name, peers, **options)
    assert message in str(error.value)


@pytest.mark.parametrize("peers", [2, 3, 4, 5, 9])
@pytest.mark.parametrize("name", ["regular", "small-world"])
def test_the_default_degree_fits_any_peer_count(name: str, peers: int) -> None:
    adjacency = build_topology(name, peers, degree=fit_degree(peers), seed=0)
    assert connected(adjacency)
    if peers <= DEFAULT_DEGREE and name == "regular":
        assert [len(a) for a in adjacency] == [peers - 1] * peers  # complete


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
