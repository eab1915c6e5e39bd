"""Reconstruction metrics on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack import metrics
from attack.validator import accuracy
from protocol.errors import ShapeError


def digits(n=4, seed=0, shape=(1, 28, 28)):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_identical_images():
    x = digits()
    assert metrics.mse(x, x) == 0
    assert metrics.psnr(x, x) == 100.0
    assert metrics.ssim(x, x) == pytest.approx(1.0)


def test_known_mse_and_psnr():
    x = np.zeros((2, 3, 8, 8), np.float32)
    y = np.full((2, 3, 8, 8), 0.1, np.float32)
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
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):  # flat rows name no image shape
        metrics.ssim(np.zeros((2, 784)), np.zeros((2, 784)))
    with pytest.raises(ShapeError, match="at least 7x7"):
        metrics.ssim(digits(2, shape=(1, 5, 5)), digits(2, shape=(1, 5, 5)))
    bad = digits(2)
    bad[0, 0] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        metrics.psnr(bad, digits(2))


def test_validator_accuracy_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # predicts the digit written in pixel 0 (times 10)
            pixel = x[:, 0, 0, 0]
            return torch.nn.functional.one_hot((pixel * 10).long().clamp(0, 9), 10).float()

    x = np.zeros((4, 1, 28, 28), np.float32)
    x[:, 0, 0, 0] = [0.0, 0.1, 0.2, 0.3]
    assert accuracy(Fixed(), x, np.array([0, 1, 2, 3])) == 1.0
    assert accuracy(Fixed(), x, np.array([0, 1, 0, 0])) == 0.5


def test_grayscale_metrics_are_the_per_image_2d_ones():
    """(N, 1, H, W) scores exactly as the 2-D grayscale images always did."""
    from skimage.metrics import structural_similarity

    x, y = digits(3), digits(3, seed=5)
    want = np.mean([structural_similarity(b[0].astype(np.float64), a[0].astype(np.float64),
                                          data_range=1.0) for a, b in zip(y, x, strict=True)])
    assert metrics.ssim(y, x) == pytest.approx(want, abs=1e-12)


def test_colour_ssim_is_the_mean_of_the_channels_ssim():
    from skimage.metrics import structural_similarity

    x = digits(3, shape=(3, 16, 12))
    y = np.clip(x + np.random.default_rng(2).normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    per_channel = [
        np.mean([structural_similarity(x[i, c].astype(np.float64), y[i, c].astype(np.float64),
                                       data_range=1.0) for c in range(3)])
        for i in range(3)
    ]
    assert metrics.ssim(y, x) == pytest.approx(float(np.mean(per_channel)), abs=1e-9)
    # Damage in one channel only costs a third of what it costs in all three.
    one = x.copy()
    one[:, 0] = y[:, 0]
    assert 1 - metrics.ssim(one, x) == pytest.approx((1 - metrics.ssim(y, x)) / 3, rel=0.2)


@pytest.mark.parametrize("shape", [(40, 1, 28, 28), (12, 3, 32, 32), (9, 2, 9, 31), (5, 1, 7, 7)])
def test_each_image_scores_exactly_as_its_own_scikit_image_call(shape):
    """The stacked SSIM and PSNR are scikit-image's, image by image, to the last bit."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(sum(shape))
    x = rng.random(shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.2, shape), -0.1, 1.1).astype(np.float32)  # clipped to [0, 1]
    y[0] = x[0]  # an exact reconstruction: SSIM 1, PSNR capped
    xs, ys = np.clip(x.astype(np.float64), 0, 1), np.clip(y.astype(np.float64), 0, 1)
    channel = {"channel_axis": 0} if shape[1] > 1 else {}
    pairs = list(zip(ys, xs, strict=True))
    want_ssim = [structural_similarity(b if channel else b[0], a if channel else a[0],
                                       data_range=1.0, **channel) for a, b in pairs]
    want_psnr = [metrics.PSNR_IDENTICAL if np.array_equal(a, b)
                 else peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in pairs]
    got_ssim, got_psnr = metrics.ssim_each(y, x), metrics.psnr_each(y, x)
    assert got_ssim.shape == got_psnr.shape == (shape[0],)
    assert np.array_equal(got_ssim, want_ssim)
    assert np.allclose(got_psnr, want_psnr, rtol=0, atol=1e-12)
    assert got_ssim[0] == 1.0 and got_psnr[0] == metrics.PSNR_IDENTICAL
    assert metrics.ssim(y, x) == float(np.mean(want_ssim))
