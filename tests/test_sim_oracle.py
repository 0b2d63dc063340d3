"""The oracle reference defence: drops exactly the Byzantine senders, defends the rest as usual."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.robust.base import DefenceInput
from p2pfed.robust.mean import Mean
from p2pfed.robust.reasons import Reason
from p2pfed.sims.oracle import Oracle
from p2pfed.sims.simulate import SimConfig, validate
from p2pfed.types import Outcome


def test_the_oracle_drops_exactly_the_byzantine_senders_and_mixes_the_rest() -> None:
    received = np.array([[1.0, 1.0], [3.0, 3.0], [-50.0, -50.0]], np.float32)
    inp = DefenceInput(
        own=np.zeros(2, np.float32),
        received=received,
        senders=("a", "b", "evil"),
        mixing_weights=np.full(4, 0.25, np.float32),
        reputation={},
        evaluate=None,
        rng=np.random.default_rng(0),
    )
    out = Oracle(frozenset({"evil"}), Mean())(inp)
    verdicts = {v.sender: v for v in out.verdicts}
    assert verdicts["evil"].outcome is Outcome.DROPPED and verdicts["evil"].reason == Reason.BYZANTINE
    assert verdicts["a"].outcome is Outcome.KEPT and verdicts["b"].outcome is Outcome.KEPT
    # the attacker's weight stays with us: 0.5·own + 0.25·a + 0.25·b
    np.testing.assert_allclose(out.mixed, [1.0, 1.0], rtol=1e-6)


def test_the_oracle_is_a_simulation_defence_with_the_default_defences_parameters() -> None:
    validate(SimConfig(peers=4, degree=2, defence="oracle", defence_params={"keep": 3}))
    with pytest.raises(ConfigError, match="bad parameters"):
        validate(SimConfig(peers=4, degree=2, defence="oracle", defence_params={"nope": 1}))
