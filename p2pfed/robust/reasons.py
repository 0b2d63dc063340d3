"""The vocabulary of `Verdict.reason` strings that defences write and the reputation table reads."""

from __future__ import annotations

FAR = "far"  # the distance prioritizer did not keep it
WORSE = "worse on validation"  # the performance integrator found it makes the local model worse
HARMFUL = "harmful on validation"  # ... by far more than neighbours usually differ: strong evidence
NON_FINITE = "non-finite values"  # NaN or inf in the vector
TRIMMED = "trimmed"  # a coordinate-wise rule never used its values
NOT_SELECTED = "not selected"  # Krum / Multi-Krum / BALANCE rejected it
CLIPPED = "clipped"  # kept, but its difference to our vector was clipped
AMPLIFIES = "amplifies our update"  # would push us further along our own local update (Bristle)
