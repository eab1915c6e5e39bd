"""The two on-disk file formats of the torchvision datasets, read without torchvision.

``read_idx``       LeCun's IDX files (MNIST, Fashion-MNIST, EMNIST), plain or gzipped.
``read_cifar_batch`` one CIFAR-10 "python version" batch: a Python 2 pickle of a dict, read
                   through ``RestrictedUnpickler``, which can build numpy arrays and nothing else.

Every malformed file is a one-line ``DataUnavailableError`` naming it; a pickle that asks for
anything but numpy array reconstruction is an ``UnsafePickleError``.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protocol.errors import DataUnavailableError

# IDX type byte -> numpy dtype; the datasets read here only ever use 0x08 (unsigned byte).
_IDX_UBYTE = 0x08
_IDX_HEADER = 4
_CIFAR_SIDE = 32
_CIFAR_CHANNELS = 3


class UnsafePickleError(DataUnavailableError):
    """A pickle asked to import something other than what a CIFAR batch needs."""


# --- IDX -----------------------------------------------------------------------------------------


def find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` if present, else ``folder/stem.gz`` (torchvision's download), else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int) -> NDArray[np.uint8]:
    """Read an unsigned-byte IDX file of rank ``ndim`` (3: images N×H×W, 1: labels N)."""
    raw = _read_bytes(path)
    if len(raw) < _IDX_HEADER or raw[0] != 0 or raw[1] != 0:
        raise DataUnavailableError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataUnavailableError(
            f"{path}: IDX type 0x{raw[2]:02x} rank {raw[3]}, expected unsigned bytes of rank {ndim}"
        )
    header = _IDX_HEADER + 4 * ndim
    if len(raw) < header:
        raise DataUnavailableError(f"{path}: IDX header truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=_IDX_HEADER))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataUnavailableError(
            f"{path}: IDX dimensions {dims} need {expected} bytes, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (OSError) or EOFError
        raise DataUnavailableError(f"{path}: cannot read ({exc})") from None


# --- CIFAR-10 pickles ----------------------------------------------------------------------------


def _numpy_reconstruct() -> object:
    # The function numpy's own array pickles call (numpy._core.multiarray._reconstruct), taken
    # from numpy itself rather than imported by a path that moved between numpy 1 and 2.
    return np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the three globals a pickled numpy array refers to.

    Why this is safe: unpickling runs code only through globals. Every callable a pickle can
    invoke (REDUCE, NEWOBJ, INST, OBJ, BUILD's ``__setstate__``, copyreg extensions) must first
    be fetched with ``find_class``; dicts, lists, tuples, strings, bytes and numbers are built by
    opcodes and call nothing. So allowing exactly numpy's ``_reconstruct`` (which makes an empty
    ndarray and refuses a subtype that is not one), ``numpy.ndarray`` and ``numpy.dtype`` (whose
    ``__setstate__`` only parse a shape, a dtype description and raw bytes) leaves a pickle no
    way to reach ``os.system``, ``eval``, ``builtins.getattr`` or any import. Persistent ids are
    refused too (no ``persistent_load``). The result is then checked for the exact structure a
    CIFAR batch has before anything uses it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 (how the CIFAR files name it)
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise UnsafePickleError(
                f"pickle refers to {module}.{name}: only numpy arrays are allowed in a CIFAR batch"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid: object) -> Any:
        raise UnsafePickleError("pickle uses persistent ids: not a CIFAR batch")


def load_restricted_pickle(path: Path) -> object:
    """Unpickle ``path`` with ``RestrictedUnpickler`` (Python 2 strings decoded as latin-1)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataUnavailableError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        # latin-1, as torchvision does: Python 2 byte strings (numpy's raw array data included)
        # come back byte for byte.
        return RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a bad data file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataUnavailableError(f"{path}: not a readable CIFAR batch ({reason})") from None


def read_cifar_batch(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """One CIFAR-10 batch as uint8 (N, 3, 32, 32) images and int64 (N,) labels."""
    batch = load_restricted_pickle(path)
    if not isinstance(batch, dict):
        raise DataUnavailableError(f"{path}: a CIFAR batch is a dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    pixels = _CIFAR_CHANNELS * _CIFAR_SIDE * _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != pixels
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataUnavailableError(f"{path}: 'data' must be uint8 (N, {pixels}), got {desc}")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataUnavailableError(f"{path}: 'labels' must be a list of integers")
    if len(labels) != len(data):
        raise DataUnavailableError(f"{path}: {len(data)} images but {len(labels)} labels")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32: exactly
    # a C-order (3, 32, 32) image.
    images = data.reshape(len(data), _CIFAR_CHANNELS, _CIFAR_SIDE, _CIFAR_SIDE)
    return images, np.asarray(labels, dtype=np.int64)


def _field(batch: dict[Any, Any], key: str, path: Path) -> object:
    # Decoded as latin-1 the keys are str; a file read elsewhere with encoding="bytes" and
    # pickled again would have bytes keys. Either spelling is the same field.
    for spelling in (key, key.encode()):
        if spelling in batch:
            return batch[spelling]
    raise DataUnavailableError(f"{path}: CIFAR batch has no {key!r} entry")
