"""`p2pfed experiment --preset sparse` and NAME+sampling defences: what cells the grid runs (no model)."""

from __future__ import annotations

import hashlib
import json

import pytest

from p2pfed.errors import ConfigError
from p2pfed.sims.experiment import (
    PRESETS,
    ExperimentConfig,
    Grid,
    check_cells,
    experiment_from_mapping,
)


def sparse(**grid: object) -> ExperimentConfig:
    preset = PRESETS["sparse"]
    return experiment_from_mapping(
        {"base": {**preset["base"], "placement": "eclipse"}, "grid": {**preset["grid"], **grid}},
        source="test",
    )


def test_the_sparse_preset_compares_static_and_sampling_membership_from_the_same_seeds() -> None:
    cells = sparse(attacks=["none", "sign_flip"]).cells()
    by_defence = {(c.attack, c.defence): c.config for c in cells}
    static, sampling = by_defence[("sign_flip", "bristle")], by_defence[("sign_flip", "bristle+sampling")]
    assert (static.membership, sampling.membership) == ("static", "sampling")
    assert static.defence == sampling.defence == "bristle"
    assert static.seed == sampling.seed and static.peers == 64 and static.degree == 6 and static.byzantine == 21
    assert {c.config.membership for c in cells if c.defence != "bristle+sampling"} == {"static"}
    check_cells(cells)  # every cell's graph, placement, attack and defence are valid before a model loads


def test_a_grid_without_sampling_keeps_its_cell_ids() -> None:
    """Cells hash `membership` (and the other later fields) only when not at their old default: a grid run
    before they existed resumes."""
    cell = ExperimentConfig(grid=Grid(attacks=("none",), defences=("mean",))).cells()[0]
    later = ("placement", "membership", "batched", "eval_sample")
    fields = {k: v for k, v in cell.config.to_dict().items() if k not in later}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    assert cell.id == hashlib.sha256(b"p2pfed-cell:" + canonical.encode()).hexdigest()[:16]
    sampled = ExperimentConfig(grid=Grid(attacks=("none",), defences=("mean+sampling",))).cells()[0]
    assert sampled.id != cell.id


def test_an_unknown_defence_with_sampling_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        Grid(defences=("nosuch+sampling",))
