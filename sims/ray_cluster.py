"""Joining a Ray cluster for `--ray ADDRESS|auto`, with Ray an optional extra (`pip install 'p2pfed[ray]'`).

Nothing imports ray unless a command was given `--ray`: `require_ray` is the one place that does, and it
turns a missing install into an error that names the extra. `auto` joins the cluster this machine belongs
to (`ray start` here, or RAY_ADDRESS) and, if there is none, starts a private one on 127.0.0.1 for this
run; any other value is a cluster address (`HEAD_IP:6379`, or `ray://HEAD_IP:10001` for Ray Client).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from p2pfed.errors import ConfigError, MissingPackageError

log = logging.getLogger(__name__)

AUTO = "auto"
INSTALL = "pip install 'p2pfed[ray]'"
# what a worker needs to find the same code and never reach a model hub
_FORWARDED = ("PYTHONPATH", "P2PFED_WORKTREE", "P2PFED_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def require_ray() -> Any:
    """The ray module, or a MissingPackageError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingPackageError(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """Connected to the cluster at `address` (or `auto`) for the block; yields the ray module.

    A cluster that is already initialised in this process (a test's, say) is used as it is and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    handlers = _python_handlers()
    _connect(ray, address)
    _reinstall(handlers)
    try:
        yield ray
    finally:
        ray.shutdown()


def _connect(ray: Any, address: str) -> None:
    env = {name: os.environ[name] for name in _FORWARDED if name in os.environ}
    common = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING, "log_to_driver": False}
    if address == AUTO:
        try:
            ray.init(address="auto", **common)
            log.info("joined the running Ray cluster")
            return
        except ConnectionError:
            log.info("no Ray cluster is running here: starting a local one on 127.0.0.1")
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **common)
        return
    try:
        ray.init(address=address, **common)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head` on its "
            "head machine and pass the address it prints, or use --ray auto for a cluster on this machine"
        ) from None


def _python_handlers() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _reinstall(handlers: dict[int, Any]) -> None:
    """ray.init puts its own native handler on SIGTERM (it dumps a stack and aborts the process, exit 134):
    put back ours, so that SIGTERM stops a grid as Ctrl-C does, cells recorded and a clean exit."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def cluster_cpus(ray: Any) -> int:
    """The CPUs the cluster has in all (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
