"""The round schedule: the learning rate `GossipConfig.lr_at` gives each round, the stretch of a round's
move after gossip (`restore_update`), and that a Peer applies both."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.config import GossipConfig
from p2pfed.errors import ConfigError
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.peer import TENSOR, Peer
from p2pfed.peer.schedule import restore_update
from p2pfed.robust.mean import Mean
from p2pfed.wire import Identity, Schema


def test_constant_schedule_keeps_the_configured_lr_every_round() -> None:
    gossip = GossipConfig(rounds=6, lr=0.02)
    assert [gossip.lr_at(r) for r in range(8)] == [0.02] * 8


def test_cosine_starts_at_lr_ends_at_the_final_fraction_and_never_rises() -> None:
    gossip = GossipConfig(rounds=6, lr=0.03, lr_schedule="cosine", lr_final=0.1)
    rates = [gossip.lr_at(r) for r in range(6)]
    assert rates[0] == pytest.approx(0.03)
    assert rates[-1] == pytest.approx(0.003)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:], strict=False))
    assert rates[3] == pytest.approx(0.003 + 0.027 * 0.5 * (1 + np.cos(np.pi * 3 / 5)))
    # a daemon that runs past the configured rounds stays at the final rate instead of rising again
    assert gossip.lr_at(9) == pytest.approx(0.003)


def test_at_round_carries_that_rounds_lr_and_nothing_else_changes() -> None:
    gossip = GossipConfig(rounds=4, lr=0.04, lr_schedule="cosine", lr_final=0.5, local_steps=7)
    fixed = gossip.at_round(3)
    assert fixed.lr == pytest.approx(0.02)
    assert fixed.lr_schedule == "constant" and fixed.lr_at(0) == fixed.lr  # applying it twice is harmless
    assert (fixed.local_steps, fixed.rounds, fixed.rho) == (7, 4, gossip.rho)


@pytest.mark.parametrize("bad", [{"lr_schedule": "step"}, {"lr_final": 0.0}, {"lr_final": 1.5}])
def test_a_schedule_that_cannot_work_is_refused_with_the_valid_choices(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="lr_"):
        GossipConfig(**bad)  # type: ignore[arg-type]


@dataclass
class RecordingLocal(FakeLocal):
    """A FakeLocal that, like LocalModel, reads its learning rate from its `gossip` field."""

    gossip: GossipConfig = field(default_factory=GossipConfig)
    seen: list[float] = field(default_factory=list)

    def train(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        self.seen.append(self.gossip.lr)
        return super().train(vector, rng)


async def _inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def _train_alone(gossip: GossipConfig) -> list[float]:
    """Run one peer with no neighbours for `gossip.rounds` rounds; the lr its local model saw each round."""
    identity = Identity.for_peer(3, 0)
    local = RecordingLocal(np.zeros(2, np.float32), gossip=gossip)
    peer = Peer(
        index=0,
        identity=identity,
        transport=MemoryNetwork(seed=3).add(identity.peer_id, []),
        local=local,  # type: ignore[arg-type]
        run_digest=b"s" * 32,
        schema=Schema.from_tensors({TENSOR: np.zeros(2, np.float32)}),
        neighbour_degrees={},
        gossip=gossip,
        defence=Mean(),
        initial=np.ones(2, np.float32),
        seed=3,
        compute=trio.CapacityLimiter(1),
        run_blocking=_inline,
    )
    trio.run(lambda: peer.run(rounds=gossip.rounds), clock=trio.testing.MockClock(autojump_threshold=0))
    return local.seen


def test_a_peer_trains_each_round_at_the_schedules_rate() -> None:
    cosine = GossipConfig(rounds=5, lr=0.05, lr_schedule="cosine", lr_final=0.2)
    assert _train_alone(cosine) == pytest.approx([cosine.lr_at(r) for r in range(5)])
    assert _train_alone(GossipConfig(rounds=3, lr=0.05)) == [0.05] * 3


def test_a_move_that_mixing_shortened_is_stretched_back_toward_our_own_updates_length() -> None:
    anchor = np.zeros(3, np.float32)
    trained = np.array([1.0, 0.0, 0.0], np.float32)  # our own update: length 1
    mixed = np.array([0.1, 0.2, 0.0], np.float32)  # the neighbours cancelled most of it
    stretched = restore_update(anchor, trained, mixed, cap=2.0)
    np.testing.assert_allclose(stretched, 2.0 * mixed, rtol=1e-6)  # at most `cap` times
    full = restore_update(anchor, trained, mixed, cap=100.0)
    assert float(np.linalg.norm(full)) == pytest.approx(1.0)  # never longer than our own update
    np.testing.assert_allclose(full / np.linalg.norm(full), mixed / np.linalg.norm(mixed), rtol=1e-6)


def test_a_move_as_long_as_our_update_or_longer_and_cap_one_leave_the_mix_unchanged() -> None:
    anchor = np.ones(2, np.float32)
    trained = np.array([2.0, 1.0], np.float32)
    longer = np.array([3.0, 1.0], np.float32)
    assert restore_update(anchor, trained, longer, cap=3.0) is longer
    short = np.array([1.2, 1.0], np.float32)
    assert restore_update(anchor, trained, short, cap=1.0) is short
    assert restore_update(anchor, anchor, short, cap=3.0) is short  # no local update: nothing to restore


def test_whatever_the_mix_the_stretched_move_is_no_longer_than_our_update_or_the_mix() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        anchor, trained = rng.normal(size=(2, 16)).astype(np.float32)
        mixed = (anchor + rng.normal(size=16) * rng.choice([1e-3, 0.1, 1.0, 10.0])).astype(np.float32)
        out = restore_update(anchor, trained, mixed, cap=3.0)
        own, move = np.linalg.norm(trained - anchor), np.linalg.norm(mixed - anchor)
        assert np.linalg.norm(out - anchor) <= max(own, move) * (1 + 1e-5)
        assert np.linalg.norm(out - anchor) <= 3.0 * move * (1 + 1e-5)


def _two_opposed_peers(cap: float) -> list[np.ndarray]:
    """Two linked peers pulled to opposite, slightly unequal targets, one round, mean mixing."""
    gossip = GossipConfig(rounds=1, gossip_steps=1, step_timeout=5.0, restore_update=cap)
    identities = [Identity.for_peer(4, i) for i in range(2)]
    ids = [identity.peer_id for identity in identities]
    network = MemoryNetwork(seed=4)
    targets = [np.array([1.0, 0.0], np.float32), np.array([-0.8, 0.0], np.float32)]
    peers = [
        Peer(
            index=i,
            identity=identities[i],
            transport=network.add(ids[i], [ids[1 - i]]),
            local=FakeLocal(targets[i]),  # type: ignore[arg-type]
            run_digest=b"t" * 32,
            schema=Schema.from_tensors({TENSOR: np.zeros(2, np.float32)}),
            neighbour_degrees={ids[1 - i]: 1},
            gossip=gossip,
            defence=Mean(),
            initial=np.zeros(2, np.float32),
            seed=4,
            compute=trio.CapacityLimiter(1),
            run_blocking=_inline,
        )
        for i in range(2)
    ]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(network.run)
            async with trio.open_nursery() as inner:
                for p in peers:
                    inner.start_soon(lambda p=p: p.run(rounds=1))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return [p.vector for p in peers]


def test_a_peer_stretches_its_rounds_move_after_gossip_only_when_asked() -> None:
    # each trains halfway to its target (0.5 and -0.4); the 2-peer mean is 0.05: mixing kept a tenth of a move
    plain = _two_opposed_peers(cap=1.0)
    np.testing.assert_allclose(plain, [[0.05, 0.0], [0.05, 0.0]], atol=1e-6)
    stretched = _two_opposed_peers(cap=2.0)
    np.testing.assert_allclose(stretched, [[0.1, 0.0], [0.1, 0.0]], atol=1e-6)
