"""Sharpness-aware local steps (SAM, as in DFedSAM) and the metrics of evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
import torch


def sam_perturbation(grads: Sequence[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """ε = ρ·g/‖g‖ over all tensors jointly (zero when ρ = 0 or g = 0)."""
    # sum() is typed `Tensor | Literal[0]`: 0 only for no grads at all, where torch.sqrt fails anyway
    norm = torch.sqrt(cast(torch.Tensor, sum((g.double() ** 2).sum() for g in grads)))
    if rho == 0 or float(norm) == 0.0:
        return [torch.zeros_like(g) for g in grads]
    return [g * (rho / norm).to(g.dtype) for g in grads]


def sam_gradients(
    params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor], rho: float
) -> float:
    """Set each param's .grad to ∇L(w + ε) with ε = ρ·∇L(w)/‖∇L(w)‖ (∇L(w) when ρ = 0).

    The params are left at w; the caller's optimizer then steps with these gradients. Returns L(w).
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params))
    if rho > 0:
        eps = sam_perturbation(grads, rho)
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        grads = torch.autograd.grad(loss_fn(), list(params))
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return float(loss.detach())


def make_optimizer(
    params: Sequence[torch.nn.Parameter], name: str, lr: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def per_class_f1(
    predicted: npt.NDArray[np.int64], true: npt.NDArray[np.int64], num_classes: int
) -> npt.NDArray[np.float32]:
    """F1 of every class; a class absent from both predictions and truth scores 1 (nothing to get wrong)."""
    return per_class_f1_batch(predicted[None], true, num_classes)[0]


def per_class_f1_batch(
    predicted: npt.NDArray[np.int64], true: npt.NDArray[np.int64], num_classes: int
) -> npt.NDArray[np.float32]:
    """(m, n) predictions of m candidates on the same n rows -> (m, c) per-class F1."""
    onehot_pred = predicted[..., None] == np.arange(num_classes)  # (m, n, c)
    onehot_true = (true[:, None] == np.arange(num_classes))[None]  # (1, n, c)
    tp = (onehot_pred & onehot_true).sum(axis=1)
    denominator = onehot_pred.sum(axis=1) + onehot_true.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)
    return f1.astype(np.float32)
