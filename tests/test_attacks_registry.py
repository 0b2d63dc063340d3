"""Attacks by name and by import path (the plug-in of docs/plugins.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2pfed.attacks.base import AttackContext, Behaviour
from p2pfed.attacks.registry import ATTACKS, load_behaviour
from p2pfed.attacks.sybil import SybilMember
from p2pfed.errors import ConfigError


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registered_attack_loads(name: str) -> None:
    behaviour = load_behaviour(name)
    assert isinstance(behaviour, Behaviour) and behaviour.name == name


def test_count_gives_independent_instances() -> None:
    group = load_behaviour("free-rider", count=3, mode="stale")
    assert len(group) == 3 and len({id(b) for b in group}) == 3


def test_sybil_gives_members_of_one_group_around_the_inner_attack() -> None:
    members = load_behaviour("sybil", count=3, inner="ipm", epsilon=2.0)
    assert all(isinstance(m, SybilMember) for m in members)
    assert len({id(m.group) for m in members}) == 1  # type: ignore[attr-defined]
    assert members[0].group.inner.epsilon == 2.0  # type: ignore[attr-defined]


def test_unknown_attack_or_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="alie.*sybil"):
        load_behaviour("alice")
    with pytest.raises(ConfigError, match="bad parameters"):
        load_behaviour("ipm", eps=1)
    with pytest.raises(ConfigError, match="not produce"):
        load_behaviour("p2pfed.errors:ConfigError")


def test_a_user_attack_loads_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    behaviour = load_behaviour("plugin_example:ShrinkToZero", factor=0.25)
    context = AttackContext(
        round=0,
        step=0,
        recipient="r",
        own=np.array([4.0, -8.0], np.float32),
        received=np.zeros((0, 2), np.float32),
        senders=(),
        colluders=frozenset(),
        honest_seen=None,
        sent_history=(),
        received_history=(),
        rng=np.random.default_rng(0),
    )
    message = behaviour.outgoing(context)
    assert message is not None
    np.testing.assert_array_equal(message.vector, [1.0, -2.0])
