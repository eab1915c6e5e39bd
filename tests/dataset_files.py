"""Writers of small datasets in torchvision's real on-disk formats, for the loader tests.

IDX files exactly as LeCun's (big-endian header, magic 0x00 0x00 0x08 rank), optionally gzipped
as torchvision downloads them; CIFAR-10 batches as the "python version" files are: Python 2
pickles (protocol 2, Python 2 byte strings, numpy arrays reconstructed through
``numpy.core.multiarray._reconstruct``) of dicts with ``data``, ``labels``, ``batch_label`` and
``filenames``, plus ``batches.meta``.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_UBYTE = 0x08
CIFAR_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write uint8 ``array`` as an IDX file (``path`` + ``.gz`` when gzipped)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_like(
    root: Path,
    folder: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    gz: bool = False,
    prefix: str = "",
    test_part: str = "t10k",
) -> Path:
    """The MNIST layout: ``root/folder/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    EMNIST uses ``prefix="emnist-letters-"`` and ``test_part="test"``; the images are written
    as given (for EMNIST, pass them already transposed, as the real files store them).
    """
    raw = root / folder / "raw"
    for part, (images, labels) in (("train", train), (test_part, test)):
        write_idx(raw / f"{prefix}{part}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}{part}-labels-idx1-ubyte", labels, gz)
    return raw


class _Python2Pickler(pickle._Pickler):  # type: ignore[misc] - the pure-Python pickler
    """Pickles ``bytes`` and ``str`` as Python 2 byte strings, as cPickle wrote CIFAR-10."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_string(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_string
    dispatch[str] = _save_py2_string


def python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    # Python 2's numpy lived at numpy.core; GLOBAL names are newline-terminated text, so the
    # module can be renamed in place.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(data: np.ndarray, labels: list[int], label: str) -> dict[bytes, object]:
    """A batch dict with the real files' keys and value types."""
    return {
        b"batch_label": label.encode(),
        b"labels": list(labels),
        b"data": np.ascontiguousarray(data, dtype=np.uint8),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
    }


def write_cifar10(
    root: Path,
    train: list[tuple[np.ndarray, list[int]]],
    test: tuple[np.ndarray, list[int]],
) -> Path:
    """``root/cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch``, ``batches.meta``.

    Each batch's ``data`` is uint8 (N, 3072): 1024 red, 1024 green, 1024 blue values per row.
    """
    assert len(train) == 5, "CIFAR-10 has five training batches"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (data, labels) in enumerate(train, start=1):
        batch = cifar_batch(data, labels, f"training batch {i} of 5")
        (folder / f"data_batch_{i}").write_bytes(python2_pickle(batch))
    (folder / "test_batch").write_bytes(
        python2_pickle(cifar_batch(test[0], test[1], "testing batch 1 of 1"))
    )
    meta = {
        b"num_cases_per_batch": len(train[0][1]),
        b"label_names": [name.encode() for name in CIFAR_LABELS],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(python2_pickle(meta))
    return folder
