"""A peer that starts before its neighbours (in `join`, they are still meeting theirs) must not run its
rounds alone and ahead of them: once they start, their updates would be for rounds it has left, and it
would never mix. After a round in which no neighbour's update arrived it waits for one (`alone_wait_s`),
and that wait is bounded. Virtual time, a tiny fake model."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema

DIM = 3
N = 3  # a complete graph
ROUNDS = 6
STEP_TIMEOUT = 30.0
LATE_START = 1000.0  # longer than peer 0's whole run alone: 6 rounds x 2 steps x 30 s
ALONE_WAIT = 2000.0


def run(*, alone_wait_s: float, others_start: bool = True) -> tuple[list[Peer], list[RoundReport], float]:
    """Peer 0 starts at once; peers 1 and 2 start LATE_START seconds later (or never)."""
    identities = [Identity.for_peer(5, i) for i in range(N)]
    ids = [identity.peer_id for identity in identities]
    memory = MemoryNetwork(seed=5)
    gossip = GossipConfig(rounds=ROUNDS, gossip_steps=2, step_timeout=STEP_TIMEOUT)
    targets = np.random.default_rng(2).normal(size=(N, DIM)).astype(np.float32)
    reports: list[RoundReport] = []

    async def inline(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)

    peers = [
        Peer(
            index=i,
            identity=identities[i],
            transport=memory.add(ids[i], [ids[j] for j in range(N) if j != i]),
            local=FakeLocal(targets[i]),  # type: ignore[arg-type]
            run_digest=b"a" * 32,
            schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[j]: N - 1 for j in range(N) if j != i},
            gossip=gossip,
            defence=Mean(),
            initial=np.zeros(DIM, np.float32),
            seed=5,
            compute=trio.CapacityLimiter(1),
            on_round=reports.append,
            run_blocking=inline,
            alone_wait_s=alone_wait_s,
        )
        for i in range(N)
    ]
    finished_at = 0.0

    async def first() -> None:
        nonlocal finished_at
        await peers[0].run(rounds=ROUNDS)
        finished_at = trio.current_time()

    async def late(peer: Peer) -> None:
        await trio.sleep(LATE_START)  # virtual time: the neighbours are still meeting theirs
        await peer.run(rounds=ROUNDS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            if others_start:
                for peer in peers[1:]:
                    nursery.start_soon(late, peer)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return peers, reports, finished_at


def kept_by_round(reports: list[RoundReport], index: int) -> list[int]:
    return [r.outcomes.get("kept", 0) for r in sorted(reports, key=lambda r: r.round) if r.index == index]


@pytest.mark.parametrize("alone_wait_s", [0.0, ALONE_WAIT])
def test_a_peer_that_starts_first_waits_for_its_neighbours_and_then_mixes_with_them(alone_wait_s: float) -> None:
    peers, reports, _ = run(alone_wait_s=alone_wait_s)
    kept = kept_by_round(reports, 0)
    assert len(kept) == ROUNDS and kept[0] == 0  # round 0 ran alone either way
    spread = max(float(np.linalg.norm(p.vector - peers[1].vector)) for p in peers)
    if alone_wait_s == 0:  # without the wait it ran every round alone, ahead of everyone
        assert sum(kept) == 0
        assert spread > 0.5
    else:
        assert all(k == 2 * (N - 1) for k in kept[1:]), kept  # both neighbours, both steps, every later round
        assert all(k > 0 for i in (1, 2) for k in kept_by_round(reports, i))
        assert spread < 0.1, spread  # one network: the three agree


def test_the_wait_is_bounded_a_peer_whose_neighbours_never_start_still_finishes() -> None:
    peers, reports, finished_at = run(alone_wait_s=ALONE_WAIT, others_start=False)
    assert peers[0].round == ROUNDS and sum(kept_by_round(reports, 0)) == 0
    per_round = 2 * STEP_TIMEOUT
    assert finished_at == pytest.approx(ROUNDS * per_round + (ROUNDS - 1) * ALONE_WAIT)


def test_one_neighbour_signing_ahead_before_the_others_speak_does_not_move_a_fresh_peer() -> None:
    peers, _, _ = run(alone_wait_s=0.0, others_start=False)  # a finished network; its state is reused
    peer = peers[0]
    peer.round = 0
    liar, *honest = list(peer.neighbour_degrees)
    peer.intake.latest_round = {liar: 40}
    peer.catch_up()
    assert peer.round == 0  # one of two neighbours is not most of them
    peer.intake.latest_round |= {honest[0]: 3}
    peer.catch_up()
    assert peer.round == 3  # the lower of 3 and 40
