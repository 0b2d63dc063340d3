"""LoRA adapters on the top layers, their seeded initialisation, and the flat-vector view peers exchange.

shared-a: every peer of a run draws the same A from the run seed and freezes it; only B (zeros at start)
and the classifier head train. Then B·A is linear in the trainable vector, so averaging vectors averages
the weight deltas exactly. full: A and B both train (plain LoRA, averaging is then approximate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from p2pfed.config import RunManifest
from p2pfed.types import FloatVector

ADAPTER = "default"
_INIT_STREAM = 7  # torch generator stream of the seeded A / head initialisation


def lora_config(
    run: RunManifest,
    layer_regex: str,
    targets: tuple[str, ...],
    num_layers: int,
    head_modules: tuple[str, ...],
) -> LoraConfig:
    layers = "|".join(str(i) for i in range(num_layers - run.adapt_layers, num_layers))
    return LoraConfig(
        r=run.lora_rank,
        # peft annotates lora_alpha `int`, but only ever divides it by r (or sqrt(r)): a float is fine
        lora_alpha=run.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=0.0,
        target_modules=rf".*{layer_regex}\.({layers})\..*\b({'|'.join(targets)})",
        modules_to_save=list(head_modules) or None,
        bias="none",
    )


def attach_lora(model: torch.nn.Module, config: LoraConfig, run: RunManifest) -> PeftModel:
    """Wrap `model` in place with LoRA, initialise A and the head from the seed, set what trains."""
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(run.seed * 1_000_003 + _INIT_STREAM)
    with torch.no_grad():
        for _, module in sorted(lora_modules(peft_model).items()):
            # torch types a submodule's attribute `Tensor | Module`; a LoRA weight is a Parameter
            a = cast(torch.Tensor, module.lora_A[ADAPTER].weight)
            bound = 1.0 / math.sqrt(a.shape[1])  # kaiming_uniform(a=sqrt(5)), LoRA's default for A
            a.copy_(torch.rand(a.shape, generator=generator) * 2 * bound - bound)
            cast(torch.Tensor, module.lora_B[ADAPTER].weight).zero_()
            a.requires_grad_(run.lora_mode == "full")
        for name, module in sorted(peft_model.named_modules()):
            if name.endswith(f"modules_to_save.{ADAPTER}") and isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
                if module.bias is not None:
                    module.bias.zero_()
    peft_model.eval()
    return peft_model


def lora_modules(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@dataclass(frozen=True)
class FlatSchema:
    """The trainable tensors of a model in a fixed order, viewed as one float32 vector."""

    names: tuple[str, ...]
    params: tuple[torch.nn.Parameter, ...]

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlatSchema:
        pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return cls(tuple(n for n, _ in pairs), tuple(p for _, p in pairs))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(p.shape) for p in self.params)

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.params)

    def flatten(self) -> FloatVector:
        with torch.no_grad():
            return torch.cat([p.reshape(-1) for p in self.params]).numpy().astype(np.float32)

    def unflatten(self, vector: FloatVector) -> list[torch.Tensor]:
        flat = torch.as_tensor(np.ascontiguousarray(vector, dtype=np.float32))
        if flat.shape != (self.dim,):
            raise ValueError(f"vector has shape {tuple(flat.shape)}, expected ({self.dim},)")
        pieces = torch.split(flat, [p.numel() for p in self.params])
        return [
            piece.reshape(p.shape).clone() for piece, p in zip(pieces, self.params, strict=True)
        ]

    def load(self, vector: FloatVector) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, self.unflatten(vector), strict=True):
                p.copy_(value)


def weight_deltas(
    model: torch.nn.Module, schema: FlatSchema, vector: FloatVector
) -> dict[str, torch.Tensor]:
    """Effective ΔW = scale·B·A of every adapted module for `vector` (A from the vector in full mode)."""
    values = dict(zip(schema.names, schema.unflatten(vector), strict=True))
    deltas = {}
    for name, module in sorted(lora_modules(model).items()):
        a_param = cast(torch.Tensor, module.lora_A[ADAPTER].weight)
        b_param = cast(torch.Tensor, module.lora_B[ADAPTER].weight)
        a = values.get(f"{name}.lora_A.{ADAPTER}.weight", a_param.detach())
        b = values.get(f"{name}.lora_B.{ADAPTER}.weight", b_param.detach())
        deltas[name.removeprefix("base_model.model.")] = module.scaling[ADAPTER] * (b @ a)
    return deltas
