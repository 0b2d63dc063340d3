"""Splitting the training pool among peers (IID or label-skewed non-IID), and a peer's validation split.

Every pool index lands in exactly one shard and no shard is empty: a shard that a scheme leaves with fewer
than `min_size` rows is topped up with rows taken from the largest shards.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2pfed.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "k-classes")
Indices = npt.NDArray[np.int64]


def partition(
    labels: npt.NDArray[np.int64],
    num_peers: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_peer: int = 2,
    rng: np.random.Generator,
    min_size: int = 8,
) -> list[Indices]:
    """Shards of `range(len(labels))`, one per peer, each sorted.

    iid: a random equal split. dirichlet: each class is spread over peers with proportions drawn from
    Dir(alpha) (small alpha = strongly skewed). k-classes: each peer holds `classes_per_peer` classes
    (assigned round-robin over a shuffled class order) and each class is split evenly among its holders.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if num_peers < 1:
        raise ConfigError(f"num_peers must be >= 1, got {num_peers}")
    if n < num_peers:
        raise ConfigError(f"cannot split {n} rows among {num_peers} peers")
    min_size = min(min_size, n // num_peers)
    if scheme == "iid":
        shards = np.array_split(rng.permutation(n), num_peers)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
        shards = _dirichlet(labels, num_peers, alpha, rng)
    elif scheme == "k-classes":
        if classes_per_peer < 1:
            raise ConfigError(f"classes_per_peer must be >= 1, got {classes_per_peer}")
        shards = _k_classes(labels, num_peers, classes_per_peer, rng)
    else:
        raise ConfigError(f"unknown partition scheme {scheme!r}: use one of {SCHEMES}")
    shards = _top_up([np.asarray(s, dtype=np.int64) for s in shards], min_size, rng)
    return [np.sort(s) for s in shards]


def _dirichlet(
    labels: Indices, num_peers: int, alpha: float, rng: np.random.Generator
) -> list[Indices]:
    parts: list[list[Indices]] = [[] for _ in range(num_peers)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_peers, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(np.int64)
        for peer, piece in enumerate(np.split(rows, cuts)):
            parts[peer].append(piece)
    return [np.concatenate(p) for p in parts]


def _k_classes(labels: Indices, num_peers: int, k: int, rng: np.random.Generator) -> list[Indices]:
    classes = rng.permutation(np.unique(labels))
    k = min(k, len(classes))
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for peer in range(num_peers):
        for j in range(k):
            holders[int(classes[(peer * k + j) % len(classes)])].append(peer)
    parts: list[list[Indices]] = [[] for _ in range(num_peers)]
    orphans: list[Indices] = []
    for c, peers in holders.items():
        rows = rng.permutation(np.flatnonzero(labels == c))
        if not peers:  # more classes than peers * k: these rows go to the smallest shards below
            orphans.append(rows)
            continue
        for peer, piece in zip(peers, np.array_split(rows, len(peers)), strict=True):
            parts[peer].append(piece)
    shards = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
    for rows in orphans:
        for row in rows:
            smallest = int(np.argmin([len(s) for s in shards]))
            shards[smallest] = np.append(shards[smallest], row)
    return shards


def _top_up(shards: list[Indices], min_size: int, rng: np.random.Generator) -> list[Indices]:
    """Move random rows from the largest shards into shards smaller than `min_size`."""
    for i in range(len(shards)):
        while len(shards[i]) < min_size:
            donor = int(np.argmax([len(s) for s in shards]))
            take = int(rng.integers(len(shards[donor])))
            shards[i] = np.append(shards[i], shards[donor][take])
            shards[donor] = np.delete(shards[donor], take)
    return shards


def split_validation(
    indices: Indices, fraction: float, rng: np.random.Generator
) -> tuple[Indices, Indices]:
    """(train, validation) of one peer's shard; both non-empty when the shard has >= 2 rows."""
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 <= fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(len(indices) * fraction))
    if fraction > 0 and len(indices) >= 2:
        n_val = min(max(n_val, 1), len(indices) - 1)
    shuffled = rng.permutation(indices)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])
