"""Communication graphs and their Metropolis–Hastings mixing weights (pure numpy).

Metropolis–Hastings: w_ij = 1 / (1 + max(d_i, d_j)) for each edge, w_ii = 1 − Σ_j w_ij. The matrix is
symmetric and doubly stochastic for any undirected graph, and each peer computes its row from its own and
its neighbours' degrees alone — no central authority needed.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from p2pfed.errors import ConfigError

TOPOLOGIES = ("ring", "regular", "erdos-renyi", "small-world", "complete")

Adjacency = list[list[int]]


def build_topology(
    name: str, n: int, *, degree: int = 4, p: float = 0.3, rewire: float = 0.2, seed: int = 0
) -> Adjacency:
    """Neighbour lists of an undirected, connected graph on n nodes."""
    if n < 2:
        raise ConfigError(f"a topology needs at least 2 peers, got {n}")
    rng = np.random.default_rng(seed)
    if name == "ring":
        edges = {_edge(i, (i + 1) % n) for i in range(n)}
    elif name == "complete":
        edges = {_edge(i, j) for i in range(n) for j in range(i + 1, n)}
    elif name == "regular":
        edges = _random_regular(n, degree, rng)
    elif name == "erdos-renyi":
        edges = _connected(lambda: {_edge(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p}, n)
    elif name == "small-world":
        edges = _connected(lambda: _watts_strogatz(n, degree, rewire, rng), n)
    else:
        raise ConfigError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    adjacency: Adjacency = [[] for _ in range(n)]
    for i, j in sorted(edges):
        adjacency[i].append(j)
        adjacency[j].append(i)
    return [sorted(a) for a in adjacency]


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


def _edge(i: int, j: int) -> tuple[int, int]:
    return (min(i, j), max(i, j))


def _is_connected(edges: set[tuple[int, int]], n: int) -> bool:
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    seen, frontier = {0}, [0]
    while frontier:
        for j in neighbours[frontier.pop()] - seen:
            seen.add(j)
            frontier.append(j)
    return len(seen) == n


def _connected(sample, n: int, attempts: int = 200) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    for _ in range(attempts):
        edges = sample()
        if _is_connected(edges, n):
            return edges
    raise ConfigError("could not draw a connected graph; raise the degree or edge probability")


def _random_regular(n: int, degree: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    if not 0 < degree < n or (n * degree) % 2:
        raise ConfigError(f"no {degree}-regular graph on {n} peers: need 0 < degree < peers and peers·degree even")
    for _ in range(500):  # configuration model with rejection: simple and uniform enough for small n
        stubs = np.repeat(np.arange(n), degree)
        rng.shuffle(stubs)
        pairs = stubs.reshape(-1, 2)
        edges = {_edge(int(a), int(b)) for a, b in pairs}
        if len(edges) == len(pairs) and all(a != b for a, b in pairs) and _is_connected(edges, n):
            return edges
    raise ConfigError(f"could not draw a connected {degree}-regular graph on {n} peers")


def _watts_strogatz(n: int, degree: int, rewire: float, rng: np.random.Generator) -> set[tuple[int, int]]:
    half = max(1, degree // 2)
    edges = {_edge(i, (i + k) % n) for i in range(n) for k in range(1, half + 1)}
    for i, j in sorted(edges):
        if rng.random() < rewire:
            candidates = [k for k in range(n) if k != i and _edge(i, k) not in edges]
            if candidates:
                edges.discard((i, j))
                edges.add(_edge(i, int(rng.choice(candidates))))
    return edges


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
