"""The learning core: frozen base model + LoRA adapter, SAM local training, evaluation, data.

Blocking torch + peft code; never imports trio or libp2p. A peer's state is one flat float32 vector
(`TaskModel.dim` long); one `TaskModel` per process serves every simulated peer.
"""

from __future__ import annotations

from p2pfed.learn.config import LearnConfig
from p2pfed.learn.partition import partition, split_validation
from p2pfed.learn.task_model import EvalResult, TaskModel

__all__ = ["EvalResult", "LearnConfig", "TaskModel", "partition", "split_validation"]
