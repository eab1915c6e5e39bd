"""Reconstruction metrics on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack import metrics
from attack.validator import accuracy
from protocol.errors import ShapeError


def digits(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 784)).astype(np.float32)


def test_identical_images():
    x = digits()
    assert metrics.mse(x, x) == 0
    assert metrics.psnr(x, x) == 100.0
    assert metrics.ssim(x, x) == pytest.approx(1.0)


def test_known_mse_and_psnr():
    x = np.zeros((2, 784), np.float32)
    y = np.full((2, 784), 0.1, np.float32)
    assert metrics.mse(y, x) == pytest.approx(0.01, rel=1e-5)
    assert metrics.psnr(y, x) == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)


def test_ssim_orders_reconstructions_by_quality():
    x = digits(8)
    rng = np.random.default_rng(1)
    slight = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    heavy = np.clip(x + rng.normal(0, 0.5, x.shape), 0, 1)
    unrelated = digits(8, seed=9)
    assert metrics.ssim(slight, x) > metrics.ssim(heavy, x) > metrics.ssim(unrelated, x) - 0.05
    assert metrics.ssim(slight, x) > 0.8


def test_shape_and_nan_errors():
    with pytest.raises(ShapeError):
        metrics.ssim(digits(2), digits(3))
    with pytest.raises(ShapeError):
        metrics.mse(np.zeros((2, 10)), np.zeros((2, 10)))
    bad = digits(2)
    bad[0, 0] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        metrics.psnr(bad, digits(2))


def test_validator_accuracy_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # predicts the digit written in pixel 0 (times 10)
            return torch.nn.functional.one_hot((x[:, 0] * 10).long().clamp(0, 9), 10).float()

    x = np.zeros((4, 784), np.float32)
    x[:, 0] = [0.0, 0.1, 0.2, 0.3]
    assert accuracy(Fixed(), x, np.array([0, 1, 2, 3])) == 1.0
    assert accuracy(Fixed(), x, np.array([0, 1, 0, 0])) == 0.5
