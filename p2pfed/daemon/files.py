"""The node directory (`--out`): identity, which run it serves, the latest adapter, the log file.

Every file a reader may look at while the node runs is replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from p2pfed.config import RunManifest, write_atomic
from p2pfed.errors import CheckpointError
from p2pfed.learn import TaskModel
from p2pfed.wire import Identity

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"
NODE_FILE = "node.json"  # which run and identity an --out directory belongs to
ADAPTER_DIR = "adapter"
LOG_FILE = "node.log"


def load_or_create_identity(path: Path) -> Identity:
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate()
    identity.save(path)
    log.info("created identity %s in %s", identity.peer_id, path)
    return identity


def swap_adapter(model: TaskModel, vector: np.ndarray, out: Path) -> None:
    """Write the peft adapter dir beside the old one, then swap, so readers never see half of one."""
    tmp, old, target = out / f".{ADAPTER_DIR}.tmp", out / f".{ADAPTER_DIR}.old", out / ADAPTER_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_adapter(vector, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def claim_directory(out: Path, manifest: RunManifest, identity: Identity) -> None:
    """An --out directory serves one run: refuse to mix two runs' checkpoints."""
    path = out / NODE_FILE
    digest = manifest.digest().hex()
    if path.exists():
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        if known.get("run_digest") != digest:
            raise CheckpointError(
                f"{out} belongs to another run ({known.get('run_digest', '?')[:16]}…, this one is "
                f"{digest[:16]}…): use another --out"
            )
        return
    facts = {"run_digest": digest, "peer_id": identity.peer_id, "manifest": dataclasses.asdict(manifest)}
    write_atomic(path, (json.dumps(facts, indent=2) + "\n").encode())


def attach_log_file(out: Path) -> logging.Handler:
    """p2pfed's INFO log (and py-libp2p's warnings) go to <out>/node.log whatever the terminal's verbosity."""
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("p2pfed")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logging.getLogger("libp2p").addHandler(handler)  # its warnings go here, not to the terminal
    return handler
