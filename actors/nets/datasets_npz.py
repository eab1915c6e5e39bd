"""A user's own dataset: ``--dataset npz:PATH``, validated before anything trains on it.

The file holds two arrays: ``x`` images, N×H×W (grayscale) or N×C×H×W, either uint8 0-255 or
float 0-1; ``y`` integer labels 0..K-1, one per image. K (the number of classes) is the largest
label + 1, and every label 0..K-1 must occur at least once: a class with no example is almost
always an off-by-one (labels 1..K), and a classifier head with a class it never sees makes
validator accuracy and "chance" meaningless. Channels-last arrays (N×H×W×C) are refused rather
than guessed at. The file is opened with ``allow_pickle=False``: an object array is an error,
never code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol.errors import ConfigError, DataUnavailableError

_CHANNEL_COUNTS = (1, 3, 4)  # what a channel axis usually holds (grey, RGB, RGBA)
_MIN_CLASSES = 2


def read_npz(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Validated images float32 (N, C, H, W) in [0, 1] and labels int64 (N,) from ``path``."""
    where = f"--dataset npz:{path}"
    if not path.is_file():
        raise DataUnavailableError(f"{where}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive of x and y")
        with loaded:
            files = list(loaded.files)
            arrays = {key: loaded[key] for key in ("x", "y") if key in files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataUnavailableError(f"{where}: not a readable .npz file ({reason})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ConfigError(f"{where}: missing array {key!r} (has: {', '.join(files) or 'none'})")
    x, y = arrays["x"], arrays["y"]
    images = _images(x, where)
    labels = _labels(y, len(images), where)
    return images, labels


def _images(x: np.ndarray, where: str) -> NDArray[np.float32]:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise ConfigError(f"{where}: x must be N×H×W or N×C×H×W, got shape {x.shape}")
    elif x.shape[-1] in _CHANNEL_COUNTS and x.shape[1] not in _CHANNEL_COUNTS:
        raise ConfigError(
            f"{where}: x of shape {x.shape} looks channels-last; store it as N×C×H×W "
            "(x.transpose(0, 3, 1, 2))"
        )
    if min(x.shape) < 1:
        raise ConfigError(f"{where}: x has an empty axis, shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{where}: x must be uint8 0-255 or float 0-1, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ConfigError(f"{where}: x holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ConfigError(
            f"{where}: float x must lie in [0, 1], found {low:g}..{high:g} "
            "(store 0-255 images as uint8)"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, n_images: int, where: str) -> NDArray[np.int64]:
    if y.ndim != 1 or len(y) != n_images:
        raise ConfigError(f"{where}: y must have shape ({n_images},) to match x, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{where}: y must hold integer labels, got dtype {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise ConfigError(f"{where}: labels must be 0..K-1, found negative label {int(y.min())}")
    labels = y.astype(np.int64)
    classes = int(labels.max()) + 1 if len(labels) else 0
    if classes < _MIN_CLASSES:
        raise ConfigError(f"{where}: labels must name at least {_MIN_CLASSES} classes")
    absent = np.flatnonzero(np.bincount(labels, minlength=classes) == 0)
    if len(absent):
        shown = ", ".join(str(int(c)) for c in absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise ConfigError(
            f"{where}: labels must be 0..{classes - 1} with every class present; no example of "
            f"{shown} (labels counted from 1? subtract 1)"
        )
    return labels
