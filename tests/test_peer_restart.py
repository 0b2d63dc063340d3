"""A node killed mid-round never signs that round twice. Each of its envelopes is on disk before it is
sent (`save_sealed`); restarted, it resumes the round at the last step it sent, with the same bytes
(`resume_point`), and its neighbours, seeing that repeat, send it their updates of the round again.
Re-running the round instead could send its neighbours a second, different envelope for steps they
already have (training or mixing that came out otherwise): an equivocation that costs an honest peer its
reputation. Virtual time, a tiny fake model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.checkpoint import (
    ResumePoint,
    last_signed,
    load_checkpoint,
    mark_signed,
    resume_point,
    save_sealed,
)
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema

DIM = 3
ROUNDS = 4
STEP_TIMEOUT = 20.0


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


class Restart:
    """Two peers; peer 0 (checkpointing into `node`) is killed once its first update of round `killed_in`
    has reached peer 1, and restarted `down_s` (virtual) seconds later. `mode`: "resume" (the daemon's
    way) or "skip" (go on after the signed round, as before sealed envelopes). Peer 1 serves late neighbours after its last round, as `join` does."""

    def __init__(self, node: Path, *, killed_in: int, mode: str, down_s: float = 0.0) -> None:
        self.identities = [Identity.for_peer(7, i) for i in range(2)]
        self.ids = [identity.peer_id for identity in self.identities]
        self.memory = MemoryNetwork(seed=7)
        self.gossip = GossipConfig(rounds=ROUNDS, gossip_steps=2, step_timeout=STEP_TIMEOUT)
        self.node, self.killed_in, self.mode, self.down_s = node, killed_in, mode, down_s
        self.reports: list[RoundReport] = []  # peer 0's, from both its lives
        first, self.other = self.peer(0), self.peer(1)
        trio.run(self.main, first, clock=trio.testing.MockClock(autojump_threshold=0))

    def peer(self, i: int, start_round: int = 0, vector: np.ndarray | None = None, **resumed: object) -> Peer:
        return Peer(
            index=i, identity=self.identities[i], transport=self.memory.add(self.ids[i], [self.ids[1 - i]]),
            local=FakeLocal(np.full(DIM, float(i), np.float32)),  # type: ignore[arg-type]
            run_digest=b"r" * 32, schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={self.ids[1 - i]: 1}, gossip=self.gossip, defence=Mean(),
            initial=np.ones(DIM, np.float32) if vector is None else vector, seed=7,
            compute=trio.CapacityLimiter(1), start_round=start_round, run_blocking=inline,
            checkpoint_dir=self.node if i == 0 else None, on_round=self.reports.append if i == 0 else None,
            **resumed,  # type: ignore[arg-type]
        )

    async def main(self, first: Peer) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.killed_then_restarted, first)
            nursery.start_soon(self.other_peer)

    async def other_peer(self) -> None:
        await self.other.run(rounds=ROUNDS)
        await self.other.serve_late_neighbours(120.0)

    async def killed_then_restarted(self, first: Peer) -> None:
        with trio.CancelScope() as alive:
            send = first.send_one

            async def send_then_die(to: str, data: bytes, step: int | None = None) -> None:
                await send(to, data, step)
                if first.round == self.killed_in:
                    alive.cancel()  # SIGKILL: mid-round, once its first update of the round is out

            first.send_one = send_then_die  # type: ignore[method-assign]
            await first.run(rounds=ROUNDS)
        self.memory.disconnect(self.ids[0])
        await trio.sleep(self.down_s)
        state = load_checkpoint(self.node)
        assert state is not None and state.round == self.killed_in  # the round never finished
        point = resume_point(self.node, state)
        if self.mode == "resume":
            self.restarted = self.peer(0, point.round, state.vector, mixed_through=state.round, resumed=point)
        else:
            self.restarted = self.peer(0, point.round + 1, state.vector, mixed_through=state.round)
        await self.restarted.run(rounds=ROUNDS)

    @property
    def rounds_run(self) -> list[int]:
        return sorted(r.round for r in self.reports)

    @property
    def gap(self) -> float:
        """How far peer 0 ends from peer 1."""
        return float(np.linalg.norm(self.restarted.vector - self.other.vector))


def test_a_node_killed_mid_round_resumes_that_round_and_its_neighbour_sees_only_a_duplicate(tmp_path: Path) -> None:
    run = Restart(tmp_path / "resume", killed_in=1, mode="resume")
    assert run.rounds_run == [0, 1, 2, 3]  # round 1 was finished by the second life
    assert dict(run.other.rejections) == {"duplicate": 1}  # the step-0 envelope, sent again: same bytes
    assert run.gap < 1e-6  # both mixed every step of every round together
    assert last_signed(tmp_path / "resume") == ROUNDS - 1



def test_a_node_killed_in_the_last_round_finishes_it_with_its_neighbour_instead_of_ending_a_round_stale(
    tmp_path: Path,
) -> None:
    # Down for 50 s: peer 1 waited out its last step for us, finished, and serves late neighbours. Our
    # repeated step-0 envelope tells it we lost its updates of the round: it sends them again.
    resumed = Restart(tmp_path / "resume", killed_in=ROUNDS - 1, mode="resume", down_s=50.0)
    assert resumed.rounds_run == [0, 1, 2, 3]
    skipped = Restart(tmp_path / "skip", killed_in=ROUNDS - 1, mode="skip", down_s=50.0)
    assert skipped.rounds_run == [0, 1, 2]  # the old way: nothing left to run, it ends on round 2's model
    assert resumed.gap < 0.5 * skipped.gap, (resumed.gap, skipped.gap)


def test_resume_point_reads_the_mark_and_the_sealed_envelopes(tmp_path: Path) -> None:
    assert resume_point(tmp_path, None) == ResumePoint(0)  # a fresh node
    mark_signed(tmp_path, 0, train_loss=0.5)
    assert resume_point(tmp_path, None) == ResumePoint(0)  # marked, but nothing sealed: nothing went out
    save_sealed(tmp_path, 0, 0, b"step 0")
    save_sealed(tmp_path, 0, 1, b"step 1")
    assert resume_point(tmp_path, None) == ResumePoint(0, {0: b"step 0", 1: b"step 1"}, 0.5)
    mark_signed(tmp_path, 0, train_loss=0.5)  # marked again (resumed, killed again): its envelopes stay
    assert resume_point(tmp_path, None) == ResumePoint(0, {0: b"step 0", 1: b"step 1"}, 0.5)
    (tmp_path / "sealed" / "0-0.env").unlink()  # step 1 without step 0: not ours to resume
    assert resume_point(tmp_path, None) == ResumePoint(1)
    mark_signed(tmp_path, 1)  # a new round forgets the old round's envelopes
    assert list((tmp_path / "sealed").iterdir()) == []
    (tmp_path / "signed.json").write_text("{not json")
    assert last_signed(tmp_path) is None and resume_point(tmp_path, None) == ResumePoint(0)


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
