"""Who our neighbours are: a pure state machine (sans-I/O), fed events, returning decisions.

The transport feeds it what it sees (candidates from discovery, connections, hellos and presence
announcements, evidence from the defence, the round's tick) and carries out what it returns (dial,
evict, refuse, unlink). Nothing here does I/O, so every rule is unit-tested without a network.

The rules, toward `target_degree` neighbours:
- **Candidate pool, bounded per advertiser.** Every candidate is credited to whoever told us about it
  (the peer whose presence listed it, or "bootstrap" / "mdns"). No advertiser holds more than
  `advertiser_share` of `pool_size`: an attacker that advertises only its Sybils gets at most that share.
- **Uniformly sampled dials.** Free slots are filled by candidates drawn uniformly from the pool (with the
  numpy Generator passed in), never in the order an advertiser chose.
- **Reserved slots** (Brahms, Basalt): `sampled_share` of the slots only ever go to peers we chose;
  peers that dial us (inbound) fill the rest. An inbound peer turned away for want of an open slot joins
  the pool as a candidate of one advertiser, "inbound": together, strangers who dial us hold at most
  one advertiser's share of what the reserved slots are sampled from. A flood of connections cannot
  eclipse us, and a small network still forms a complete graph (the hub greets those it turned away).
- **Evict only for evidence** (the defence's quarantine or persistent low trust), at most
  `max_rewires_per_round` per round; an evicted or reported identity is refused for `cooldown_rounds`.
  Being dissimilar or non-IID is not evidence: nothing here sees the updates.
- **One-sided links**: a peer that is full and does not list us is not our neighbour (it would never
  send us an update, and every gossip step would wait out its deadline for one). A neighbour whose
  announcement does not list us is greeted again: the answer to a fresh hello settles the link both ways.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np

log = logging.getLogger(__name__)

Addrs = tuple[str, ...]
BOOTSTRAP = "bootstrap"  # advertiser of the candidates the operator configured
MDNS = "mdns"  # advertiser of the candidates found on the local network
INBOUND = "inbound"  # advertiser of the peers that dialled us when only reserved slots were left


class Action(Enum):
    DIAL = "dial"  # connect to `peer` at `addrs`; its hello makes it a neighbour
    GREET = "greet"  # `peer` is connected already: say hello (again), now with room for it
    EVICT = "evict"  # disconnect `peer` for evidence; refused until its cooldown ends
    REFUSE = "refuse"  # `peer` is in cooldown: disconnect it, do not greet it
    UNLINK = "unlink"  # `peer` is not (or no longer) a neighbour; the connection may stay


@dataclass(frozen=True)
class Decision:
    action: Action
    peer: str
    reason: str = ""
    addrs: Addrs = ()


class EvidenceKind(Enum):
    QUARANTINED = "quarantined"  # the defence's reputation put the identity in quarantine
    LOW_TRUST = "low_trust"  # its trust stayed low for many rounds (the reporter decides how many)


@dataclass(frozen=True)
class Evidence:
    kind: EvidenceKind
    reason: str  # for the log: what the defence saw


@dataclass(frozen=True)
class Status:
    """What a run member told us about itself (hello or presence announcement)."""

    degree: int  # how many neighbours it lists
    full: bool  # it takes no more neighbours
    lists_us: bool  # we are among the neighbours it lists
    addrs: Addrs = ()


@dataclass(frozen=True)
class MembershipRules:
    sampled_share: float = 0.25  # of the slots, reserved for peers we dialled (none below 4 slots)
    advertiser_share: float = 0.25  # of the candidate pool, at most this much from one advertiser
    pool_size: int = 64  # candidates remembered
    max_rewires_per_round: int = 2  # evictions per round: evidence in bursts never empties our view
    cooldown_rounds: int = 10  # an evicted identity is refused this many rounds


@dataclass
class _Neighbour:
    dialled: bool  # we chose it (it holds a reserved slot if it needs one)
    degree: int
    addrs: Addrs


class Membership:
    """Our neighbour set. Every event method returns the decisions the transport must carry out."""

    def __init__(
        self,
        local_id: str,
        target_degree: int,
        rng: np.random.Generator,
        rules: MembershipRules = MembershipRules(),
    ) -> None:
        self.local_id = local_id
        self.target_degree = target_degree
        self.rules = rules
        self._rng = rng
        # slots that peers dialling us never get
        self.reserved = math.floor(target_degree * rules.sampled_share)
        self.advertiser_quota = max(1, math.floor(rules.pool_size * rules.advertiser_share))
        self._pool: dict[str, tuple[Addrs, str]] = {}  # candidate -> (addrs, advertiser)
        self._held: Counter[str] = Counter()  # advertiser -> its candidates in the pool (kept in step)
        self._neighbours: dict[str, _Neighbour] = {}
        self._pending: set[str] = set()  # dialled by us, no hello yet
        self._greeted: dict[str, Status] = {}  # pending peers' own hellos, until they answer ours
        self._connected: set[str] = set()
        self._cooldown: dict[str, int] = {}  # identity -> first round it is no longer refused
        self._condemned: dict[str, Evidence] = {}  # neighbours to evict when the budget allows
        self._regreeted: set[str] = set()  # neighbours greeted again this round (`presence`)
        self._round = -1
        self._rewires_left = rules.max_rewires_per_round

    # ------------------------------------------------------------------ queries
    def neighbours(self) -> list[str]:
        return list(self._neighbours)

    def settling(self, peer: str) -> bool:
        """Whether `peer` is a neighbour, or a dial or hello with it is under way."""
        return peer in self._neighbours or peer in self._pending or peer in self._greeted

    def degree_of(self, peer: str) -> int | None:
        """`peer`'s degree as it last told us (None: not a neighbour)."""
        neighbour = self._neighbours.get(peer)
        return None if neighbour is None else neighbour.degree

    def addrs_of(self, peer: str) -> Addrs:
        neighbour = self._neighbours.get(peer)
        return () if neighbour is None else neighbour.addrs

    def pool(self) -> dict[str, str]:
        """candidate -> the advertiser it is credited to."""
        return {peer: advertiser for peer, (_, advertiser) in self._pool.items()}

    def connected_peers(self) -> set[str]:
        return set(self._connected)

    def refused(self, peer: str) -> bool:
        return self._cooldown.get(peer, -1) > self._round

    def full_for(self, peer: str | None = None) -> bool:
        """Whether we take no more neighbours, as we tell `peer` (None: everyone). A peer we dialled
        always finds room: it holds one of our slots already."""
        if peer is not None and (peer in self._pending or peer in self._neighbours):
            return False
        inbound = sum(not n.dialled for n in self._neighbours.values())
        return (
            len(self._neighbours) >= self.target_degree
            or inbound >= self.target_degree - self.reserved
        )

    # ------------------------------------------------------------------ discovery
    def discovered(self, peers: Iterable[tuple[str, Addrs]], *, advertiser: str) -> list[Decision]:
        """Candidates `advertiser` told us about; returns the dials that fill free slots. An identity
        in cooldown advertises nothing."""
        if self.refused(advertiser):
            return []
        for peer, addrs in peers:
            self._add_candidate(peer, addrs, advertiser)
        return self._fill()

    def _add_candidate(self, peer: str, addrs: Addrs, advertiser: str) -> None:
        if peer in self._pool:
            return  # credited to whoever told us first
        if peer == self.local_id or peer in self._neighbours or self.refused(peer):
            return
        if not addrs and advertiser != INBOUND:  # an inbound peer is greeted on its connection
            return
        held = self._held
        if held[advertiser] >= self.advertiser_quota:
            return
        if len(self._pool) >= self.rules.pool_size:
            # make room by dropping one of the most represented advertiser's candidates
            if max(held.values()) <= held[advertiser] + 1:  # the common case, checked cheaply first
                return
            top, _ = max(held.items(), key=lambda item: (item[1], item[0]))
            theirs = sorted(p for p, (_, adv) in self._pool.items() if adv == top)
            self._forget(theirs[int(self._rng.integers(len(theirs)))])
        self._pool[peer] = (addrs, advertiser)
        held[advertiser] += 1

    def _forget(self, peer: str) -> None:
        """Drop `peer` from the candidate pool (if there)."""
        entry = self._pool.pop(peer, None)
        if entry is not None:
            self._held[entry[1]] -= 1
            if not self._held[entry[1]]:
                del self._held[entry[1]]

    def dialling(self, peer: str) -> None:
        """The operator dials `peer` itself (e.g. `connect(addr)`): its link counts as ours."""
        if peer != self.local_id and peer not in self._connected:
            self._pending.add(peer)

    def lost(self, peer: str) -> list[Decision]:
        """A dial or a greeting came to nothing: forget the candidate, try another."""
        self._pending.discard(peer)
        self._forget(peer)
        return self._fill()

    # ------------------------------------------------------------------ connections
    def connected(self, peer: str) -> list[Decision]:
        self._connected.add(peer)
        if self.refused(peer):
            return [Decision(Action.REFUSE, peer, "in cooldown")]
        return []

    def disconnected(self, peer: str) -> list[Decision]:
        self._connected.discard(peer)
        self._pending.discard(peer)
        self._greeted.pop(peer, None)
        self._condemned.pop(peer, None)
        self._regreeted.discard(peer)
        if self._neighbours.pop(peer, None) is not None:
            log.debug("%s: neighbour %s left", self.local_id[-6:], peer[-6:])
        return self._fill()

    def hello(self, peer: str, status: Status, *, answer: bool = True) -> list[Decision]:
        """A run member greeted us (or `answer`ed our hello): make it a neighbour if the rules allow.
        A peer we dialled becomes one only on its answer, which it sends once it has decided about us:
        so we never count it before it counts us (its own greeting is kept in case ours fails)."""
        if self.refused(peer):
            return [Decision(Action.REFUSE, peer, "in cooldown")]
        dialled = peer in self._pending
        if dialled and not answer:
            self._greeted[peer] = status
            return []
        self._greeted.pop(peer, None)
        self._pending.discard(peer)
        self._forget(peer)
        if status.full and not status.lists_us:
            return [*self._unlink(peer), *self._fill()]
        neighbour = self._neighbours.get(peer)
        if neighbour is not None:
            neighbour.degree, neighbour.addrs = status.degree, status.addrs
            return []
        if (not dialled and self.full_for(None)) or len(self._neighbours) >= self.target_degree:
            # no room for it now: our presence says so, and it does not count us either; a reserved
            # slot may still sample it later
            if not dialled:
                self._add_candidate(peer, status.addrs, INBOUND)
            return self._fill()
        self._neighbours[peer] = _Neighbour(dialled, status.degree, status.addrs)
        log.debug("%s: new neighbour %s", self.local_id[-6:], peer[-6:])
        return self._fill()

    def hello_failed(self, peer: str) -> list[Decision]:
        """Our hello to `peer` got no answer: a peer we dialled that greeted us is judged on that."""
        status = self._greeted.pop(peer, None)
        if peer not in self._pending:
            return []
        return self.hello(peer, status) if status is not None else self.lost(peer)

    def presence(self, peer: str, status: Status) -> list[Decision]:
        """A neighbour's announcement: refresh its degree, and settle a link it does not list.

        An announcement travels the gossip mesh and may predate the hellos that made us neighbours (or
        follow a restart that lost them): on its own it proves nothing about now. So a neighbour that does
        not list us is greeted again, once a round, and its answer settles the link both ways: it counts us
        (it had room), or it answers full and we unlink it. Only a second such announcement in the same
        round, from a full peer, unlinks it directly (its answers are not getting through)."""
        neighbour = self._neighbours.get(peer)
        if neighbour is None:
            return []
        neighbour.degree = status.degree
        if status.lists_us:
            return []
        if peer not in self._regreeted:
            self._regreeted.add(peer)
            return [Decision(Action.GREET, peer, "its announcement does not list us")]
        if status.full:
            return [*self._unlink(peer), *self._fill()]
        return []

    def _unlink(self, peer: str) -> list[Decision]:
        was_neighbour = self._neighbours.pop(peer, None) is not None
        if was_neighbour:
            log.info("%s: %s has no room for us: not a neighbour", self.local_id[-6:], peer[-6:])
        return [Decision(Action.UNLINK, peer, "full, and does not list us")]

    # ------------------------------------------------------------------ defence and rounds
    def evidence(self, peer: str, evidence: Evidence) -> list[Decision]:
        """The defence's verdict on `peer`: refuse it for the cooldown, evict it within the budget."""
        if peer == self.local_id:
            return []
        self._cooldown[peer] = self._round + 1 + self.rules.cooldown_rounds
        self._forget(peer)
        self._pending.discard(peer)
        if peer in self._neighbours:
            self._condemned[peer] = evidence
            return [*self._evict_condemned(), *self._fill()]
        if peer in self._connected:
            return [Decision(Action.REFUSE, peer, f"{evidence.kind.value}: {evidence.reason}")]
        return []

    def tick(self, round: int) -> list[Decision]:
        """A new round: cooldowns run down, the rewiring budget refills, queued evictions proceed."""
        if round <= self._round:
            return []
        self._round = round
        self._rewires_left = self.rules.max_rewires_per_round
        self._regreeted.clear()
        for peer in [p for p, until in self._cooldown.items() if until <= round]:
            del self._cooldown[peer]
        return [*self._evict_condemned(), *self._fill()]

    def _evict_condemned(self) -> list[Decision]:
        decisions = []
        for peer in sorted(self._condemned):
            if self._rewires_left <= 0:
                break
            evidence = self._condemned.pop(peer)
            if peer not in self._neighbours:  # it left or unlinked us meanwhile: nothing to evict
                continue
            self._rewires_left -= 1
            del self._neighbours[peer]
            reason = f"{evidence.kind.value}: {evidence.reason}"
            log.info("%s: evicting %s (%s)", self.local_id[-6:], peer[-6:], reason)
            decisions.append(Decision(Action.EVICT, peer, reason))
        return decisions

    def _fill(self) -> list[Decision]:
        """Dial uniformly sampled candidates into the free slots."""
        decisions: list[Decision] = []
        free = self.target_degree - len(self._neighbours) - len(self._pending)
        if free <= 0:
            return decisions
        # connected peers are greeted only if they asked to join us (the rest know us already)
        asked = {p for p, (_, adv) in self._pool.items() if adv == INBOUND}
        busy = self._neighbours.keys() | self._pending | (self._connected - asked)
        eligible = sorted(p for p in self._pool if p not in busy and not self.refused(p))
        count = min(free, len(eligible))
        if count == 0:
            return decisions
        for index in self._rng.choice(len(eligible), size=count, replace=False):
            peer = eligible[int(index)]
            self._pending.add(peer)
            action = Action.GREET if peer in self._connected else Action.DIAL
            decisions.append(Decision(action, peer, addrs=self._pool[peer][0]))
        return decisions
