"""The learning-rate schedule: what `GossipConfig.lr_at` gives each round, and that a Peer trains with it."""

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
