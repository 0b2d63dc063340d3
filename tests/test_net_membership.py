"""Membership's rules, fed events by hand: no sockets, no clock, one seeded Generator."""

from __future__ import annotations

import numpy as np

from p2pfed.net.membership import (
    BOOTSTRAP,
    INBOUND,
    Action,
    Decision,
    Evidence,
    EvidenceKind,
    Membership,
    MembershipRules,
    Status,
)

ME = "me"
QUARANTINED = Evidence(EvidenceKind.QUARANTINED, "harmful on validation")


def make(target: int = 8, seed: int = 0, **rules: float) -> Membership:
    return Membership(ME, target, np.random.default_rng(seed), MembershipRules(**rules))  # type: ignore[arg-type]


def candidates(prefix: str, n: int) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"{prefix}{i}", (f"/ip4/10.0.0.1/tcp/{4000 + i}",)) for i in range(n)]


def dials(decisions: list[Decision]) -> list[str]:
    return [d.peer for d in decisions if d.action is Action.DIAL]


def evicted(decisions: list[Decision]) -> list[str]:
    return [d.peer for d in decisions if d.action is Action.EVICT]


def greets(m: Membership, peer: str, *, full: bool = False, lists_us: bool = True) -> list[Decision]:
    """`peer` connects and its hello arrives."""
    return [*m.connected(peer), *m.hello(peer, Status(degree=3, full=full, lists_us=lists_us))]


def link_all(m: Membership, decisions: list[Decision]) -> None:
    """Every dial in `decisions` succeeds, and so does every dial that follows from it."""
    pending = dials(decisions)
    while pending:
        pending.extend(dials(greets(m, pending.pop(0))))


def test_candidates_fill_the_target_degree_and_no_more() -> None:
    m = make(target=8)
    first = m.discovered(candidates("h", 20), advertiser=BOOTSTRAP)
    assert len(dials(first)) == 8
    link_all(m, first)
    assert len(m.neighbours()) == 8
    assert dials(m.discovered(candidates("x", 5), advertiser=BOOTSTRAP)) == []


def test_a_failed_dial_is_replaced_by_another_candidate() -> None:
    m = make(target=2)
    first = dials(m.discovered(candidates("h", 5), advertiser=BOOTSTRAP))
    (replacement,) = dials(m.lost(first[0]))
    assert replacement not in first
    assert first[0] not in m.pool()


def test_an_evicted_neighbour_is_disconnected_and_replaced() -> None:
    m = make(target=4)
    link_all(m, m.discovered(candidates("h", 4), advertiser=BOOTSTRAP))
    bad = m.neighbours()[0]
    m.discovered(candidates("spare", 3), advertiser="h1")
    decisions = m.evidence(bad, QUARANTINED)
    assert evicted(decisions) == [bad]
    assert "quarantined" in decisions[0].reason
    assert bad not in m.neighbours()
    (replacement,) = dials(decisions)
    assert replacement.startswith("spare")


def test_no_eviction_without_evidence() -> None:
    """Nothing but discovery, presence and rounds (whatever their updates look like): the view holds."""
    m = make(target=4)
    link_all(m, m.discovered(candidates("h", 4), advertiser=BOOTSTRAP))
    before = sorted(m.neighbours())
    for round in range(50):
        decisions = m.tick(round)
        decisions += m.discovered(candidates(f"r{round}-", 10), advertiser=f"a{round}")
        for peer in before:
            decisions += m.presence(peer, Status(degree=7, full=round % 2 == 0, lists_us=True))
        assert decisions == []
    assert sorted(m.neighbours()) == before


def test_evictions_per_round_are_bounded() -> None:
    m = make(target=8, max_rewires_per_round=2)
    link_all(m, m.discovered(candidates("h", 8), advertiser=BOOTSTRAP))
    everyone = list(m.neighbours())
    per_round = [sum(len(evicted(m.evidence(p, QUARANTINED))) for p in everyone)]
    for round in range(4):
        per_round.append(len(evicted(m.tick(round))))
    assert per_round == [2, 2, 2, 2, 0]
    assert m.neighbours() == []


