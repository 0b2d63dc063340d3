"""Where a simulation's Byzantine peers sit on its (static) graph: at random, or around honest victims.

`random` (the default) draws the Byzantine peers uniformly from [seed, Seed.BYZANTINE]. `eclipse` puts
them around chosen honest victims at the start, so that every victim has one honest neighbour left:
the case no aggregation rule can fix from the neighbourhood's majority alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from p2pfed.errors import ConfigError
from p2pfed.seeds import Seed

PLACEMENTS = ("random", "eclipse")


@dataclass(frozen=True)
class Placement:
    byzantine: list[int]  # sorted peer indices
    victims: list[int] = field(default_factory=list)  # eclipse: honest peers with one honest neighbour left


def place_byzantine(name: str, adjacency: Sequence[Sequence[int]], count: int, seed: int) -> Placement:
    """`count` Byzantine peers on the graph `adjacency`, by the placement `name` (see PLACEMENTS)."""
    n = len(adjacency)
    if not 0 <= count < n:
        raise ConfigError(f"--byzantine must be between 0 and peers-1 ({n - 1}), got {count}")
    if name == "random":
        rng = np.random.default_rng([seed, Seed.BYZANTINE])
        return Placement(sorted(int(i) for i in rng.choice(n, size=count, replace=False)))
    if name == "eclipse":
        return eclipse(adjacency, count, np.random.default_rng([seed, Seed.ECLIPSE]))
    raise ConfigError(f"unknown --placement {name!r}; choose one of {', '.join(PLACEMENTS)}")


def eclipse(adjacency: Sequence[Sequence[int]], count: int, rng: np.random.Generator) -> Placement:
    """Byzantine peers surrounding as many honest victims as `count` allows.

    Candidates (peers with at least 2 neighbours) are tried once each, in an order drawn from `rng`. A
    candidate v keeps one honest neighbour h: the one an earlier victim already keeps honest if there
    is one (if two, v is skipped), else one drawn from `rng`. Every other neighbour of v becomes
    Byzantine; v is taken as a victim if those new Byzantine peers fit in the budget left, else
    skipped. Victims and the neighbours they keep are never made Byzantine afterwards, so every victim
    ends with all but one neighbour Byzantine. Budget left over when no candidate fits goes to peers
    drawn from `rng`, outside the victims and their kept neighbours while there are such peers; a
    victim that loses its last honest neighbour that way is no longer listed as one.
    """
    n = len(adjacency)
    byzantine: set[int] = set()
    protected: set[int] = set()  # victims and the honest neighbour each of them keeps
    victims: list[int] = []
    for v in (int(i) for i in rng.permutation(n)):
        neighbours = set(adjacency[v])
        honest = neighbours - byzantine
        if v in byzantine or len(neighbours) < 2 or not honest:
            continue
        kept = sorted(honest & protected)
        if len(kept) > 1:
            continue
        keep = kept[0] if kept else int(rng.choice(sorted(honest)))
        new = honest - {keep}
        if len(byzantine) + len(new) > count:
            continue
        byzantine |= new
        protected |= {v, keep}
        victims.append(v)
    rest = [int(i) for i in rng.permutation(n) if int(i) not in byzantine]
    rest.sort(key=lambda i: i in protected)  # stable: unprotected peers first, in the drawn order
    byzantine |= set(rest[: count - len(byzantine)])
    victims = [v for v in victims if v not in byzantine and len(set(adjacency[v]) - byzantine) == 1]
    return Placement(sorted(byzantine), sorted(victims))


def byzantine_shares(adjacency: Sequence[Sequence[int]], byzantine: Sequence[int]) -> list[float]:
    """Each peer's share of Byzantine neighbours on the graph."""
    bad = set(byzantine)
    return [sum(j in bad for j in neighbours) / len(neighbours) for neighbours in adjacency]
