"""How one process learns: the run's contract (what every peer shares) plus this process's own knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pfed.config import RunManifest
from p2pfed.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LearnConfig:
    # the run contract: base model, task, LoRA shape, adapted layers, max tokens, seed. The learning rate
    # and SAM radius are the schedule's (`GossipConfig.lr/rho`); `train()` takes them explicitly
    run: RunManifest = field(default_factory=RunManifest)
    data: str | None = None  # the rows to load; None: the contract's task (a daemon loads its private file)
    batch_size: int = 16  # rows per local step; 16 beats 8 in accuracy per second of training
    test_size: int = 500  # global test set, held out (stratified) before the pool is partitioned
    optimizer: str = "adam"  # "adam" (fresh state on every train() call) or "sgd" (as in DFedSAM)
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    feature_cache: bool = True  # cache frozen lower-layer outputs in memory and on disk

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("batch_size", "test_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def source(self) -> str:
        """What `TaskModel.load` reads: the local data file, or the contract's task."""
        return self.run.task if self.data is None else self.data
