"""Membership for a simulation: every peer's `Membership` in one process, carried out at round boundaries.

The same state machine as `join` (`p2pfed.net.membership`) decides; this module only plays the network
around it, synchronously and in a fixed order, so a simulated run is reproducible under its seed:
- **Initial graph.** The run's random graph is installed as each peer's first neighbours (every edge
  dialled by one end, balanced so no peer needs more inbound slots than its rules give).
- **Dials and hellos** are instant: a dial connects both ends (unless the callee refuses the caller, which
  then forgets the candidate), then the two exchange a hello as `join` does (the callee answers with its
  status after deciding).
- **Peer exchange.** Every round each peer announces its neighbours to every other peer, as gossipsub
  floods a `join` run's presence topic; each peer credits the candidates to the announcer. A peer named
  in `advertise_only` (a Byzantine peer under eclipse placement) offers only those identities as
  candidates, while still listing the neighbours it keeps (so its victims do not unlink it).
- **Evidence** (`report`) is queued during a round and applied at the next boundary, after the tick.

Neighbour sets change only inside `rewire`, which the simulation calls once every peer has finished a
round: during a round every peer sees a fixed, symmetric set (a link both ends list).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from p2pfed.net.membership import (
    BOOTSTRAP,
    Action,
    Decision,
    Evidence,
    Membership,
    MembershipRules,
    Status,
)
from p2pfed.net.presence import MAX_PEERS
from p2pfed.seeds import Seed

log = logging.getLogger(__name__)

MAX_DECISIONS_PER_PEER = 200  # per boundary: a runaway dial loop is a bug, logged, never a hang


@dataclass(frozen=True)
class RoundChanges:
    """What one peer's neighbourhood did at a round boundary."""

    evicted: int  # neighbours it dropped for evidence (bounded by the rules' max_rewires_per_round)
    added: int  # neighbours it gained (replacements, or peers that dialled it)
    removed: int  # neighbours it lost (its own evictions, or peers that evicted or unlinked it)


@functools.lru_cache(maxsize=4096)
def addrs(peer: str) -> tuple[str, ...]:
    """A simulated peer's one address (membership dials only candidates that have one)."""
    return (f"/memory/{peer}",)


