"""A peer restarted near the end of a run, when its neighbours have finished: they stay up
(`Peer.serve_late_neighbours`, `join --linger`) and answer it with their last round's updates, so that it
catches up and finishes with them instead of alone. Virtual time, a tiny fake model."""

from __future__ import annotations

import numpy as np
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema

DIM = 3
N = 4  # a complete graph
ROUNDS = 8
DIES_AT = 3  # peer 0 runs rounds 0-2, is down while the others finish, and restarts from round 3
STEP_TIMEOUT = 30.0
LINGER = 600.0


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def scenario(
    linger: float,
) -> tuple[list[RoundReport], list[tuple[float, float]], float, np.ndarray, np.ndarray]:
    """Returns the reports, when each finished peer lingered, when the restarted peer finished,
    its final vector, and the finished peers' mean vector."""
    identities = [Identity.for_peer(5, i) for i in range(N)]
    ids = [identity.peer_id for identity in identities]
    memory = MemoryNetwork(seed=5)
    gossip = GossipConfig(rounds=ROUNDS, gossip_steps=2, step_timeout=STEP_TIMEOUT)
    targets = np.random.default_rng(2).normal(size=(N, DIM)).astype(np.float32)
    reports: list[RoundReport] = []

    def peer(i: int, start_round: int = 0) -> Peer:
        return Peer(
            index=i,
            identity=identities[i],
            transport=memory.add(ids[i], [ids[j] for j in range(N) if j != i]),
            local=FakeLocal(targets[i]),  # type: ignore[arg-type]
            run_digest=b"l" * 32,
            schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[j]: N - 1 for j in range(N) if j != i},
            gossip=gossip,
            defence=Mean(),
            initial=np.ones(DIM, np.float32),
            seed=5,
            compute=trio.CapacityLimiter(1),
            on_round=reports.append,
            start_round=start_round,
            run_blocking=inline,
        )

    peers = [peer(i) for i in range(N)]
    lingered: list[tuple[float, float]] = []  # (from, until) of each finished peer's lingering
    restarted_done: list[float] = []
    restarted: list[Peer] = []

    async def finish_and_linger(p: Peer) -> None:
        await p.run(rounds=ROUNDS)
        since = trio.current_time()
        await p.serve_late_neighbours(linger)
        lingered.append((since, trio.current_time()))

    async def dies_and_restarts() -> None:
        await peers[0].run(rounds=DIES_AT)
        memory.disconnect(ids[0])  # SIGKILL: gone, its checkpoint says round 3
        for p in peers[1:]:
            await p.finished.wait()  # it comes back only after everyone else has finished
        again = peer(0, start_round=DIES_AT)
        again.vector = peers[0].vector.copy()
        restarted.append(again)
        await again.run(rounds=ROUNDS)
        restarted_done.append(trio.current_time())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for p in peers[1:]:
                nursery.start_soon(finish_and_linger, p)
            nursery.start_soon(dies_and_restarts)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    others = np.mean([p.vector for p in peers[1:]], axis=0)
    return reports, lingered, restarted_done[0], restarted[0].vector, others


def test_finished_peers_answer_a_late_restart_which_catches_up_and_mixes_with_them() -> None:
    reports, lingered, done, vector, others = scenario(LINGER)
    late = [r for r in reports if r.index == 0 and r.round >= DIES_AT]
    assert [r.round for r in late][-1] == ROUNDS - 1  # it finished the run
    assert late[-1].outcomes.get("kept", 0) == 2 * (N - 1)  # its last round mixed every neighbour, both steps
    assert len(late) < ROUNDS - DIES_AT  # it skipped to the network's last round rather than run alone
    assert all(until <= done for _, until in lingered)  # they stayed until it had what it needed ...
    # ... and left once it had signed the last round (a step deadline or two), not at the linger deadline
    assert all(until - since <= 4 * STEP_TIMEOUT < LINGER for since, until in lingered)
    alone_reports, _, _, alone, _ = scenario(0.0)
    alone_last = [r for r in alone_reports if r.index == 0][-1]
    assert alone_last.outcomes.get("kept", 0) == 0  # without lingering nobody is left to mix with
    assert np.linalg.norm(vector - others) < 0.5 * np.linalg.norm(alone - others)


def test_a_peer_with_nobody_behind_it_does_not_linger() -> None:
    async def main() -> float:
        identities = [Identity.for_peer(6, i) for i in range(2)]
        ids = [identity.peer_id for identity in identities]
        memory = MemoryNetwork(seed=6)
        gossip = GossipConfig(rounds=2, gossip_steps=1, step_timeout=STEP_TIMEOUT)
        peers = [
            Peer(index=i, identity=identities[i], transport=memory.add(ids[i], [ids[1 - i]]),
                 local=FakeLocal(np.zeros(DIM, np.float32)),  # type: ignore[arg-type]
                 run_digest=b"m" * 32, schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
                 neighbour_degrees={ids[1 - i]: 1}, gossip=gossip, defence=Mean(),
                 initial=np.ones(DIM, np.float32), seed=6, compute=trio.CapacityLimiter(1), run_blocking=inline)
            for i in range(2)
        ]
        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(lambda p=p: p.run(rounds=2))
        started = trio.current_time()
        for p in peers:
            await p.serve_late_neighbours(LINGER)
        return trio.current_time() - started

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 0.0
