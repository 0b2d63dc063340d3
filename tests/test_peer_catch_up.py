"""Catching up with the network's round: from neighbours' signed updates only, the same way for a fresh
late joiner (the daemon's `join_late`) and for a peer that fell behind. Virtual time, a tiny fake model."""

from __future__ import annotations

import numpy as np
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.config import GossipConfig
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema

DIM = 3
N = 4  # a complete graph: every peer has three neighbours
NETWORK_ROUND = 5
ROUNDS = 8


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


class FarFuture(Behaviour):
    """Signs its updates for a round far ahead of the network's: a lie about where the network is."""

    name = "far_future"

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        return Outgoing(vector=ctx.own, round=ctx.round + 40)


class Recording(Mean):
    """Mean, remembering the round and the weight of our own vector of every mix."""

    def __init__(self) -> None:
        self.mixes: list[tuple[int, float]] = []

    def __call__(self, inp):  # type: ignore[no-untyped-def]
        self.mixes.append((inp.round, float(inp.mixing_weights[0])))
        return super().__call__(inp)


def adopted_then_mixed(mixes: list[tuple[int, float]]) -> bool:
    """Every mix of the first round took the neighbours' model (own weight 0), and every later one
    averaged ours in as usual."""
    first = [w for rnd, w in mixes if rnd == NETWORK_ROUND]
    later = [w for rnd, w in mixes if rnd > NETWORK_ROUND]
    return len(first) == 2 and all(w == 0 for w in first) and bool(later) and all(w > 0 for w in later)


def network(
    liar: bool,
    defence: Mean | None = None,
    *,
    start: int = 0,
    join_late: bool = True,
    mixed_through: int | None = None,
) -> tuple[list[Peer], list[RoundReport]]:
    """Peers 1-3 at NETWORK_ROUND with the network's model; peer 0 at round `start`, from its own
    (`mixed_through`: it was restarted from a checkpoint of that round)."""
    identities = [Identity.for_peer(3, i) for i in range(N)]
    ids = [identity.peer_id for identity in identities]
    memory = MemoryNetwork(seed=3)
    gossip = GossipConfig(rounds=ROUNDS, gossip_steps=2, step_timeout=30.0)
    targets = np.random.default_rng(1).normal(size=(N, DIM)).astype(np.float32)
    reports: list[RoundReport] = []
    peers = [
        Peer(
            index=i,
            identity=identities[i],
            transport=memory.add(ids[i], [ids[j] for j in range(N) if j != i]),
            local=FakeLocal(targets[i]),  # type: ignore[arg-type]
            run_digest=b"c" * 32,
            schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[j]: N - 1 for j in range(N) if j != i},
            gossip=gossip,
            defence=defence if defence is not None and i == 0 else Mean(),
            initial=np.ones(DIM, np.float32),
            seed=3,
            compute=trio.CapacityLimiter(1),
            behaviour=FarFuture() if liar and i == 3 else None,
            on_round=reports.append,
            start_round=start if i == 0 else NETWORK_ROUND,
            mixed_through=mixed_through if i == 0 else None,
            run_blocking=inline,
        )
        for i in range(N)
    ]
    for peer in peers[1:]:
        peer.vector = np.zeros(DIM, np.float32)  # the network's model, five rounds in

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for peer in peers[1:]:
                nursery.start_soon(lambda p=peer: p.run(rounds=ROUNDS))
            nursery.start_soon(lambda: peers[0].run(rounds=ROUNDS, join_late=join_late))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return peers, reports


def test_a_fresh_late_joiner_starts_at_the_signed_round_and_adopts_its_neighbours_model() -> None:
    defence = Recording()
    peers, reports = network(liar=False, defence=defence)
    late = sorted(r.round for r in reports if r.index == 0)
    assert late == list(range(NETWORK_ROUND, ROUNDS))  # it never ran rounds 0-4 on its own
    assert peers[0].round == ROUNDS
    assert len(defence.mixes) == 2 * (ROUNDS - NETWORK_ROUND)
    assert adopted_then_mixed(defence.mixes)


def test_one_neighbour_signing_a_far_future_round_does_not_move_the_late_joiner() -> None:
    _, reports = network(liar=True)
    late = sorted(r.round for r in reports if r.index == 0)
    assert late == list(range(NETWORK_ROUND, ROUNDS))  # the median of 5, 5 and 45 is 5


def test_a_peer_whose_rounds_went_unmixed_adopts_its_neighbours_model_when_it_catches_up() -> None:
    # Peer 0 comes back at round 2 (a restart) while the network is at round 5. Its round 2 mixes nothing
    # (the neighbours' updates are for round 5), so at round 3 it is 2 rounds behind, within the round
    # window, but its model last took the neighbours' in round 1: 3 rounds stale. Averaging it in would
    # leave it one round's drift from the others at the end.
    defence = Recording()
    peers, reports = network(liar=False, defence=defence, start=2, join_late=False)
    assert sorted(r.round for r in reports if r.index == 0) == [2, *range(NETWORK_ROUND, ROUNDS)]
    assert adopted_then_mixed([(rnd, w) for rnd, w in defence.mixes if rnd >= NETWORK_ROUND])


def test_a_restarted_peer_that_missed_a_round_adopts_its_neighbours_model_for_its_first_round() -> None:
    # Restarted at the network's round from a checkpoint one round older (it had skipped a signed round,
    # or was down a round): not behind, so no catch-up, but its model missed the neighbours' last mix.
    defence = Recording()
    network(liar=False, defence=defence, start=NETWORK_ROUND, join_late=False, mixed_through=NETWORK_ROUND - 1)
    assert adopted_then_mixed(defence.mixes)


def test_a_restarted_peer_whose_checkpoint_is_current_and_a_peer_that_was_never_down_keep_their_own_model() -> None:
    for mixed_through in (NETWORK_ROUND, None):  # restarted between rounds; never restarted
        defence = Recording()
        network(liar=False, defence=defence, start=NETWORK_ROUND, join_late=False, mixed_through=mixed_through)
        assert defence.mixes and all(w > 0 for _, w in defence.mixes), mixed_through


def test_a_restarted_peer_whose_first_round_mixed_nothing_adopts_when_it_catches_up_inside_the_window() -> None:
    # Restarted at round 3 from a round-3 checkpoint, the network at round 5: round 3 mixes nothing (the
    # neighbours' updates are for round 5), then it catches up by 2 rounds, inside the round window. Its
    # model last took the neighbours' before its checkpoint: it adopts theirs.
    defence = Recording()
    network(liar=False, defence=defence, start=3, join_late=False, mixed_through=3)
    assert adopted_then_mixed([(rnd, w) for rnd, w in defence.mixes if rnd >= NETWORK_ROUND])
