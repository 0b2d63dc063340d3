"""What each random stream of a run is for: the purpose word in its seed.

Every generator is `np.random.default_rng([run seed, (peer index, round, ...), purpose])`. A new stream
takes a new member here, never a literal at the call. Known overlap, kept because fixing it changes every
run's numbers: numpy pads a seed list with zeros, so [seed, peer, 161, LOCAL_TRAINING] (round 161's
training) draws what [seed, peer, VALIDATION] does.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Seed(IntEnum):
    # a peer's own streams, Peer.rng(round, ...): the word after the round is 0 for training, step + 1 in
    # gossip step `step`, then the purpose (or, for an attack, recipient_key of the recipient)
    LOCAL_TRAINING = 0  # a round's local training: [seed, peer, round, 0]
    DEFENCE = 7  # the defence's random choices in one gossip step: [seed, peer, round, step + 1, 7]
    # streams of the run's data and roles
    TEST_SPLIT = 1  # the held-out global test set: [seed, 1] (p2pfed.learn.data.split_test)
    VALIDATION = 0xA1  # a peer's validation split of its shard: [seed, peer, 0xA1]
    LABEL_POISON = 0xF1  # a Byzantine peer's poisoned labels in a simulation: [seed, peer, 0xF1]
    BYZANTINE = 0xB12  # which peers of a simulation are Byzantine: [seed, 0xB12]
    MEMBERSHIP = 0x3E3  # a simulated peer's membership choices (p2pfed.net.memory_membership): [seed, peer, 0x3E3]
    ECLIPSE = 0xEC1  # eclipse placement's victims and kept neighbours (p2pfed.sims.placement): [seed, 0xEC1]
    PARTITION = 0x5EED  # the partition of the training pool into shards: [seed, 0x5EED]
    EVAL_SAMPLE = 0xE7A1  # the test rows `export_shards(eval_rows=...)` keeps: [seed, 0xE7A1]
    SIM_EVAL_SAMPLE = 0xE7A2  # the test rows a large simulation scores every round on (sims.simulate): [seed, 0xE7A2]
    CHURN = 0xC4  # which `--processes` peers a churn soak kills, and when (sims.processes): [seed, 0xC4]


def partition_rng(seed: int) -> np.random.Generator:
    """The stream that partitions the training pool into the peers' shards (simulations, exported shards)."""
    return np.random.default_rng([seed, Seed.PARTITION])


def validation_rng(seed: int, peer: int) -> np.random.Generator:
    """The stream that splits peer `peer`'s shard into training and validation rows (sim and daemon alike)."""
    return np.random.default_rng([seed, peer, Seed.VALIDATION])
