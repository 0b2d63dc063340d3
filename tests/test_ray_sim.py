"""`p2pfed sim --ray`: the peers spread over Ray actors on a local cluster (127.0.0.1) end with the same
vectors as the in-process simulation of the same seed; and the error that names the extra."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from p2pfed.cli.main import main
from p2pfed.config import GossipConfig, RunManifest
from p2pfed.learn import LearnConfig, TaskModel
from p2pfed.sims.ray_sim import assign_batches
from p2pfed.sims.simulate import SimConfig, run_simulation


def tiny(**changes: object) -> SimConfig:
    base = SimConfig(
        peers=5,
        degree=2,
        learn=LearnConfig(run=RunManifest(seed=3)),
        # a generous deadline: an update that misses it is 'missing' and the run then depends on timing
        gossip=GossipConfig(rounds=2, local_steps=2, gossip_steps=2, step_timeout=600.0),
        save_adapters=False,
        batched=False,  # Ray actors train their peers one at a time: compare with the in-process per-peer path
    )
    return SimConfig(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_without_ray_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(main, ["sim", "--ray", "auto", "--peers", "4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "pip install 'p2pfed[ray]'" in result.output
    assert not (tmp_path / "run").exists()


def test_ray_refuses_what_only_the_in_process_transport_simulates(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", "--ray", "auto", "--drop", "0.1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--drop" in result.output


@pytest.mark.parametrize("peers, byzantine, actors", [(64, 0, 2), (10, 3, 3), (7, 6, 2), (3, 0, 8)])
def test_every_peer_is_on_one_actor_and_the_colluders_share_one(peers: int, byzantine: int, actors: int) -> None:
    cfg = tiny(peers=peers, degree=2, byzantine=byzantine, attack="ipm" if byzantine else "none")
    batches = assign_batches(cfg, actors)
    assert sorted(i for b in batches for i in b) == list(range(peers))
    assert len(batches) == min(actors, peers)
    from p2pfed.sims.simulate import byzantine_indices

    bad = set(byzantine_indices(cfg))
    assert sum(1 for b in batches if bad & set(b)) == (1 if bad else 0)
    if not bad:
        assert max(map(len, batches)) - min(map(len, batches)) <= 1


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_actors_end_with_the_in_process_vectors(local_cluster: None) -> None:
    import torch

    from p2pfed.sims.ray_sim import run_on_ray

    cfg = tiny()
    model = TaskModel.load(cfg.learn)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each one-CPU actor runs: float sums then add up in the same order
    try:
        reference = run_simulation(cfg, model=model)
    finally:
        torch.set_num_threads(threads)
    assert all("missing" not in r["outcomes"] for r in reference.rows)
    spread = run_on_ray(cfg, "auto", model=model, actors=2)
    assert len(spread.vectors) == cfg.peers
    for ours, theirs in zip(reference.vectors, spread.vectors, strict=True):
        assert np.array_equal(ours, theirs)
    assert not np.array_equal(spread.vectors[0], model.initial_vector())  # the peers did learn
    strip = ("seconds", "bytes_sent", "bytes_received")
    assert [{k: v for k, v in r.items() if k not in strip} for r in spread.rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in reference.rows
    ]
