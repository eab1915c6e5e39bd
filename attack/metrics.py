"""How good is a reconstruction? MSE, PSNR and SSIM (scikit-image's), and validator accuracy.

Images are (N, C, H, W) in [0, 1]. One channel is compared as a grayscale image (the numbers
the lab always reported for (N, 784) digits); several channels as scikit-image does with
``channel_axis``: the mean of the per-channel SSIMs.

SSIM and PSNR are scikit-image's (``structural_similarity`` with its defaults: a 7x7 uniform
window, sample covariance, K1 = 0.01, K2 = 0.03, the window's radius cropped; and
``peak_signal_noise_ratio``), evaluated on the whole stack of images at once: scikit-image takes
one image per call, and for 28x28 digits its per-call overhead is nearly all of the 0.37 ms a
call costs, so a run's scoring (a few thousand images) spent seconds there. The filters are
scipy's, as scikit-image's, run along the two image axes of the (N C, H, W) stack, which gives
each image exactly the numbers its own call would; ``tests/test_metrics.py`` holds every
per-image value to scikit-image's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from protocol.errors import ShapeError

#: scikit-image's default SSIM window: images need at least this many pixels a side.
SSIM_WINDOW = 7
#: scikit-image's SSIM constants, for data range 1: C1 = (K1 R)^2, C2 = (K2 R)^2.
_K1, _K2, _DATA_RANGE = 0.01, 0.03, 1.0
#: PSNR of an image identical to its original (scikit-image's would be infinite).
PSNR_IDENTICAL = 100.0


@dataclass(frozen=True)
class AttackMetrics:
    mse: float
    psnr: float
    ssim: float
    validator_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ShapeError(f"images must be (N, C, H, W), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ShapeError("images contain NaN/inf")
    return np.clip(x, 0.0, 1.0)


def _pair(recon: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, o = _as_images(recon), _as_images(original)
    if r.shape != o.shape:
        raise ShapeError(f"reconstructions {r.shape} and originals {o.shape} differ")
    if len(r) == 0:
        raise ShapeError("no images to compare")
    return r, o


def mse(recon: np.ndarray, original: np.ndarray) -> float:
    r, o = _pair(recon, original)
    return float(np.mean((r - o) ** 2))


def mse_each(recon: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(N,) mean squared error per image."""
    return _mse_rows(*_pair(recon, original))


def psnr_each(recon: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(N,) PSNR in dB for data range 1, per image (an identical image: ``PSNR_IDENTICAL``)."""
    return _psnr_of_mse(_mse_rows(*_pair(recon, original)))


def psnr(recon: np.ndarray, original: np.ndarray) -> float:
    """Mean per-image PSNR in dB for data range 1 (an identical image is capped at 100 dB)."""
    return float(np.mean(psnr_each(recon, original)))


def ssim_each(recon: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(N,) SSIM per image: scikit-image's ``structural_similarity(original, recon,
    data_range=1)`` of each, for colour images the mean over channels (``channel_axis``)."""
    return _ssim_rows(*_pair(recon, original))


def each(recon: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MSE, PSNR, SSIM) per image, from one check and conversion of the pair (a scorecard's)."""
    r, o = _pair(recon, original)
    err = _mse_rows(r, o)
    return err, _psnr_of_mse(err), _ssim_rows(r, o)


def _mse_rows(r: np.ndarray, o: np.ndarray) -> np.ndarray:
    return ((r - o) ** 2).reshape(len(r), -1).mean(axis=1, dtype=np.float64)


def _psnr_of_mse(err: np.ndarray) -> np.ndarray:
    """scikit-image's PSNR, 10 log10(R^2 / MSE), from each image's MSE."""
    with np.errstate(divide="ignore"):
        db = 10 * np.log10((_DATA_RANGE ** 2) / err)
    return np.where(err == 0, PSNR_IDENTICAL, db)


def _ssim_rows(r: np.ndarray, o: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter  # scikit-image's filter; scipy is its dependency

    n, c, h, w = r.shape
    if min(h, w) < SSIM_WINDOW:
        raise ShapeError(f"SSIM needs images at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                         f"got {h}x{w}")
    im1, im2 = o.reshape(n * c, h, w), r.reshape(n * c, h, w)
    size = (1, SSIM_WINDOW, SSIM_WINDOW)  # a size-1 axis is not filtered: images stay apart
    ux, uy = uniform_filter(im1, size=size), uniform_filter(im2, size=size)
    uxx = uniform_filter(im1 * im1, size=size)
    uyy = uniform_filter(im2 * im2, size=size)
    uxy = uniform_filter(im1 * im2, size=size)
    window = SSIM_WINDOW ** 2
    cov_norm = window / (window - 1)  # sample covariance, as scikit-image
    vx, vy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (_K1 * _DATA_RANGE) ** 2, (_K2 * _DATA_RANGE) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux ** 2 + uy ** 2 + c1, vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    pad = (SSIM_WINDOW - 1) // 2
    # Each image's mean over its own cropped map, as scikit-image takes it (one 2-D view at a
    # time, so the float64 sum runs in the same order).
    per = np.array([m[pad:h - pad, pad:w - pad].mean(dtype=np.float64) for m in s])
    return per.reshape(n, c).mean(axis=1) if c > 1 else per


def ssim(recon: np.ndarray, original: np.ndarray) -> float:
    """Mean per-image SSIM (scikit-image's, 7x7 uniform window, data range 1).

    Colour images: the mean over channels of each channel's SSIM (``channel_axis``).
    """
    return float(np.mean(ssim_each(recon, original)))
