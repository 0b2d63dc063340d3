"""Outputs of the frozen lower layers, computed once per dataset and shared by every simulated peer.

Training and evaluation then run only the adapted top layers. Rows are stored packed (no padding) and
padded per batch to that batch's longest row. The cache also lives on disk under
`<cache root>/features/`, keyed by the base-model hash, the task's bytes and everything that changes the
lower layers' output, so a second run starts without recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from p2pfed.learn.backbone import Batch, Encoded

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1  # bump when the stored layout or the lower-layer computation changes
_CHUNK = 64  # rows per no-grad forward when filling the cache


class LowerLayers(Protocol):
    def lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


class Features:
    """Token ids of every row and, when cached, the frozen lower-layer output of every token."""

    def __init__(self, encoded: Encoded, lower: LowerLayers, hidden: torch.Tensor | None) -> None:
        self.lengths = encoded.lengths
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.ids = torch.from_numpy(np.concatenate(encoded.ids)) if encoded.ids else torch.zeros(0)
        self.prompt_lens = encoded.prompt_lens
        self.hidden = hidden  # (total tokens, h) or None: compute the lower layers per batch
        self._lower = lower

    @property
    def cached(self) -> bool:
        return self.hidden is not None

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def append(self, encoded: Encoded) -> npt.NDArray[np.int64]:
        """Add rows after the existing ones (their lower-layer output computed now when the rest is
        cached) and return their row indices. Not written to the disk cache: it is keyed by the task."""
        first = self.rows
        extra = Features(encoded, self._lower, None)
        hidden = None if self.hidden is None else _compute(extra, self._lower)
        self.ids = torch.cat([self.ids, extra.ids])
        self.lengths = np.concatenate([self.lengths, extra.lengths])
        self.offsets = np.concatenate([self.offsets[:-1], self.offsets[-1] + extra.offsets])
        self.prompt_lens = np.concatenate([self.prompt_lens, extra.prompt_lens])
        if self.hidden is not None and hidden is not None:
            self.hidden = torch.cat([self.hidden, hidden])
        return np.arange(first, self.rows, dtype=np.int64)

    def batch(self, rows: npt.NDArray[np.int64]) -> Batch:
        lengths = self.lengths[rows]
        width = int(lengths.max())
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        hidden = None
        if self.hidden is not None:
            hidden = torch.zeros(len(rows), width, self.hidden.shape[1], dtype=self.hidden.dtype)
        for i, (row, n) in enumerate(zip(rows.tolist(), lengths.tolist(), strict=True)):
            start = int(self.offsets[row])
            ids[i, :n] = self.ids[start : start + n]
            mask[i, :n] = 1
            if hidden is not None:
                assert self.hidden is not None  # hidden is allocated only with a cache
                hidden[i, :n] = self.hidden[start : start + n]
        batch = Batch(
            ids=ids,
            mask=mask,
            lengths=torch.from_numpy(lengths),
            prompt_lens=torch.from_numpy(self.prompt_lens[rows]),
            hidden=hidden,
        )
        if batch.hidden is None:
            with torch.no_grad():
                batch.hidden = self._lower.lower(ids, mask)
        return batch

    def batches(self, rows: npt.NDArray[np.int64], size: int) -> list[npt.NDArray[np.int64]]:
        """`rows` in chunks of similar length (sorted), so little compute is spent on padding."""
        order = rows[np.argsort(self.lengths[rows], kind="stable")]
        return [order[i : i + size] for i in range(0, len(order), size)]


def build_features(
    encoded: Encoded,
    lower: LowerLayers,
    *,
    key: dict[str, object] | None,
    progress: Callable[[str], None] | None = None,
) -> Features:
    """Fill the cache (from disk if `key` was seen before); `key=None` disables caching entirely."""
    if key is None:
        return Features(encoded, lower, None)
    path = _cache_path(key)
    features = Features(encoded, lower, None)
    stored = _read(path, features)
    if stored is not None:
        features.hidden = stored
        log.info("feature cache hit %s", path.name)
        return features
    started = time.perf_counter()
    if progress:
        progress(
            f"computing frozen-layer features for {len(encoded.ids)} rows (once; cached on disk)"
        )
    features.hidden = _compute(features, lower)
    log.info("features computed in %.1f s", time.perf_counter() - started)
    _write(path, features)
    return features


def _compute(features: Features, lower: LowerLayers) -> torch.Tensor:
    rows = np.arange(len(features.lengths), dtype=np.int64)
    packed: torch.Tensor | None = None
    with torch.no_grad():
        for chunk in features.batches(rows, _CHUNK):
            batch = features.batch(chunk)  # features.hidden is None here: runs the lower layers
            assert batch.hidden is not None
            if packed is None:
                packed = torch.empty(int(features.offsets[-1]), batch.hidden.shape[-1])
            for i, (row, n) in enumerate(zip(chunk.tolist(), batch.lengths.tolist(), strict=True)):
                start = int(features.offsets[row])
                packed[start : start + n] = batch.hidden[i, :n]
    assert packed is not None
    return packed


def _cache_path(key: dict[str, object]) -> Path:
    from p2pfed.learn.models import cache_root

    blob = json.dumps({"format": FEATURE_FORMAT, **key}, sort_keys=True).encode()
    return cache_root() / "features" / f"{hashlib.sha256(blob).hexdigest()[:32]}.safetensors"


def _read(path: Path, features: Features) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        stored = load_file(path)
    except Exception as e:  # a truncated or foreign file is recomputed, never trusted
        log.warning("ignoring unreadable feature cache %s: %s", path, e)
        return None
    if not torch.equal(stored.get("ids", torch.zeros(0)), features.ids):
        log.warning("ignoring feature cache %s: token ids differ", path)
        return None
    return stored["hidden"]


def _write(path: Path, features: Features) -> None:
    assert features.hidden is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file({"hidden": features.hidden.contiguous(), "ids": features.ids}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write feature cache %s: %s", path, e)
        Path(tmp).unlink(missing_ok=True)
