"""Attacks by name and by import path (the plug-in of docs/plugins.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from p2pfed.attacks.agr_agnostic import MinSum
from p2pfed.attacks.base import AttackContext, Behaviour
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.mimic import Mimic
from p2pfed.attacks.model_poisoning import IPM
from p2pfed.attacks.patient import Patient
from p2pfed.attacks.registry import ATTACKS, load_behaviour
from p2pfed.attacks.sybil import SybilMember
from p2pfed.attacks.targeted import Targeted
from p2pfed.cli.main import main
from p2pfed.errors import ConfigError
from p2pfed.learn import TaskModel


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


def test_wrappers_split_their_own_parameters_from_the_inner_attacks() -> None:
    patient = load_behaviour("patient", strike_round=4, inner="ipm", epsilon=2.0)
    assert isinstance(patient, Patient) and patient.strike_round == 4
    assert isinstance(patient.inner, IPM) and patient.inner.epsilon == 2.0
    for params in ({"inner.epsilon": 3.0}, {"inner_params": {"epsilon": 3.0}}):
        built = load_behaviour("targeted", victim="v", inner="ipm", **params)
        assert isinstance(built, Targeted) and built.victim == "v"
        assert built.inner.epsilon == 3.0  # type: ignore[attr-defined]
    assert isinstance(load_behaviour("patient").inner, Dissensus)  # type: ignore[attr-defined]


def test_wrappers_nest_and_keep_group_aware_inner_attacks_one_group() -> None:
    members = load_behaviour(
        "patient", count=2, inner="targeted", **{"inner.inner": "mimic", "inner.warmup": 2}
    )
    targeted = [m.inner for m in members]  # type: ignore[attr-defined]
    assert all(isinstance(t, Targeted) for t in targeted)
    assert targeted[0].board is targeted[1].board
    mimics = [t.inner for t in targeted]
    assert all(isinstance(m, Mimic) for m in mimics) and mimics[0].board is mimics[1].board
    assert mimics[0].board.warmup == 2
    assert all(m.waits_for_honest for m in targeted)


def test_wrappers_pass_on_that_their_inner_attack_scores_models() -> None:
    """A wrapped white-box attack still runs behind the compute limiter (Peer reads `uses_model`)."""
    assert load_behaviour("whitebox").uses_model and not load_behaviour("ipm").uses_model
    for built in (
        load_behaviour("patient", inner="whitebox"),
        load_behaviour("targeted", inner="whitebox"),
        load_behaviour("sybil", count=2, inner="whitebox")[0],
    ):
        assert built.uses_model, built.name
    assert not load_behaviour("patient", inner="ipm").uses_model


def test_mimic_members_share_one_board_and_in_spread_attacks_take_their_parameters() -> None:
    first, second = load_behaviour("mimic", count=2, warmup=5)
    assert first.board is second.board and first.board.warmup == 5  # type: ignore[attr-defined]
    built = load_behaviour("min-sum", perturbation="sign", gamma_max=2.0, iters=10)
    assert isinstance(built, MinSum)
    assert (built.perturbation, built.gamma_max, built.iters) == ("sign", 2.0, 10)


def test_bad_wrapper_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="label_flip"):
        load_behaviour("patient", inner="label_flip")
    with pytest.raises(ConfigError, match="inner_params"):
        load_behaviour("targeted", inner_params="epsilon=2")
    with pytest.raises(ConfigError, match="bad parameters for attack 'ipm'"):
        load_behaviour("patient", inner="ipm", eps=1)
    with pytest.raises(ConfigError, match="strike_round"):
        load_behaviour("patient", strike_round=-1)
    with pytest.raises(ConfigError, match="perturbation"):
        load_behaviour("min_max", perturbation="gauss")
    with pytest.raises(ConfigError, match="warm-up"):
        load_behaviour("mimic", count=2, warmup=0)


class ModelLoadReached(Exception):
    """Raised instead of loading the model: the options were accepted."""


@pytest.mark.parametrize(
    "name, params",
    [
        ("min_max", ["perturbation=unit_vec"]),
        ("min_sum", ["iters=20"]),
        ("mimic", ["warmup=2"]),
        ("patient", ["strike_round=1", "inner=min_max", "inner.perturbation=sign"]),
        ("targeted", ["victim=0", "inner=ipm", "inner.epsilon=0.5"]),
        ("patient", ["inner=targeted", "inner.inner=mimic", "inner.inner.warmup=2"]),
    ],
)
def test_sim_accepts_the_new_attacks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, params: list[str]
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelLoadReached

    monkeypatch.setattr(TaskModel, "load", refuse)
    args = ["sim", "--peers", "8", "--topology", "complete", "--byzantine", "2", "--attack", name]
    for param in params:
        args += ["--attack-param", param]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, ModelLoadReached), result.output


def test_sim_refuses_a_bad_parameter_of_a_new_attack() -> None:
    args = ["sim", "--byzantine", "2", "--attack", "min_max", "--attack-param", "perturbation=x"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "perturbation must be one of" in result.output
