"""A node killed mid-round never signs that round twice: it records the round before its first update of
it (`mark_signed`) and, restarted, goes on from the next one (`resume_round`). Re-running the round would
send its neighbours a second envelope for steps they already have: a duplicate, or, once the mixes differ,
an equivocation that costs an honest peer its reputation. Virtual time, a tiny fake model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.checkpoint import last_signed, load_checkpoint, mark_signed, resume_round
from p2pfed.peer.peer import TENSOR, Peer
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema

DIM = 3
ROUNDS = 4
KILLED_IN = 1


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def run(node: Path, *, skip_signed_round: bool) -> dict[str, int]:
    """Two peers; peer 0 (checkpointing into `node`) is killed once its first update of round 1 has
    reached peer 1, and restarted at once. Returns peer 1's rejections."""
    identities = [Identity.for_peer(7, i) for i in range(2)]
    ids = [identity.peer_id for identity in identities]
    memory = MemoryNetwork(seed=7)
    gossip = GossipConfig(rounds=ROUNDS, gossip_steps=2, step_timeout=20.0)

    def peer(i: int, start_round: int = 0, vector: np.ndarray | None = None) -> Peer:
        return Peer(
            index=i, identity=identities[i], transport=memory.add(ids[i], [ids[1 - i]]),
            local=FakeLocal(np.full(DIM, float(i), np.float32)),  # type: ignore[arg-type]
            run_digest=b"r" * 32, schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[1 - i]: 1}, gossip=gossip, defence=Mean(),
            initial=np.ones(DIM, np.float32) if vector is None else vector, seed=7,
            compute=trio.CapacityLimiter(1), start_round=start_round, run_blocking=inline,
            checkpoint_dir=node if i == 0 else None,
        )

    first, other = peer(0), peer(1)

    async def killed_then_restarted() -> None:
        with trio.CancelScope() as alive:
            send = first.send_one

            async def send_then_die(to: str, data: bytes, step: int | None = None) -> None:
                await send(to, data, step)
                if first.round == KILLED_IN:
                    alive.cancel()  # SIGKILL: mid-round 1, once its first update of it is out

            first.send_one = send_then_die  # type: ignore[method-assign]
            await first.run(rounds=ROUNDS)
        memory.disconnect(ids[0])
        state = load_checkpoint(node)
        assert state is not None and state.round == KILLED_IN  # round 1 never finished
        start = resume_round(node, state) if skip_signed_round else state.round
        await peer(0, start_round=start, vector=state.vector).run(rounds=ROUNDS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(killed_then_restarted)
            nursery.start_soon(lambda: other.run(rounds=ROUNDS))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert last_signed(node) == ROUNDS - 1
    return dict(other.rejections)


def test_a_restarted_node_goes_on_after_the_round_it_had_signed_and_its_neighbour_rejects_nothing(
    tmp_path: Path,
) -> None:
    assert run(tmp_path / "skips", skip_signed_round=True) == {}
    # re-running the signed round sends peer 1 the same step again: it is rejected, and counted
    assert sum(run(tmp_path / "reruns", skip_signed_round=False).values()) > 0


def test_resume_round_reads_the_mark_and_ignores_a_file_it_did_not_write(tmp_path: Path) -> None:
    assert resume_round(tmp_path, None) == 0  # a fresh node
    mark_signed(tmp_path, 0)
    assert resume_round(tmp_path, None) == 1  # killed in round 0, before its first checkpoint
    state = load_checkpoint(tmp_path)
    assert state is None
    (tmp_path / "signed.json").write_text("{not json")
    assert last_signed(tmp_path) is None and resume_round(tmp_path, None) == 0


def test_a_peer_a_round_behind_does_not_wait_out_its_steps_for_updates_its_neighbour_sent_before_it_came() -> None:
    """Restarted, we are in round 2; our neighbour signed round 3 already, so its round-2 updates went
    out while we were down. Waiting the step deadline for them would keep us a round behind for good."""
    identities = [Identity.for_peer(8, i) for i in range(2)]
    ids = [identity.peer_id for identity in identities]
    memory = MemoryNetwork(seed=8)
    gossip = GossipConfig(rounds=6, gossip_steps=2, step_timeout=20.0)
    ended: dict[int, float] = {}  # our round -> when it ended (virtual seconds)

    def peer(i: int, start_round: int) -> Peer:
        return Peer(
            index=i, identity=identities[i], transport=memory.add(ids[i], [ids[1 - i]]),
            local=FakeLocal(np.full(DIM, float(i), np.float32)),  # type: ignore[arg-type]
            run_digest=b"b" * 32, schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[1 - i]: 1}, gossip=gossip, defence=Mean(),
            initial=np.ones(DIM, np.float32), seed=8, compute=trio.CapacityLimiter(1), start_round=start_round,
            run_blocking=inline,
            on_round=(lambda r: ended.setdefault(r.round, trio.current_time())) if i == 0 else None,
        )

    behind, ahead = peer(0, start_round=2), peer(1, start_round=3)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: ahead.run(rounds=6))
            await trio.sleep(1.0)  # it is well into round 3 when we come
            nursery.start_soon(lambda: behind.run(rounds=6))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ended[2] < 1.0 + gossip.step_timeout  # round 2 did not wait out its steps (2 x 20 s)
    assert behind.round == 6
