"""Defences by name, and user plug-ins by import path (`package.module:Attr`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from p2pfed.errors import ConfigError
from p2pfed.robust.balance import Balance
from p2pfed.robust.base import Defence
from p2pfed.robust.bristle import Bristle
from p2pfed.robust.clipped_gossip import ClippedGossip
from p2pfed.robust.krum import Krum, MultiKrum
from p2pfed.robust.mean import Mean
from p2pfed.robust.median import Median
from p2pfed.robust.trimmed_mean import TrimmedMean

DEFENCES: dict[str, Callable[..., Defence]] = {
    "mean": Mean,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "clipped_gossip": ClippedGossip,
    "balance": Balance,
    "bristle": Bristle,
}
DEFAULT_DEFENCE = "bristle"


def load_defence(spec: str, **params: Any) -> Defence:
    """A defence by registered name (`-` and `_` alike) or by import path `module:Attr`, built with `params`.

    `Attr` may be a class or a factory; it is called with `params` and must return a callable with a `name`.
    """
    factory = _resolve(spec)
    try:
        defence = factory(**params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for defence {spec!r}: {e}") from e
    if not callable(defence) or not isinstance(getattr(defence, "name", None), str):
        raise ConfigError(
            f"{spec!r} did not produce a defence (a callable with a `name` attribute)"
        )
    return defence


def _resolve(spec: str) -> Callable[..., Defence]:
    if ":" in spec:
        return import_attr(spec, "defence")
    key = spec.strip().lower().replace("-", "_")
    if key not in DEFENCES:
        raise ConfigError(
            f"unknown defence {spec!r}; choose one of {', '.join(sorted(DEFENCES))} or give module:Attr"
        )
    return DEFENCES[key]


def import_attr(spec: str, kind: str) -> Any:
    """Import `module:Attr` (dots allowed in Attr), raising ConfigError with the reason on failure."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import the {kind} plug-in module {module_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ConfigError(
                f"{module_name!r} has no attribute {attr!r} (the {kind} plug-in)"
            ) from e
    return obj
