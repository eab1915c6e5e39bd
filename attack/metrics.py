"""How good is a reconstruction? MSE, PSNR and SSIM (scikit-image), and validator accuracy.

Images are (N, C, H, W) in [0, 1]. One channel is compared as a grayscale image (the numbers
the lab always reported for (N, 784) digits); several channels go to scikit-image with
``channel_axis``, whose SSIM is the mean of the per-channel SSIMs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from protocol.errors import ShapeError

#: scikit-image's default SSIM window: images need at least this many pixels a side.
SSIM_WINDOW = 7


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


def psnr(recon: np.ndarray, original: np.ndarray) -> float:
    """Mean per-image PSNR in dB for data range 1 (an identical image is capped at 100 dB)."""
    from skimage.metrics import peak_signal_noise_ratio  # see ssim: imported where used

    r, o = _pair(recon, original)
    vals = [
        100.0 if np.array_equal(a, b) else peak_signal_noise_ratio(b, a, data_range=1.0)
        for a, b in zip(r, o, strict=True)
    ]
    return float(np.mean(vals))


def ssim(recon: np.ndarray, original: np.ndarray) -> float:
    """Mean per-image SSIM (scikit-image, 7x7 uniform window, data range 1).

    Colour images: the mean over channels of each channel's SSIM (``channel_axis``).
    """
    # Imported here, not at the top: skimage.metrics pulls in scipy.stats (~0.8 s), and every
    # Ray worker that unpickles a role imports this module without ever scoring an image.
    from skimage.metrics import structural_similarity

    r, o = _pair(recon, original)
    if min(r.shape[2:]) < SSIM_WINDOW:
        raise ShapeError(f"SSIM needs images at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                         f"got {r.shape[2]}x{r.shape[3]}")
    if r.shape[1] == 1:
        pairs = zip(r[:, 0], o[:, 0], strict=True)
        return float(np.mean([structural_similarity(b, a, data_range=1.0) for a, b in pairs]))
    pairs = zip(r, o, strict=True)
    return float(np.mean([structural_similarity(b, a, data_range=1.0, channel_axis=0)
                          for a, b in pairs]))
