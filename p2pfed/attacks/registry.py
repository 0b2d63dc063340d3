"""Attacks by name, and user plug-ins by import path (`package.module:Attr`); see docs/plugins.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from p2pfed.attacks.adaptive import DefenceAware
from p2pfed.attacks.base import Behaviour
from p2pfed.attacks.data_poisoning import LabelFlip
from p2pfed.attacks.dissensus import Dissensus
from p2pfed.attacks.model_poisoning import ALIE, IPM, GaussianNoise, SignFlip
from p2pfed.attacks.network import FreeRider, Replay
from p2pfed.attacks.sybil import SybilGroup
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
    "dissensus": Dissensus,
    "free_rider": FreeRider,
    "replay": Replay,
    "adaptive": DefenceAware,
    "whitebox": WhiteBox,
}
# special: load_behaviour("sybil", count=k, inner="ipm", **inner_params) gives k members of one group
SYBIL = "sybil"


@overload
def load_behaviour(spec: str, count: None = None, **params: Any) -> Behaviour: ...
@overload
def load_behaviour(spec: str, count: int, **params: Any) -> list[Behaviour]: ...
def load_behaviour(
    spec: str, count: int | None = None, **params: Any
) -> Behaviour | list[Behaviour]:
    """A Byzantine behaviour by name (`-` and `_` alike) or import path `module:Attr`, built with `params`.

    With `count`, a list of `count` behaviours (one per Byzantine peer): independent instances, except for
    "sybil", whose members share one `SybilGroup` around the `inner` attack (default "adaptive").
    """
    key = spec.strip().lower().replace("-", "_")
    if key == SYBIL:
        inner = params.pop("inner", "adaptive")
        group = SybilGroup(load_behaviour(inner, **params), count or 1)
        return group.members if count is not None else group.members[0]
    factory = _resolve(spec, key)
    built = [_build(spec, factory, params) for _ in range(1 if count is None else count)]
    return built if count is not None else built[0]


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
