"""Reputation with memory: one score in [0, 1] per neighbour identity, learnt from defence verdicts.

Slow to earn, quick to lose, and new identities start low, so that minting identities (Sybil) buys little
influence. The update rule, per verdict, with the defaults of `ReputationConfig`:

    unknown identity        s = prior                                   (0.2)
    KEPT                    s ← s + gain · (1 − s)                      (gain 0.05)
    DROPPED "harmful on validation"   s ← s − harm_penalty · s          (0.15)
    DROPPED "worse on validation"     s ← s − worse_penalty · s         (0.03: honest peers, now and then)
    DROPPED "amplifies our update"    the same
    DROPPED, any other reason         s ← s − weak_penalty · s          (0.01: far, trimmed, not selected:
                                                                          non-IID peers often are)
    MISSING                 s ← s + missing_rate · (prior − s)          (0.02)
    INVALID                 s ← invalid_factor · s                      (0.25)
    EQUIVOCATED             s ← 0                                       (signed proof of misbehaviour)
    QUARANTINED             no change
    end of each round       s ← s + forget · (prior − s) for every identity not in quarantine   (0.02)

When s falls below `quarantine_below` (0.08) the identity is quarantined for `cooldown · 2^(offences − 1)`
rounds after the current one (3, 6, 12, … capped at `max_cooldown` = 48); on release s is raised to
`probation` (0.1), so it must earn its way back.

**Persistent low trust** (evidence for membership, `low_trust()`): a neighbour that was judged (its update
kept or dropped) in each of `low_trust_rounds` (3) consecutive rounds and ended each of them below the
prior, where a stranger starts. One kept step is worth about twenty weak drops (+0.04 against −0.002 near
the prior), so this means the peer's own checks rejected nearly everything it sent for three rounds, or
found it harmful or worse on balance. A sign-flipped vector that the distance rule drops as "far" every
step settles near 0.1: never quarantined, but never useful, and it holds a neighbour slot. Membership
replaces it; an honest neighbour that is kept now and then, however non-IID, stays above the prior.

What this means (Q = gossip steps per round):
- from the prior, six consecutive "harmful" verdicts quarantine an identity (0.2 · 0.85^6), 31 "worse"
  ones do too;
- an always-kept peer settles near 0.77 (Q = 1), 0.86 (Q = 2) or 0.93 (Q = 5); one harmful verdict costs
  it 15 %, won back to within 0.01 after 35, 21 or 10 rounds of kept updates (memory is long on purpose);
- a new identity needs 11 (Q = 1) or 2 (Q = 5) rounds of kept updates to reach 0.5, where Bristle stops
  treating it as a newcomer.

Defences see the scores as `DefenceInput.reputation` (`snapshot()`); the peer sets senders in quarantine
(`is_quarantined`) aside before its defence runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from p2pfed.robust.reasons import Reason
from p2pfed.types import Outcome, Verdict

DEFAULT_PRIOR = 0.2
DEFAULT_QUARANTINE_BELOW = 0.08  # below the prior, so only evidence (never newness) quarantines


@dataclass(frozen=True)
class ReputationConfig:
    prior: float = DEFAULT_PRIOR  # a new identity's score: low, so fresh identities weigh little
    gain: float = 0.05
    harm_penalty: float = 0.15
    worse_penalty: float = 0.03
    weak_penalty: float = 0.01
    missing_rate: float = 0.02
    invalid_factor: float = 0.25
    forget: float = 0.02  # per round, toward the prior
    quarantine_below: float = DEFAULT_QUARANTINE_BELOW  # Bristle's reputation gate uses it too
    cooldown: int = 3  # rounds, doubled for each repeated offence
    max_cooldown: int = 48
    probation: float = 0.1  # score on release: above the threshold, below the prior
    low_trust_rounds: int = 3  # judged rounds in a row below the prior: evidence for membership


@dataclass
class ReputationTable:
    config: ReputationConfig = field(default_factory=ReputationConfig)
    _scores: dict[str, float] = field(default_factory=dict)
    _until: dict[str, int] = field(default_factory=dict)  # identity -> first round it is free again
    _offences: dict[str, int] = field(default_factory=dict)
    _round: int = 0
    _low_rounds: dict[str, int] = field(default_factory=dict)  # identity -> judged rounds in a row below prior
    _judged: set[str] = field(default_factory=set)  # identities kept or dropped in the current round
    _last_judged: set[str] = field(default_factory=set)  # ... in the last round that ended

    def score(self, identity: str) -> float:
        return self._scores.get(identity, self.config.prior)

    def is_quarantined(self, identity: str) -> bool:
        return self._until.get(identity, -1) > self._round

    def update(self, verdicts: Iterable[Verdict], round: int) -> None:
        """Apply one defence step's verdicts (see the module docstring for the rule)."""
        self._round = max(self._round, round)
        c = self.config
        for v in verdicts:
            if v.outcome is Outcome.QUARANTINED or self.is_quarantined(v.sender):
                continue
            s = self.score(v.sender)
            if v.outcome in (Outcome.KEPT, Outcome.DROPPED):
                self._judged.add(v.sender)
            if v.outcome is Outcome.KEPT:
                s += c.gain * (1.0 - s)
            elif v.outcome is Outcome.DROPPED:
                s -= self._penalty(v.reason) * s
            elif v.outcome is Outcome.MISSING:
                s += c.missing_rate * (c.prior - s)
            elif v.outcome is Outcome.INVALID:
                s *= c.invalid_factor
            elif v.outcome is Outcome.EQUIVOCATED:
                s = 0.0
            self._scores[v.sender] = min(1.0, max(0.0, s))
            if s < c.quarantine_below:
                self._quarantine(v.sender)

    def end_round(self, round: int) -> None:
        """Count persistent low trust, forget a little toward the prior and release quarantines whose
        cooldown has passed."""
        c = self.config
        self._round = max(self._round, round + 1)
        for identity in self._judged:
            low = self.score(identity) < c.prior and not self.is_quarantined(identity)
            self._low_rounds[identity] = self._low_rounds.get(identity, 0) + 1 if low else 0
        self._last_judged, self._judged = self._judged, set()
        for identity in [i for i, until in self._until.items() if until <= self._round]:
            del self._until[identity]
            self._scores[identity] = max(self.score(identity), c.probation)
        for identity, s in self._scores.items():
            if not self.is_quarantined(identity):
                self._scores[identity] = s + c.forget * (c.prior - s)

    def snapshot(self) -> dict[str, float]:
        """identity -> score, for metrics, JSON and `DefenceInput.reputation`."""
        return dict(self._scores)

    def quarantined(self) -> dict[str, int]:
        """identity -> first round it is free again."""
        return {i: u for i, u in self._until.items() if u > self._round}

    def low_trust(self) -> dict[str, int]:
        """identity -> judged rounds in a row it ended below the prior, for those at `low_trust_rounds` or
        more that were judged in the last round (a neighbour still sending: an evicted one is not accused
        again while it is away, so its cooldown runs out) and are not in quarantine (see the module
        docstring): membership's LOW_TRUST evidence."""
        return {
            i: n for i, n in self._low_rounds.items()
            if n >= self.config.low_trust_rounds and i in self._last_judged and not self.is_quarantined(i)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "round": self._round,
            "scores": dict(self._scores),
            "quarantined_until": dict(self._until),
            "offences": dict(self._offences),
            "low_rounds": dict(self._low_rounds),
            "config": asdict(self.config),
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], config: ReputationConfig | None = None
    ) -> ReputationTable:
        """Restore from `to_dict`; an explicit `config` wins over the stored one."""
        if not data:
            return cls(config or ReputationConfig())
        return cls(
            config=config or ReputationConfig(**data.get("config", {})),
            _scores={str(k): float(v) for k, v in data.get("scores", {}).items()},
            _until={str(k): int(v) for k, v in data.get("quarantined_until", {}).items()},
            _offences={str(k): int(v) for k, v in data.get("offences", {}).items()},
            _low_rounds={str(k): int(v) for k, v in data.get("low_rounds", {}).items()},
            _round=int(data.get("round", 0)),
        )

    def _penalty(self, reason: str) -> float:
        c = self.config
        penalties: dict[str, float] = {
            Reason.HARMFUL: c.harm_penalty,
            Reason.WORSE: c.worse_penalty,
            Reason.AMPLIFIES: c.worse_penalty,
        }
        return penalties.get(reason, c.weak_penalty)

    def _quarantine(self, identity: str) -> None:
        c = self.config
        self._offences[identity] = self._offences.get(identity, 0) + 1
        cooldown = min(c.max_cooldown, c.cooldown * 2 ** (self._offences[identity] - 1))
        self._until[identity] = self._round + 1 + cooldown