def test_an_evicted_identity_is_refused_for_its_cooldown_then_welcome_again() -> None:
    m = make(target=4, cooldown_rounds=3)
    m.tick(0)
    link_all(m, m.discovered(candidates("h", 2), advertiser=BOOTSTRAP))
    bad = "h0"
    assert evicted(m.evidence(bad, QUARANTINED)) == [bad]
    m.disconnected(bad)
    for round in (1, 2, 3):
        m.tick(round)
        assert m.connected(bad) == [Decision(Action.REFUSE, bad, "in cooldown")]
        assert m.hello(bad, Status(3, False, True))[0].action is Action.REFUSE
        assert dials(m.discovered([(bad, ("/ip4/10.0.0.9/tcp/1",))], advertiser="h1")) == []
        assert bad not in m.neighbours() and bad not in m.pool()
        assert m.discovered(candidates("via-bad", 3), advertiser=bad) == []  # it advertises nothing
        assert not any(p.startswith("via-bad") for p in m.pool())
        m.disconnected(bad)
    m.tick(4)
    assert greets(m, bad) == [] and bad in m.neighbours()


def test_a_sybil_advertiser_gets_at_most_its_share_of_the_pool() -> None:
    m = make(target=8, pool_size=40, advertiser_share=0.25)  # quota: 10 candidates per advertiser
    m.discovered(candidates("sybil", 500), advertiser="attacker")  # first, and loudest
    assert len(m.pool()) == 10  # not 40: the rest of the pool waits for other advertisers
    for h in range(6):
        m.discovered(candidates(f"honest{h}-", 8), advertiser=f"honest{h}")
    pool = m.pool()
    from_attacker = [p for p, adv in pool.items() if adv == "attacker"]
    assert len(from_attacker) <= 10 == m.advertiser_quota
    assert len(pool) == 40  # honest candidates took the rest instead of being turned away


def test_peers_that_dial_us_never_take_the_reserved_slots() -> None:
    """A flood of inbound Sybils fills only the open slots: the reserved ones go to the candidates we
    dialled, and the Sybils we turned away hold at most one advertiser's share of the pool."""
    m = make(target=8, sampled_share=0.25, pool_size=40)
    assert m.reserved == 2
    honest = dials(m.discovered(candidates("honest", 30), advertiser=BOOTSTRAP))
    assert len(honest) == 8
    for sybil, _ in candidates("sybil", 100):  # they connect before our dials complete
        greets(m, sybil)
    for peer in honest:
        greets(m, peer)
    assert sorted(p.rstrip("0123456789") for p in m.neighbours()) == ["honest"] * 2 + ["sybil"] * 6
    assert sum(adv == INBOUND for adv in m.pool().values()) == m.advertiser_quota == 10


def test_a_hub_greets_a_peer_it_turned_away_once_a_reserved_slot_is_free() -> None:
    """Everyone bootstraps from one hub: the hub's reserved slots go to those it turned away, sampled
    from its pool, so a small network still forms a complete graph."""
    m = make(target=4, sampled_share=0.25)
    for peer in ("a", "b", "c"):
        assert greets(m, peer) == []
    assert m.full_for(None)
    assert greets(m, "d") == [Decision(Action.GREET, "d")]
    assert not m.full_for("d")  # our hello tells it there is room
    assert m.hello("d", Status(degree=1, full=False, lists_us=True)) == []
    assert sorted(m.neighbours()) == ["a", "b", "c", "d"]


def test_a_peer_we_dial_is_never_told_we_are_full() -> None:
    m = make(target=4, sampled_share=0.5)
    for sybil, _ in candidates("sybil", 2):
        greets(m, sybil)
    assert m.full_for(None)
    (chosen,) = dials(m.discovered(candidates("h", 1), advertiser=BOOTSTRAP))
    assert not m.full_for(chosen)


