"""The vocabulary of `Verdict.reason`: what defences, the peer and the oracle write, and the reputation
table reads. The values are the text logs and reports show."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    NONE = ""  # nothing to say (a KEPT verdict)
    # written by defences
    FAR = "far"  # the distance prioritizer did not keep it
    WORSE = "worse on validation"  # the performance integrator found it makes the local model worse
    HARMFUL = "harmful on validation"  # ... by far more than neighbours usually differ: strong evidence
    NON_FINITE = "non-finite values"  # NaN or inf in the vector
    TRIMMED = "trimmed"  # a coordinate-wise rule never used its values
    NOT_SELECTED = "not selected"  # Krum / Multi-Krum / BALANCE rejected it
    CLIPPED = "clipped"  # kept, but its difference to our vector was clipped
    AMPLIFIES = "amplifies our update"  # would push us further along our own local update (Bristle)
    # written by the peer around its defence (and REPUTATION by Bristle's gate too)
    REPUTATION = "reputation"  # the sender is quarantined: its reputation is below the threshold
    TWO_UPDATES = "two updates"  # two different signed updates for one (round, step): equivocation
    FAILED_VERIFICATION = "failed verification"  # signature, schema, digest, ... (p2pfed.wire)
    NOT_IN_TIME = "not in time"  # nothing arrived from this neighbour before the step's deadline
    # written by the simulations' oracle (p2pfed.sims.oracle)
    BYZANTINE = "Byzantine (oracle)"  # the oracle was told this sender is Byzantine


# The names from before the enum, for code that imports them: `reasons.FAR` is `Reason.FAR`.
FAR, WORSE, HARMFUL, AMPLIFIES = Reason.FAR, Reason.WORSE, Reason.HARMFUL, Reason.AMPLIFIES
NON_FINITE, TRIMMED, NOT_SELECTED, CLIPPED = Reason.NON_FINITE, Reason.TRIMMED, Reason.NOT_SELECTED, Reason.CLIPPED
