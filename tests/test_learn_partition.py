from __future__ import annotations

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.learn.partition import partition, split_validation


def labels_like_trec(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(6, size=n, p=[0.02, 0.2, 0.24, 0.22, 0.15, 0.17]).astype(np.int64)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "k-classes"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_peers", [1, 8, 16])
def test_every_index_in_exactly_one_nonempty_shard(scheme, seed, num_peers):
    labels = labels_like_trec(seed=seed)
    shards = partition(labels, num_peers, scheme, alpha=0.1, rng=np.random.default_rng(seed))
    assert len(shards) == num_peers
    assert all(len(s) >= 8 for s in shards)
    together = np.concatenate(shards)
    assert len(together) == len(labels)
    assert np.array_equal(np.sort(together), np.arange(len(labels)))


def test_same_seed_same_shards():
    labels = labels_like_trec()
    a = partition(labels, 8, "dirichlet", rng=np.random.default_rng(5))
    b = partition(labels, 8, "dirichlet", rng=np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _mean_label_distance(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    """Mean total-variation distance between each shard's label histogram and the global one."""
    k = labels.max() + 1
    overall = np.bincount(labels, minlength=k) / len(labels)
    return float(
        np.mean(
            [
                0.5 * np.abs(np.bincount(labels[s], minlength=k) / len(s) - overall).sum()
                for s in shards
            ]
        )
    )


def test_small_alpha_is_non_iid_and_iid_is_not():
    labels = labels_like_trec()
    rng = np.random.default_rng(0)
    iid = _mean_label_distance(labels, partition(labels, 10, "iid", rng=rng))
    skewed = _mean_label_distance(labels, partition(labels, 10, "dirichlet", alpha=0.1, rng=rng))
    k_classes = partition(labels, 10, "k-classes", classes_per_peer=2, rng=rng)
    assert iid < 0.08
    assert skewed > 0.4
    assert all(len(np.unique(labels[s])) <= 3 for s in k_classes)  # 2 classes, + a few top-up rows


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="scheme"):
        partition(np.zeros(10, np.int64), 2, "zipf", rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="peers"):
        partition(np.zeros(3, np.int64), 5, "iid", rng=np.random.default_rng(0))


def test_split_validation_is_a_partition_of_the_shard():
    shard = np.arange(100, 150)
    train, val = split_validation(shard, 0.2, np.random.default_rng(0))
    assert len(val) == 10 and len(train) == 40
    assert np.array_equal(np.sort(np.concatenate([train, val])), shard)
    train, val = split_validation(np.array([7, 9]), 0.1, np.random.default_rng(0))
    assert len(train) == 1 and len(val) == 1
