from __future__ import annotations

import math

import pytest
import torch

from p2pfed.learn.train import per_class_f1, per_class_f1_batch, sam_gradients, sam_perturbation


def quadratic(w: torch.Tensor) -> torch.Tensor:
    # L(w) = 0.5 * (w0^2 + 4 w1^2), gradient (w0, 4 w1)
    return 0.5 * (w[0] ** 2 + 4 * w[1] ** 2)


def test_sam_step_on_a_quadratic_matches_hand_computation():
    w = torch.tensor([3.0, 1.0], requires_grad=True)
    loss = sam_gradients([w], lambda: quadratic(w), rho=0.5)
    # g = (3, 4), |g| = 5, eps = 0.5 * (0.6, 0.8) = (0.3, 0.4); grad at w + eps = (3.3, 4 * 1.4)
    assert loss == pytest.approx(0.5 * (9 + 4))
    assert torch.allclose(w.grad, torch.tensor([3.3, 5.6]))
    assert torch.equal(w.detach(), torch.tensor([3.0, 1.0]))  # w itself is restored
    torch.optim.SGD([w], lr=0.1).step()
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.33, 1.0 - 0.56]))


def test_rho_zero_is_a_plain_gradient_step():
    w = torch.tensor([3.0, 1.0], requires_grad=True)
    sam_gradients([w], lambda: quadratic(w), rho=0.0)
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0]))


def test_perturbation_has_norm_rho_across_all_tensors():
    eps = sam_perturbation([torch.tensor([3.0]), torch.tensor([[4.0]])], rho=2.0)
    assert math.sqrt(sum(float((e**2).sum()) for e in eps)) == pytest.approx(2.0)
    assert [float(e.sum()) for e in eps] == pytest.approx([1.2, 1.6])
    assert all(float(e.abs().sum()) == 0 for e in sam_perturbation([torch.zeros(3)], rho=1.0))


def test_per_class_f1():
    import numpy as np

    predicted = np.array([0, 0, 1, 1, 2])
    true = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, pred 2, true 2 -> 0.5; class 1: tp 2, pred 2, true 3 -> 0.8; class 2: tp 0 -> 0;
    # class 3 absent everywhere -> 1
    assert per_class_f1(predicted, true, 4) == pytest.approx([0.5, 0.8, 0.0, 1.0])
    batch = per_class_f1_batch(np.stack([predicted, true]), true, 4)
    assert batch[1] == pytest.approx([1.0, 1.0, 1.0, 1.0])
