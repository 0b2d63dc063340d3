"""Property-based fuzzing of checkpoint files: whatever bytes are on disk, `load_checkpoint` returns a
checkpoint the node can resume from or raises CheckpointError (which the CLI reports), never anything else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fuzzing import FUZZ, mutated
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save

from p2pfed.errors import CheckpointError
from p2pfed.peer.checkpoint import FILENAME, Checkpoint, load_checkpoint, save_checkpoint
from p2pfed.robust.reputation import ReputationTable

REPUTATION = ReputationTable.from_dict(
    {
        "round": 2,
        "scores": {"12D3KooWA": 0.7},
        "quarantined_until": {"12D3KooWB": 5},
        "offences": {"12D3KooWB": 1},
    }
)
GOOD = Checkpoint(
    round=3,
    vector=np.linspace(-1, 1, 16, dtype=np.float32),
    reputation=REPUTATION.to_dict(),
    run_digest="ab" * 32,
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoint")


def _good_bytes(directory: Path) -> bytes:
    return save_checkpoint(directory, GOOD).read_bytes()


def _load(directory: Path, data: bytes) -> Checkpoint | None:
    """What a node resuming from `data` gets; the assertions are what it relies on."""
    (directory / FILENAME).write_bytes(data)
    try:
        state = load_checkpoint(directory)
    except CheckpointError:
        return None
    assert state is not None
    assert isinstance(state.round, int) and state.round >= 0
    assert state.vector.ndim == 1 and state.vector.dtype == np.float32
    ReputationTable.from_dict(state.reputation)  # what Node does with it
    assert isinstance(state.run_digest, str)
    return state


def test_a_saved_checkpoint_loads_back(directory: Path) -> None:
    state = _load(directory, _good_bytes(directory))
    assert state is not None
    assert (state.round, state.run_digest, state.reputation) == (
        GOOD.round,
        GOOD.run_digest,
        GOOD.reputation,
    )
    np.testing.assert_array_equal(state.vector, GOOD.vector)


@FUZZ
@given(st.data())
def test_a_corrupted_checkpoint_file_loads_or_raises_checkpoint_error(
    directory: Path, data
) -> None:
    _load(directory, data.draw(mutated(_good_bytes(directory))))


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_load_or_raise_checkpoint_error(directory: Path, data: bytes) -> None:
    _load(directory, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
metadata_values = st.one_of(
    st.text(max_size=20),
    json_values.map(json.dumps),
    # nested deeper than the JSON parser's recursion limit
    st.integers(1, 50_000).map(lambda depth: "[" * depth + "]" * depth),
    st.sampled_from(["3", "-1", "1e9", "nan", " 7 ", "99999999999999999999"]),
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["round", "reputation", "run_digest", "other"]), metadata_values
    ),
    st.sampled_from(
        [
            {"vector": np.zeros(4, np.float32)},
            {"vector": np.zeros((2, 2), np.float32)},
            {"vector": np.zeros(4, np.int64)},
            {"vector": np.zeros(4, np.float64)},
            {"other": np.zeros(4, np.float32)},
            {},
        ]
    ),
)
def test_any_metadata_and_tensors_load_or_raise_checkpoint_error(
    directory: Path, metadata, tensors
) -> None:
    _load(directory, save(tensors, metadata=metadata))


@pytest.mark.parametrize(
    ("metadata", "tensors"),
    [
        (
            {"round": "3", "reputation": "[" * 100_000 + "]" * 100_000},
            {"vector": np.zeros(4, np.float32)},
        ),
        ({"round": "-1"}, {"vector": np.zeros(4, np.float32)}),
        ({"round": "3"}, {"vector": np.zeros((2, 2), np.float32)}),
        ({"round": "3"}, {"vector": np.zeros(4, np.int64)}),
        ({"round": "3", "reputation": "[]"}, {"vector": np.zeros(4, np.float32)}),
        (
            {"round": "3", "reputation": '{"config": {"qrior": 0.3}}'},
            {"vector": np.zeros(4, np.float32)},
        ),
        (
            {"round": "3", "reputation": '{"quarantined_until": {"a": 1e999}}'},
            {"vector": np.zeros(4, np.float32)},
        ),
    ],
    ids=[
        "deep-json",
        "negative-round",
        "matrix",
        "int-vector",
        "list-reputation",
        "unknown-config",
        "inf-quarantine",
    ],
)
def test_checkpoints_a_node_cannot_resume_from_raise_checkpoint_error(
    directory: Path, metadata, tensors
) -> None:
    # each of these once escaped load_checkpoint or crashed the resuming node with another exception
    (directory / FILENAME).write_bytes(save(tensors, metadata=metadata))
    with pytest.raises(CheckpointError, match="move it away"):
        load_checkpoint(directory)