class MemoryMembership:
    """All peers' neighbour sets, decided by one `Membership` per peer."""

    def __init__(
        self,
        targets: Mapping[str, int],
        *,
        seed: int,
        rules: MembershipRules | None = None,
        advertise_only: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """`targets`: each peer's target degree, in peer-index order (that order seeds each peer's
        stream, and fixes the order of every pass)."""
        self.order = list(targets)
        self.members = {
            peer: Membership(peer, target, np.random.default_rng([seed, i, Seed.MEMBERSHIP]), rules or MembershipRules())
            for i, (peer, target) in enumerate(targets.items())
        }
        self.advertise_only = {p: sorted(set(others) - {p}) for p, others in (advertise_only or {}).items()}
        self._connections: set[frozenset[str]] = set()
        self._reports: dict[str, dict[str, Evidence]] = {peer: {} for peer in self.order}
        self._round = -1
        self._neighbours: dict[str, frozenset[str]] = {peer: frozenset() for peer in self.order}
        self.evictions: Counter[str] = Counter()  # per peer, since the start
        self._installing = False

    # ------------------------------------------------------------------ queries
    def neighbours(self, peer: str) -> list[str]:
        """`peer`'s neighbours this round: the links both ends list."""
        return sorted(self._neighbours.get(peer, frozenset()))

    def neighbour_degrees(self, peer: str) -> dict[str, int]:
        return {other: len(self._neighbours[other]) for other in self.neighbours(peer)}

    def refused(self, peer: str, by: str) -> bool:
        return self.members[by].refused(peer)

    # ------------------------------------------------------------------ events
    def install(self, adjacency: Mapping[str, Sequence[str]]) -> None:
        """The run's initial graph as every peer's first neighbours. Each edge is dialled by the end
        with fewer dials so far (ties: the first in peer order), which keeps every peer's inbound links
        near half its degree, within what its reserved slots leave."""
        position = {peer: i for i, peer in enumerate(self.order)}
        dialled: Counter[str] = Counter()
        queue: deque[tuple[str, Decision]] = deque()
        for peer in self.order:
            for other in adjacency[peer]:
                if position[other] < position[peer]:
                    continue
                caller, callee = sorted((peer, other), key=lambda p: (dialled[p], position[p]))
                dialled[caller] += 1
                found = [(callee, addrs(callee))]
                queue.extend((caller, d) for d in self.members[caller].discovered(found, advertiser=BOOTSTRAP))
        self._installing = True  # hellos exchange no candidates yet: the graph is exactly the one drawn
        self._run(queue)
        self._installing = False
        self._snapshot()

    def report(self, reporter: str, peer: str, evidence: Evidence) -> None:
        """The defence of `reporter` has evidence against `peer`; applied at the next boundary."""
        if reporter in self._reports and peer != reporter:
            self._reports[reporter].setdefault(peer, evidence)

    def rewire(self, round: int) -> dict[str, RoundChanges]:
        """The boundary before `round`: cooldowns run down, evidence evicts, peers exchange presence,
        free slots are dialled. Returns what changed for each peer."""
        before = dict(self._neighbours)
        evicted0 = Counter(self.evictions)
        queue: deque[tuple[str, Decision]] = deque()
        self._round = round
        for peer in self.order:
            queue.extend((peer, d) for d in self.members[peer].tick(round))
        self._run(queue)
        for peer in self.order:
            reports, self._reports[peer] = self._reports[peer], {}
            for accused in sorted(reports):
                queue.extend((peer, d) for d in self.members[peer].evidence(accused, reports[accused]))
        self._run(queue)
        self._exchange_presence()
        self._snapshot()
        return {
            peer: RoundChanges(
                evicted=self.evictions[peer] - evicted0[peer],
                added=len(self._neighbours[peer] - before[peer]),
                removed=len(before[peer] - self._neighbours[peer]),
            )
            for peer in self.order
        }

    # ------------------------------------------------------------------ the network around it
    def _announced(self, peer: str) -> list[str]:
        listed = self.advertise_only.get(peer)
        if listed is None:
            return self.members[peer].neighbours()
        if len(listed) <= MAX_PEERS:
            return listed
        start = (self._round * MAX_PEERS) % len(listed)  # a different slice each round
        return [listed[(start + k) % len(listed)] for k in range(MAX_PEERS)]

    def _exchange_presence(self) -> None:
        """Every peer's announcement reaches every other peer (gossipsub floods the run's topic)."""
        announcements = []
        for sender in self.order:
            listed = self._announced(sender)
            found = [(sender, addrs(sender)), *((p, addrs(p)) for p in listed)]
            # a colluder still lists the neighbours it keeps: an honest peer unlinks a full peer that
            # does not list it, and an attacker wants its victims
            names = frozenset(listed) | frozenset(self.members[sender].neighbours())
            degree, full = len(self.members[sender].neighbours()), self.members[sender].full_for(None)
            announcements.append((sender, names, found, degree, full))
        queue: deque[tuple[str, Decision]] = deque()
        for receiver in self.order:
            member = self.members[receiver]
            for sender, names, found, degree, full in announcements:
                if sender == receiver:
                    continue
                if member.degree_of(sender) is not None:  # a neighbour's announcement refreshes it
                    status = Status(degree, full, receiver in names, addrs(sender))
                    queue.extend((receiver, d) for d in member.presence(sender, status))
                queue.extend((receiver, d) for d in member.discovered(found, advertiser=sender))
            self._run(queue)

    def _status(self, of: str, to: str) -> Status:
        """`of`'s hello as `to` reads it."""
        member = self.members[of]
        listed = member.neighbours()
        return Status(len(listed), member.full_for(to), to in listed, addrs(of))

    def _run(self, queue: deque[tuple[str, Decision]]) -> None:
        """Carry out decisions (and the decisions they lead to) until none are left."""
        budget = MAX_DECISIONS_PER_PEER * len(self.order)
        while queue and budget > 0:
            budget -= 1
            actor, decision = queue.popleft()
            queue.extend(self._carry_out(actor, decision))
        if queue:
            log.warning("membership: %d decisions left undone at round %d (a dial loop?)", len(queue), self._round)
            queue.clear()

    def _carry_out(self, actor: str, decision: Decision) -> list[tuple[str, Decision]]:
        peer, action = decision.peer, decision.action
        if action is Action.UNLINK:
            return []
        if action in (Action.EVICT, Action.REFUSE):
            if action is Action.EVICT:
                self.evictions[actor] += 1
            return self._disconnect(actor, peer)
        if peer not in self.members:
            return [(actor, d) for d in self.members[actor].lost(peer)]
        return self._dial(actor, peer)

    def _dial(self, caller: str, callee: str) -> list[tuple[str, Decision]]:
        """A dial or greeting: connect if need be, then the hello and its answer."""
        me, them = self.members[caller], self.members[callee]
        if them.refused(caller):  # it resets our hello: the candidate came to nothing
            return [(caller, d) for d in me.lost(callee)]
        out: list[tuple[str, Decision]] = []
        link = frozenset((caller, callee))
        if link not in self._connections:
            self._connections.add(link)
            out += [(caller, d) for d in me.connected(callee)]
            out += [(callee, d) for d in them.connected(caller)]
        out += [(callee, d) for d in them.hello(caller, self._status(caller, callee), answer=False)]
        out += [(callee, d) for d in them.discovered(self._found(caller), advertiser=caller)]
        out += [(caller, d) for d in me.hello(callee, self._status(callee, caller), answer=True)]
        out += [(caller, d) for d in me.discovered(self._found(callee), advertiser=callee)]
        return out

    def _found(self, peer: str) -> list[tuple[str, tuple[str, ...]]]:
        if self._installing:
            return []
        return [(p, addrs(p)) for p in self._announced(peer)]

    def _disconnect(self, actor: str, peer: str) -> list[tuple[str, Decision]]:
        link = frozenset((actor, peer))
        if link not in self._connections:
            return []
        self._connections.discard(link)
        out = [(actor, d) for d in self.members[actor].disconnected(peer)]
        if peer in self.members:
            out += [(peer, d) for d in self.members[peer].disconnected(actor)]
        return out

    def _snapshot(self) -> None:
        listed = {peer: set(self.members[peer].neighbours()) for peer in self.order}
        self._neighbours = {
            peer: frozenset(other for other in listed[peer] if peer in listed.get(other, ()))
            for peer in self.order
        }