def test_choices_are_deterministic_under_a_seed() -> None:
    def run(seed: int) -> list[str]:
        m = make(target=4, seed=seed)
        chosen = dials(m.discovered(candidates("h", 30), advertiser=BOOTSTRAP))
        for peer in chosen[:2]:
            chosen += dials(m.lost(peer))
        return chosen

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_a_full_peer_that_does_not_list_us_is_not_a_neighbour() -> None:
    """One-sided links: it would never send us an update, and each gossip step would wait for one."""
    m = make(target=4)
    decisions = greets(m, "hub", full=True, lists_us=False)
    assert [d.action for d in decisions] == [Action.UNLINK]
    assert m.neighbours() == []
    # a full peer that lists us is a neighbour; a peer with room that does not list us yet is only behind
    assert greets(m, "a", full=True, lists_us=True) == []
    assert greets(m, "b", full=False, lists_us=False) == []
    assert sorted(m.neighbours()) == ["a", "b"]
    # a neighbour that later announces it is full without us is greeted again (the announcement may be
    # stale); its answer, full and without us, drops it, and the connection may stay
    assert [d.action for d in m.presence("b", Status(4, full=True, lists_us=False))] == [Action.GREET]
    assert [d.action for d in m.hello("b", Status(4, full=True, lists_us=False), answer=True)] == [Action.UNLINK]
    assert m.neighbours() == ["a"]
    # a second such announcement in one round drops it without waiting for an answer
    greets(m, "c", full=False, lists_us=True)
    assert [d.action for d in m.presence("c", Status(4, full=True, lists_us=False))] == [Action.GREET]
    assert [d.action for d in m.presence("c", Status(4, full=True, lists_us=False))] == [Action.UNLINK]
    assert m.neighbours() == ["a"]
    # connected but not a neighbour: it is not dialled again
    assert dials(m.discovered([("hub", ("/ip4/10.0.0.2/tcp/1",))], advertiser="a")) == []


def test_a_peer_we_dialled_counts_only_once_it_has_answered_our_hello() -> None:
    """It answers once it has decided about us, so we never count it before it counts us; if our hello
    gets no answer, its own greeting decides."""
    m = make(target=4)
    (chosen,) = dials(m.discovered(candidates("h", 1), advertiser=BOOTSTRAP))
    m.connected(chosen)
    assert m.hello(chosen, Status(1, False, False), answer=False) == []
    assert m.neighbours() == []
    m.hello(chosen, Status(1, False, True), answer=True)
    assert m.neighbours() == [chosen]

    (other,) = dials(m.discovered(candidates("x", 1), advertiser=BOOTSTRAP))
    m.connected(other)
    m.hello(other, Status(1, False, False), answer=False)
    m.hello_failed(other)
    assert sorted(m.neighbours()) == sorted([chosen, other])


def test_a_neighbour_that_does_not_count_us_is_greeted_again_and_the_link_ends_up_both_ways() -> None:
    """A stale announcement (or a restart that lost a hello) can leave a one-sided link: we count `them`,
    it does not count us, so our updates are turned away and we wait out every step for its own. Its
    announcement without us makes us greet it again, and the hello settles the link on both sides."""
    me, them = make(target=4), Membership("them", 4, np.random.default_rng(1))
    greets(me, "them", full=False, lists_us=False)  # its greeting had room; then its side lost us
    me.tick(1)
    them.connected(ME)
    assert me.neighbours() == ["them"] and them.neighbours() == []
    (greet,) = me.presence("them", Status(0, full=False, lists_us=False))
    assert greet.action is Action.GREET and greet.peer == "them"
    # our hello reaches it (we are not one it dialled), and its answer lists us
    them.hello(ME, Status(1, full=False, lists_us=True), answer=False)
    assert them.neighbours() == [ME]
    assert me.hello("them", Status(1, full=False, lists_us=True), answer=True) == []
    assert me.neighbours() == ["them"]
    # once a round: a flood of stale announcements is not a flood of hellos
    assert me.presence("them", Status(0, full=False, lists_us=False)) == []
    me.tick(2)
    assert [d.action for d in me.presence("them", Status(0, full=False, lists_us=False))] == [Action.GREET]
