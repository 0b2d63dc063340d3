"""The one error tree of p2pfed.

Raise these for local problems a user can fix (a missing package, a bad file, a bad option).
Bad input from a *peer* is never an exception: it is verified, rejected, logged and counted.
"""

from __future__ import annotations


class P2pfedError(Exception):
    """Root of every error p2pfed raises on purpose."""


class ConfigError(P2pfedError):
    """An option, manifest or config file is invalid; the message says which and how to fix it."""


class MissingPackageError(P2pfedError):
    """An optional model or data package is not installed; the message has the install command."""


class DataError(P2pfedError):
    """A data file is malformed; the message names the file and line."""


class CheckpointError(P2pfedError):
    """A checkpoint or identity file is unreadable or belongs to another run."""


class NetworkError(P2pfedError):
    """A local networking problem (cannot listen, bad multiaddr), not a misbehaving peer."""
