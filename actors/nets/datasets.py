"""The built-in real datasets, read from torchvision's on-disk layouts without torchvision.

One ``RealDataset`` entry per dataset in ``REAL_DATASETS``: where its files live under the
data folder, how to read one split, and which torchvision class downloads it. A new dataset in
one of these formats is one more entry here (and, for a new format, one reader in
``datasets_formats``).

torchvision is imported only to download (``download=True``, the optional ``vision`` extra);
reading never needs it, so files fetched once (or copied from another machine) work offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from actors.nets.datasets_formats import find_idx, read_cifar_batch, read_idx
from protocol.errors import DataUnavailableError

Images = NDArray[np.uint8]  # (N, C, H, W)
Labels = NDArray[np.int64]  # (N,) in 0..classes-1

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_EMNIST_LETTERS = 26


@dataclass(frozen=True)
class RealDataset:
    """One built-in dataset: its shape, its folder under ``--data-dir`` and its reader."""

    name: str  # the --dataset name
    input_shape: tuple[int, int, int]  # (C, H, W)
    classes: int
    folder: str  # relative to the data folder, as torchvision lays it out
    read: Callable[[Path, bool], tuple[Images, Labels]]  # (folder, train) -> images, labels
    torchvision_class: str  # the torchvision.datasets class that downloads it
    torchvision_kwargs: tuple[tuple[str, str], ...] = ()


def _idx_reader(prefix: str) -> Callable[[Path, bool], tuple[Images, Labels]]:
    """Reader of MNIST-style IDX files ``{prefix}{train|t10k}-{images-idx3|labels-idx1}-ubyte``."""

    def read(folder: Path, train: bool) -> tuple[Images, Labels]:
        part = "train" if train else "t10k"
        images = read_idx(_need(folder, f"{prefix}{part}-images-idx3-ubyte"), 3)
        labels = read_idx(_need(folder, f"{prefix}{part}-labels-idx1-ubyte"), 1)
        _check_counts(folder, images, labels)
        return images[:, None], labels.astype(np.int64)

    return read


def _read_emnist_letters(folder: Path, train: bool) -> tuple[Images, Labels]:
    part = "train" if train else "test"
    images = read_idx(_need(folder, f"emnist-letters-{part}-images-idx3-ubyte"), 3)
    labels = read_idx(_need(folder, f"emnist-letters-{part}-labels-idx1-ubyte"), 1)
    _check_counts(folder, images, labels)
    if len(labels) and (labels.min() < 1 or labels.max() > _EMNIST_LETTERS):
        raise DataUnavailableError(
            f"{folder}: EMNIST letters labels must be 1..{_EMNIST_LETTERS}, found "
            f"{labels.min()}..{labels.max()}"
        )
    # EMNIST stores every image transposed (column-major, from the NIST conversion); torchvision
    # hands them out that way too. Swapping H and W makes the letters upright, as MNIST digits.
    upright = np.ascontiguousarray(images.transpose(0, 2, 1))
    return upright[:, None], labels.astype(np.int64) - 1  # letters a..z: 1..26 -> 0..25


def _read_cifar10(folder: Path, train: bool) -> tuple[Images, Labels]:
    batches = [read_cifar_batch(_need(folder, name)) for name in (
        _CIFAR_TRAIN if train else _CIFAR_TEST
    )]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataUnavailableError(f"{folder}: CIFAR-10 labels must be 0..9")
    return images, labels


REAL_DATASETS: dict[str, RealDataset] = {
    d.name: d
    for d in (
        RealDataset("mnist", (1, 28, 28), 10, "MNIST/raw", _idx_reader(""), "MNIST"),
        RealDataset(
            "fashion-mnist", (1, 28, 28), 10, "FashionMNIST/raw", _idx_reader(""), "FashionMNIST"
        ),
        RealDataset(
            "emnist-letters", (1, 28, 28), _EMNIST_LETTERS, "EMNIST/raw", _read_emnist_letters,
            "EMNIST", (("split", "letters"),),
        ),
        RealDataset("cifar10", (3, 32, 32), 10, _CIFAR_FOLDER, _read_cifar10, "CIFAR10"),
    )
}


def read_real(
    dataset: RealDataset, data_dir: str | Path | None, download: bool, train: bool
) -> tuple[Images, Labels]:
    """Read one split of ``dataset`` from ``data_dir``, downloading it first only if asked."""
    if data_dir is None:
        raise DataUnavailableError(
            f"--dataset {dataset.name} needs --data-dir (a folder holding or receiving it)"
        )
    root = Path(data_dir)
    if download:
        _download(dataset, root)
    images, labels = dataset.read(root / dataset.folder, train)
    if images.shape[1:] != dataset.input_shape:
        raise DataUnavailableError(
            f"{root / dataset.folder}: images are {images.shape[1:]}, "
            f"{dataset.name} has {dataset.input_shape}"
        )
    return images, labels


def read_emnist_letters(
    root: str | Path, train: bool = True, download: bool = False
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """EMNIST letters from ``root``: uint8 (N, 28, 28) upright images, int64 labels 0..25 (a..z).

    ``root`` is the torchvision root (the folder holding ``EMNIST/raw``); ``download=True``
    fetches the files through torchvision first.
    """
    images, labels = read_real(REAL_DATASETS["emnist-letters"], root, download, train)
    return np.ascontiguousarray(images[:, 0]), labels


def _need(folder: Path, stem: str) -> Path:
    path = find_idx(folder, stem)
    if path is None:
        raise DataUnavailableError(
            f"{folder / stem} not found (nor .gz): put the files under --data-dir or pass "
            "--download"
        )
    return path


def _check_counts(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if len(images) != len(labels):
        raise DataUnavailableError(f"{folder}: {len(images)} images but {len(labels)} labels")


def _download(dataset: RealDataset, root: Path) -> None:
    try:
        import torchvision  # lazy: the optional 'vision' extra, needed only to download
    except ImportError as exc:
        raise DataUnavailableError(
            f"--download of {dataset.name} needs the 'vision' extra: pip install -e '.[vision]'"
        ) from exc
    opener = getattr(torchvision.datasets, dataset.torchvision_class)
    kwargs = dict(dataset.torchvision_kwargs)
    for train in (True, False):
        try:
            opener(root=str(root), train=train, download=True, **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:
            # A failed fetch is a RuntimeError or URLError (an OSError); a bad checksum too.
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataUnavailableError(
                f"could not download {dataset.name} into {root}: {reason}"
            ) from exc
