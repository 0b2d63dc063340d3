"""Attacks by name, and user plug-ins by import path (`package.module:Attr`); see docs/plugins.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

from p2pfed.attacks.adaptive import DefenceAware
from p2pfed.attacks.agr_agnostic import MinMax, MinSum
from p2pfed.attacks.base import Behaviour
from p2pfed.attacks.data_poisoning import LabelFlip
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.instruction_poisoning import Backdoor, WrongAnswers
from p2pfed.attacks.mimic import Mimic
from p2pfed.attacks.model_poisoning import ALIE, IPM, GaussianNoise, SignFlip
from p2pfed.attacks.network import FreeRider, Replay
from p2pfed.attacks.patient import Patient
from p2pfed.attacks.sybil import SybilGroup
from p2pfed.attacks.targeted import Targeted
from p2pfed.attacks.whitebox import WhiteBox
from p2pfed.errors import ConfigError
from p2pfed.robust.registry import import_attr

ATTACKS: dict[str, Callable[..., Behaviour]] = {
    "honest": Behaviour,
    "sign_flip": SignFlip,
    "gaussian": GaussianNoise,
    "alie": ALIE,
    "ipm": IPM,
    "label_flip": LabelFlip,
    "wrong_answers": WrongAnswers,
    "backdoor": Backdoor,
    "dissensus": Dissensus,
    "free_rider": FreeRider,
    "replay": Replay,
    "adaptive": DefenceAware,
    "whitebox": WhiteBox,
    "min_max": MinMax,
    "min_sum": MinSum,
    "mimic": Mimic,
    "patient": Patient,
    "targeted": Targeted,
}
# special: load_behaviour("sybil", count=k, inner="ipm", **inner_params) gives k members of one group
SYBIL = "sybil"
# attacks around an inner attack: their own parameters, the rest (or `inner.KEY`, or `inner_params`) go inside
WRAPPERS = {"patient": ("strike_round",), "targeted": ("victim", "seed")}
DEFAULT_INNER = "dissensus"


@overload
def load_behaviour(spec: str, count: None = None, **params: Any) -> Behaviour: ...
@overload
def load_behaviour(spec: str, count: int, **params: Any) -> list[Behaviour]: ...
def load_behaviour(
    spec: str, count: int | None = None, **params: Any
) -> Behaviour | list[Behaviour]:
    """A Byzantine behaviour by name (`-` and `_` alike) or import path `module:Attr`, built with `params`.

    With `count`, a list of `count` behaviours (one per Byzantine peer): independent instances, except for
    "sybil", whose members share one `SybilGroup` around the `inner` attack (default "adaptive"), "mimic",
    whose members share the choice of the peer they mimic, and "targeted", whose members share the victim.

    "patient" and "targeted" wrap an `inner` attack (default "dissensus"), built with `count` too (so a
    group-aware inner attack stays one group): their own parameters are theirs, `inner.KEY=VALUE` and the
    `inner_params` dict go to the inner attack, as does any other parameter (as for "sybil"). They nest:
    `load_behaviour("patient", inner="targeted", **{"inner.inner": "ipm", "inner.epsilon": 2.0})`.
    """
    key = spec.strip().lower().replace("-", "_")
    size = 1 if count is None else count
    if key == SYBIL:
        inner = params.pop("inner", "adaptive")
        group = SybilGroup(load_behaviour(inner, **params), size)
        built: list[Behaviour] = group.members
    elif key in WRAPPERS:
        own, inner, inner_params = split_inner(spec, key, params)
        inners = load_behaviour(inner, count=size, **inner_params)
        built = _wrap(spec, key, inners, own)
    elif key == "mimic":
        built = _call(spec, lambda: Mimic.group(size, **params))
    else:
        factory = _resolve(spec, key)
        built = [_build(spec, factory, params) for _ in range(size)]
    return built if count is not None else built[0]


def split_inner(
    spec: str, key: str, params: dict[str, Any]
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(the wrapper's own parameters, the inner attack's name, the inner attack's parameters)."""
    rest = dict(params)
    inner = rest.pop("inner", DEFAULT_INNER)
    inner_params = rest.pop("inner_params", {})
    if not isinstance(inner, str) or not isinstance(inner_params, dict):
        raise ConfigError(
            f"bad parameters for attack {spec!r}: inner must be an attack name and inner_params "
            f"a dict of its parameters, got inner={inner!r}, inner_params={inner_params!r}"
        )
    inner_params = dict(inner_params)
    own = {k: rest.pop(k) for k in WRAPPERS[key] if k in rest}
    for name, value in rest.items():
        inner_params[name.removeprefix("inner.")] = value
    return own, inner, inner_params


def _wrap(spec: str, key: str, inners: list[Behaviour], own: dict[str, Any]) -> list[Behaviour]:
    if key == "targeted":
        return _call(spec, lambda: Targeted.group(inners, **own))
    return _call(spec, lambda: [Patient(inner, **own) for inner in inners])


def _call(spec: str, make: Callable[[], Sequence[Behaviour]]) -> list[Behaviour]:
    try:
        return list(make())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for attack {spec!r}: {e}") from e


def _resolve(spec: str, key: str) -> Callable[..., Behaviour]:
    if ":" in spec:
        return import_attr(spec, "attack")
    if key not in ATTACKS:
        names = ", ".join([*sorted(ATTACKS), SYBIL])
        raise ConfigError(f"unknown attack {spec!r}; choose one of {names} or give module:Attr")
    return ATTACKS[key]


def _build(spec: str, factory: Callable[..., Behaviour], params: dict[str, Any]) -> Behaviour:
    try:
        behaviour = factory(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for attack {spec!r}: {e}") from e
    if not isinstance(behaviour, Behaviour):
        raise ConfigError(f"{spec!r} did not produce a p2pfed.attacks.base.Behaviour")
    return behaviour
