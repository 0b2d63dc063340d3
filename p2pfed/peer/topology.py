"""Communication graphs (drawn with networkx) and their Metropolis–Hastings mixing weights (numpy).

Metropolis–Hastings: w_ij = 1 / (1 + max(d_i, d_j)) for each edge, w_ii = 1 − Σ_j w_ij. The matrix is
symmetric and doubly stochastic for any undirected graph, and each peer computes its row from its own and
its neighbours' degrees alone — no central authority needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, ItemsView, Iterator, Mapping

import networkx as nx
import numpy as np
import numpy.typing as npt

from p2pfed.errors import ConfigError

TOPOLOGIES = ("ring", "regular", "erdos-renyi", "small-world", "complete")
DEFAULT_DEGREE = 4

Adjacency = list[list[int]]

# Draws of a random graph before giving up on a connected one: bounded, so an unlucky request fails fast.
_CONNECTED_TRIES = 200


def build_topology(
    name: str, n: int, *, degree: int = DEFAULT_DEGREE, p: float = 0.3, rewire: float = 0.2, seed: int = 0
) -> Adjacency:
    """Neighbour lists of an undirected, connected, simple graph on n nodes; the same for the same seed.

    A request no such graph satisfies is a ConfigError that names the option to change (--peers,
    --degree, --edge-probability) and a value that works. `degree` applies to regular and small-world
    (whose ring lattice has degree//2 neighbours on each side), `p` to erdos-renyi.
    """
    if n < 2:
        raise ConfigError(f"a topology needs at least 2 peers, got --peers {n}")
    rng = np.random.default_rng(seed)
    if name == "ring":
        graph = nx.cycle_graph(n)
    elif name == "complete":
        graph = nx.complete_graph(n)
    elif name == "regular":
        graph = _random_regular(n, degree, rng)
    elif name == "erdos-renyi":
        graph = _erdos_renyi(n, p, rng)
    elif name == "small-world":
        graph = _small_world(n, degree, rewire, rng)
    else:
        raise ConfigError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    return [sorted(int(j) for j in graph.neighbors(i)) for i in range(n)]


def fit_degree(peers: int, degree: int = DEFAULT_DEGREE) -> int:
    """The default degree made drawable on few peers: at most peers - 1 (then the graph is complete).
    peers·(peers - 1) is always even, so a clipped degree always has a regular graph."""
    return min(degree, peers - 1)


def metropolis_row(own_degree: int, neighbour_degrees: Mapping[str, int]) -> tuple[float, dict[str, float]]:
    """One peer's row of the Metropolis–Hastings matrix: (self weight, weight per neighbour)."""
    weights = {k: 1.0 / (1 + max(own_degree, d)) for k, d in neighbour_degrees.items()}
    return 1.0 - sum(weights.values()), weights


def metropolis_matrix(adjacency: Adjacency) -> npt.NDArray[np.float64]:
    n = len(adjacency)
    w = np.zeros((n, n))
    for i, neighbours in enumerate(adjacency):
        own, row = metropolis_row(len(neighbours), {str(j): len(adjacency[j]) for j in neighbours})
        w[i, i] = own
        for j, value in row.items():
            w[i, int(j)] = value
    return w


def renormalize(self_weight: float, weights: Mapping[str, float], arrived: list[str]) -> npt.NDArray[np.float32]:
    """Weights [self, *arrived] rescaled to sum to 1 over the neighbours whose update arrived in time."""
    raw = np.array([self_weight, *(weights[s] for s in arrived)], dtype=np.float64)
    return (raw / raw.sum()).astype(np.float32)


def _connected(draw: Callable[[], nx.Graph], tries: int = _CONNECTED_TRIES) -> nx.Graph | None:
    for _ in range(tries):
        graph = draw()
        if nx.is_connected(graph):
            return graph
    return None


def _random_regular(n: int, degree: int, rng: np.random.Generator) -> nx.Graph:
    """A connected random `degree`-regular graph.

    Up to degree 4, the configuration model with rejection is tried first: it is what every run measured
    so far drew (the README's and docs/robustness.md's figures are all on 4-regular graphs), it is
    uniform, and it succeeds in about 1 of 40 draws at degree 4 — but in 1 of 6,000 at degree 6, where it
    gave up on ordinary graphs (64 or 1,000 peers). Then networkx's generator (Steger–Wormald), which
    draws any feasible size quickly and is almost always connected for degree >= 3.
    """
    _check_regular(n, degree)
    if degree <= 4:
        for _ in range(500):
            stubs = np.repeat(np.arange(n), degree)
            rng.shuffle(stubs)
            pairs = stubs.reshape(-1, 2)
            graph = nx.empty_graph(n)
            graph.add_edges_from((int(a), int(b)) for a, b in pairs)
            if graph.number_of_edges() == len(pairs) and all(a != b for a, b in pairs) and nx.is_connected(graph):
                return graph
    graph = _connected(lambda: nx.random_regular_graph(degree, n, seed=rng), tries=20)
    if graph is None:  # only degree 2 gets here in practice: a random 2-regular graph is a union of cycles
        raise ConfigError(
            f"could not draw a connected {degree}-regular graph on {n} peers; use --topology ring "
            f"(the connected 2-regular graph) or --degree 3 or more"
        )
    return graph


def _check_regular(n: int, degree: int) -> None:
    if degree >= n:
        raise ConfigError(
            f"no {degree}-regular graph on {n} peers: --degree must be below --peers; "
            f"use --degree {n - 1} (every peer linked to every other) or --peers {degree + 1} or more"
        )
    if degree < 1 or (degree == 1 and n > 2):
        raise ConfigError(f"a {degree}-regular graph on {n} peers is not connected: use --degree 2 or more")
    if n * degree % 2:
        raise ConfigError(
            f"no {degree}-regular graph on {n} peers: --peers × --degree must be even; "
            f"use --degree {degree - 1} or {degree + 1}, or --peers {n + 1}"
        )


def _erdos_renyi(n: int, p: float, rng: np.random.Generator) -> nx.Graph:
    if not 0 < p <= 1:
        raise ConfigError(f"--edge-probability must be in (0, 1], got {p}")
    graph = _connected(lambda: nx.fast_gnp_random_graph(n, p, seed=rng))
    if graph is None:
        # G(n, p) is connected with high probability once p is a little above ln(n)/n
        needed = min(1.0, 2 * math.log(n) / n)
        raise ConfigError(
            f"could not draw a connected erdos-renyi graph on {n} peers with --edge-probability {p} "
            f"in {_CONNECTED_TRIES} tries; use --edge-probability {needed:.3g} or more"
        )
    return graph


def _small_world(n: int, degree: int, rewire: float, rng: np.random.Generator) -> nx.Graph:
    """Watts–Strogatz: a ring lattice of degree//2 neighbours on each side, each edge rewired with
    probability `rewire`, redrawn until connected. Degree peers - 1 is the complete graph."""
    if degree == n - 1:
        return nx.complete_graph(n)
    if not 2 <= degree < n:
        raise ConfigError(
            f"a small-world graph on {n} peers needs 2 <= --degree < --peers, got --degree {degree}; "
            f"use --degree {fit_degree(n)}"
        )
    graph = _connected(lambda: nx.watts_strogatz_graph(n, degree, rewire, seed=rng))
    if graph is None:
        raise ConfigError(f"could not draw a connected small-world graph on {n} peers; raise --degree")
    return graph


class LiveNeighbours(Mapping[str, int]):
    """A neighbour set that changes: every read asks `source` (e.g. a transport's current neighbours and
    their degrees). A Peer takes a snapshot of it at every gossip step."""

    def __init__(self, source: Callable[[], Mapping[str, int]]) -> None:
        self._source = source

    def __getitem__(self, peer: str) -> int:
        return self._source()[peer]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._source()))

    def __len__(self) -> int:
        return len(self._source())

    def __contains__(self, peer: object) -> bool:
        return peer in self._source()

    def items(self) -> ItemsView[str, int]:
        """One consistent read (a neighbour may leave between reading the keys and their degrees)."""
        return ItemsView(dict(self._source()))
