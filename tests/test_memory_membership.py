"""Sampling membership in a simulation (`p2pfed.net.memory_membership`), without a model or sockets:
the defence's evidence is played by reporting every Byzantine neighbour each round, as a defence that
quarantines them would."""

from __future__ import annotations

import pytest

from p2pfed.net.membership import Evidence, EvidenceKind, MembershipRules
from p2pfed.net.memory_membership import MemoryMembership
from p2pfed.peer.topology import build_topology
from p2pfed.sims.placement import place_byzantine

QUARANTINED = Evidence(EvidenceKind.QUARANTINED, "test")


def eclipsed_network(peers: int = 64, degree: int = 6, seed: int = 0) -> tuple[MemoryMembership, list[str], set[str], list[str]]:
    """⅓ Byzantine peers placed around victims on a random regular graph; they advertise only each other."""
    adjacency = build_topology("regular", peers, degree=degree, seed=seed)
    ids = [f"peer-{i:03d}" for i in range(peers)]
    placement = place_byzantine("eclipse", adjacency, peers // 3, seed)
    bad = {ids[i] for i in placement.byzantine}
    network = MemoryMembership(
        {ids[i]: len(adjacency[i]) for i in range(peers)}, seed=seed, advertise_only={p: bad for p in bad}
    )
    network.install({ids[i]: [ids[j] for j in adjacency[i]] for i in range(peers)})
    return network, ids, bad, [ids[v] for v in placement.victims]


def report_byzantine_neighbours(network: MemoryMembership, ids: list[str], bad: set[str]) -> None:
    for peer in ids:
        if peer not in bad:
            for neighbour in network.neighbours(peer):
                if neighbour in bad:
                    network.report(peer, neighbour, QUARANTINED)


def byzantine_share(network: MemoryMembership, peer: str, bad: set[str]) -> float:
    neighbours = network.neighbours(peer)
    return sum(n in bad for n in neighbours) / max(1, len(neighbours))


def test_the_initial_graph_is_installed_exactly() -> None:
    adjacency = build_topology("regular", 64, degree=6, seed=3)
    ids = [f"p{i}" for i in range(64)]
    network = MemoryMembership({p: 6 for p in ids}, seed=3)
    network.install({ids[i]: [ids[j] for j in adjacency[i]] for i in range(64)})
    assert all(set(network.neighbours(ids[i])) == {ids[j] for j in adjacency[i]} for i in range(64))


def test_eclipse_victims_win_an_honest_majority_within_3_rounds_and_keep_it() -> None:
    network, ids, bad, victims = eclipsed_network()
    assert victims and all(byzantine_share(network, v, bad) > 0.5 for v in victims)
    majority = []
    for rnd in range(1, 9):
        report_byzantine_neighbours(network, ids, bad)
        network.rewire(rnd)
        majority.append(all(byzantine_share(network, v, bad) < 0.5 for v in victims))
    assert any(majority[:3]), "no honest majority for every victim within 3 rounds"
    first = majority.index(True)
    assert all(majority[first:]), "a victim lost its honest majority again"


def test_rewires_stay_within_the_per_round_budget() -> None:
    network, ids, bad, _ = eclipsed_network()
    cap = MembershipRules().max_rewires_per_round
    for rnd in range(1, 6):
        report_byzantine_neighbours(network, ids, bad)
        changes = network.rewire(rnd)
        assert max(c.evicted for c in changes.values()) <= cap


def test_evicted_identities_stay_out_for_their_cooldown() -> None:
    rules = MembershipRules(cooldown_rounds=4)
    adjacency = build_topology("regular", 16, degree=4, seed=1)
    ids = [f"p{i:02d}" for i in range(16)]
    network = MemoryMembership({p: 4 for p in ids}, seed=1, rules=rules)
    network.install({ids[i]: [ids[j] for j in adjacency[i]] for i in range(16)})
    victim, accused = ids[0], network.neighbours(ids[0])[0]
    network.report(victim, accused, QUARANTINED)
    changes = network.rewire(1)  # evidence from round 0, applied at the boundary before round 1
    assert changes[victim].evicted == 1
    for rnd in range(1, 2 + rules.cooldown_rounds):  # the round it was evicted in, then the cooldown
        assert accused not in network.neighbours(victim), f"back in round {rnd}"
        assert network.refused(accused, by=victim)
        network.rewire(rnd + 1)
    assert not network.refused(accused, by=victim)  # the cooldown ended: it may be sampled again


def test_no_rewiring_without_evidence() -> None:
    network, ids, _, _ = eclipsed_network()
    before = {p: network.neighbours(p) for p in ids}
    for rnd in range(1, 4):
        changes = network.rewire(rnd)
        assert all(c.evicted == 0 for c in changes.values())
    assert {p: network.neighbours(p) for p in ids} == before


@pytest.mark.parametrize("seed", [0, 5])
def test_deterministic_under_the_seed(seed: int) -> None:
    def run() -> dict[str, list[str]]:
        network, ids, bad, _ = eclipsed_network(seed=seed)
        for rnd in range(1, 4):
            report_byzantine_neighbours(network, ids, bad)
            network.rewire(rnd)
        return {p: network.neighbours(p) for p in ids}

    assert run() == run()


def test_links_are_symmetric() -> None:
    network, ids, bad, _ = eclipsed_network()
    for rnd in range(1, 4):
        report_byzantine_neighbours(network, ids, bad)
        network.rewire(rnd)
        assert all(p in network.neighbours(q) for p in ids for q in network.neighbours(p))
