"""An adapter directory that p2pfed wrote, loaded on its base model with plain transformers + peft.

The directory is a standard peft adapter (adapter_config.json + adapter_model.safetensors) plus
`p2pfed.json`, which names the base model and pins its content hash: loading refuses another base,
since the adapter's deltas mean nothing on other weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from p2pfed.errors import ConfigError
from p2pfed.learn.models import resolve_model

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

HEAD_FILE = "p2pfed.json"  # written by TaskModel.save_adapter


def adapter_facts(adapter_dir: Path) -> dict[str, object]:
    """The run facts saved next to the adapter; ConfigError if `adapter_dir` is not p2pfed's."""
    path = adapter_dir / HEAD_FILE
    if not path.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"{adapter_dir} is not an adapter directory written by p2pfed (no {HEAD_FILE} or "
            "adapter_config.json): pass runs/<run>/adapters/peer-NN or a join node's adapter/"
        )
    try:
        facts = json.loads(path.read_text())
        model = facts["learn_config"]["run"]["model"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is unreadable ({e}): rewrite the adapter with p2pfed") from None
    if not isinstance(model, str):
        raise ConfigError(f"{path}: the base model name is not a string")
    return dict(facts)


def load_adapter(
    adapter_dir: Path, *, progress: Callable[[str], None] | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """(base causal LM + adapter, tokenizer), in eval mode on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    facts = adapter_facts(adapter_dir)
    run = facts["learn_config"]["run"]  # type: ignore[index]
    files = resolve_model(run["model"], progress=progress)
    if facts.get("base_hash") and facts["base_hash"] != files.base_hash:
        raise ConfigError(
            f"{adapter_dir} was trained on base weights {str(facts['base_hash'])[:12]}…, but "
            f"{run['model']} here is {files.base_hash[:12]}…: install the run's model version"
        )
    if not files.causal:
        raise ConfigError(f"{run['model']} is not a causal LM: generate and export are for chat adapters")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = AutoModelForCausalLM.from_pretrained(files.directory, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model, AutoTokenizer.from_pretrained(files.directory)


def merge_adapter(
    adapter_dir: Path, out: Path, *, progress: Callable[[str], None] | None = None
) -> None:
    """Write base + adapter with the LoRA deltas merged into the weights, as a plain HF model directory.

    Written into a temporary sibling and renamed, so that `out` is either complete or absent."""
    if out.exists():
        raise ConfigError(f"{out} already exists: choose a new directory for the merged model")
    model, tokenizer = load_adapter(adapter_dir, progress=progress)
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-merge-", dir=out.parent))
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
