"""The churn supervisor's schedule: a kill waits a random moment into the peer's next round, and is
dropped if, by then, the peer has reached the calm rounds at the end (a restarted peer would have nobody
left to finish with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2pfed.sims.processes import CALM_ROUNDS, _Peer, _Supervisor

ROUNDS = 15


class ScriptedPeer(_Peer):
    """A peer whose status is whatever round the test sets, and whose restarts are only counted."""

    def __init__(self, node: Path) -> None:
        super().__init__(index=0, node=node, command=[])
        self.done = 0
        self.restarts = 0

    def status(self) -> dict[str, int]:
        return {"round": self.done}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def supervisor(peer: ScriptedPeer, clock: Clock) -> _Supervisor:
    sup = _Supervisor([peer], rounds=ROUNDS, churn=1.0, rng=np.random.default_rng(0), clock=clock)
    sup._restart = lambda p: setattr(p, "restarts", p.restarts + 1)  # type: ignore[method-assign]
    return sup


def test_a_kill_lands_within_the_round_it_was_scheduled_for(tmp_path: Path) -> None:
    peer, clock = ScriptedPeer(tmp_path), Clock()
    sup = supervisor(peer, clock)
    peer.done = 5
    clock.now = 10.0  # round 4 took ten seconds
    sup._churn(peer)
    clock.now = 21.0  # one round's time later the kill is due, whatever moment the rng chose
    sup._churn(peer)
    assert peer.restarts == 1


def test_a_kill_is_dropped_when_the_peer_reached_the_calm_rounds_before_it_was_due(tmp_path: Path) -> None:
    peer, clock = ScriptedPeer(tmp_path), Clock()
    sup = supervisor(peer, clock)
    sup._seen[peer.index] = (ROUNDS - CALM_ROUNDS - 2, 0.0)
    peer.done = ROUNDS - CALM_ROUNDS - 1  # the last round churn may hit; the one before took ten seconds
    clock.now = 10.0
    sup._churn(peer)  # the kill is due up to ten seconds on
    for done in range(ROUNDS - CALM_ROUNDS, ROUNDS):  # rounds sped up to a second each
        clock.now += 1.0
        peer.done = done
        sup._churn(peer)
    clock.now = 100.0
    sup._churn(peer)
    assert peer.restarts == 0
