"""Every rung, the registry and the validator on shapes other than the default mlp's.

An easy colour case: 3x8x8 images of one coloured 3x3 square on black, through a small seeded
conv layer whose cut is a rank-4 feature map (4, 8, 8) (and through a whole net for the
output point). Each rung must return (N, 3, 8, 8) images and beat the mean image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from attack.auxiliary import load_aux
from attack.base import Rung, register_rung, rung_info, unregister_rung
from attack.conv import ConvInverse, SpatialInverse, build_decoder
from attack.ladder import (
    ATTACKS,
    attack_params,
    intercept_point,
    make_adapted_attack,
    make_attack,
    needs_weights,
)
from attack.local_oracle import local_answers
from attack.metrics import mse
from attack.validator import AdaptiveValidator, ValidatorCNN, accuracy, embed, train_validator
from protocol.errors import ConfigError, ShapeError

SHAPE = (3, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 8, 8) images, one random-colour 3x3 square each; label = its row band (0..2)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, *SHAPE), np.float32)
    rows, cols = rng.integers(0, 6, n), rng.integers(0, 6, n)
    colour = rng.uniform(0.3, 1.0, (n, 3)).astype(np.float32)
    for i in range(n):
        x[i, :, rows[i]:rows[i] + 3, cols[i]:cols[i] + 3] = colour[i][:, None, None]
    return x, rows // 2


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, _ = squares(700, 0)
    return x[:600], x[600:]


@pytest.fixture(scope="module")
def part() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()


@pytest.fixture(scope="module")
def whole(part: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(part, nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()


def _through(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _mean_mse(train: np.ndarray, held: np.ndarray) -> float:
    return mse(np.repeat(train.mean(0, keepdims=True), len(held), 0), held)


@pytest.mark.parametrize("name,epochs", [("mlp", 15), ("conv", 6)])
def test_blackbox_rungs_on_a_rank4_colour_cut(name: str, epochs: int, data, part) -> None:
    train, held = data
    acts = _through(part, train)
    assert acts.shape[1:] == (4, 8, 8)
    attack = make_attack(name, epochs=epochs, batch_size=32, seed=0)
    attack.fit(acts, train)  # the image shape comes from the auxiliary images
    assert attack.input_shape == SHAPE
    recon = attack.reconstruct(_through(part, held))
    assert recon.shape == held.shape and recon.dtype == np.float32
    assert recon.min() >= 0.0 and recon.max() <= 1.0
    assert mse(recon, held) < 0.5 * _mean_mse(train, held)
    assert attack.reconstruct(np.zeros((0, 4, 8, 8), np.float32)).shape == (0, *SHAPE)


def test_blackbox_run_queries_an_oracle(data, part) -> None:
    train, _ = data
    asked: list[tuple[int, ...]] = []

    def oracle(x: np.ndarray) -> np.ndarray:
        asked.append(x.shape)
        return _through(part, x)

    attack = make_attack("conv", epochs=1, seed=0, query_batch=256)
    attack.run(oracle, train)
    assert attack.queries_used == 600 and asked[0] == (256, *SHAPE)


def test_whitebox_on_a_rank4_colour_cut(data, part) -> None:
    _, held = data
    targets = held[:8]
    attack = make_attack("whitebox", part=part, input_shape=SHAPE, steps=150, seed=0)
    recon = attack.reconstruct(_through(part, targets))
    assert recon.shape == targets.shape
    assert mse(recon, targets) < 0.3 * _mean_mse(data[0], targets)
    with pytest.raises(RuntimeError):  # a wrong image shape cannot go through the part
        make_attack("whitebox", part=part, input_shape=(1, 8, 8), steps=2).reconstruct(
            _through(part, targets))


def test_whitebox_conv_trains_on_its_own_defended_answers(data, part) -> None:
    train, held = data
    attack = make_adapted_attack("whitebox-conv", ["dropout:rate=0.3"], epochs=5, seed=0,
                                 batch_size=32)
    answers = local_answers(part, ["dropout:rate=0.3"], train, seed=0)
    assert answers.shape == (600, 4, 8, 8) and (answers == 0).mean() > 0.3
    attack.fit(answers, train)
    recon = attack.reconstruct(local_answers(part, ["dropout:rate=0.3"], held, seed=1))
    assert recon.shape == held.shape
    assert mse(recon, held) < 0.7 * _mean_mse(train, held)
    assert local_answers(part, (), train[:0], seed=0).shape == (0, 4, 8, 8)


@pytest.mark.parametrize("name", ["output", "whitebox"])
def test_output_point_on_colour_images(name: str, data, whole) -> None:
    train, held = data
    assert intercept_point(name) == ("output" if name == "output" else "cut")
    logits = _through(whole, train)
    if name == "output":
        attack = make_attack(name, epochs=20, batch_size=32, seed=0)
        attack.fit(logits, train)
        recon = attack.reconstruct(_through(whole, held))
        assert recon.shape == held.shape
        # Five numbers say little, but the conditional mean beats the unconditional one.
        assert mse(recon, held) < _mean_mse(train, held)
    else:
        recon = make_attack(name, part=whole, input_shape=SHAPE, steps=60,
                            seed=0).reconstruct(logits[:4])
        assert recon.shape == (4, *SHAPE)
        got = _through(whole, recon)
        assert np.abs(got - logits[:4]).mean() < 0.2 * np.abs(logits[:4]).mean()


@pytest.mark.parametrize("out", [(1, 28, 28), (3, 32, 32), (3, 8, 8), (2, 7, 9)])
@pytest.mark.parametrize("cut", [(500,), (10,), (8, 24, 24), (8, 12, 12), (16, 8, 8),
                                 (16, 4, 4), (5, 3, 7), (4, 1, 1)])
def test_decoders_emit_any_image_shape(cut: tuple[int, ...], out: tuple[int, int, int]) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_decoder(cut, out, (8, 4, 4)).eval()
        with torch.no_grad():
            y = net(torch.randn(3, *cut))
    assert isinstance(net, SpatialInverse if len(cut) == 3 else ConvInverse)
    assert y.shape == (3, *out) and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


# --- the registry ------------------------------------------------------------------------


@dataclass
class MeanImage(Rung):
    """A toy rung: every reconstruction is the mean auxiliary image."""

    seed: int = 0
    mean: np.ndarray | None = None

    def fit(self, acts: np.ndarray, images: np.ndarray) -> None:
        self.adopt_shape(images)
        self.mean = images.mean(0)

    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        assert self.mean is not None
        return np.repeat(self.mean[None], len(acts), 0).astype(np.float32)


def test_a_toy_rung_registers_and_runs(data, part) -> None:
    register_rung("toy-mean", MeanImage)
    try:
        assert "toy-mean" in ATTACKS and not needs_weights("toy-mean")
        assert intercept_point("toy-mean") == "cut" and attack_params("toy-mean") == ("seed",
                                                                                        "mean")
        attack = make_adapted_attack("toy-mean", ["dropout:rate=0.5"], seed=3)
        attack.run(lambda x: _through(part, x), data[0])
        recon = attack.reconstruct(_through(part, data[1]))
        assert recon.shape == data[1].shape and attack.queries_used == 600
        with pytest.raises(ConfigError, match="already registered"):
            register_rung("toy-mean", MeanImage)
        with pytest.raises(ConfigError, match="takes no parameter"):
            make_attack("toy-mean", epochs=1)
    finally:
        unregister_rung("toy-mean")
    assert "toy-mean" not in ATTACKS
    with pytest.raises(ConfigError, match="unknown attack"):
        rung_info("toy-mean")


def test_register_rung_refuses_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="subclass"):
        register_rung("plain", object)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="intercept"):
        register_rung("elsewhere", MeanImage, intercept="input")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs_weights"):
        register_rung("local", MeanImage, trains_locally=True)
    assert "plain" not in ATTACKS and "local" not in ATTACKS


# --- auxiliary data and validator for other shapes ---------------------------------------


def test_aux_sets_follow_the_target_shape() -> None:
    noise = load_aux("noise", 20, 0, SHAPE)
    assert noise.shape == (20, *SHAPE) and noise.dtype == np.float32
    holdout = squares(30, 1)[0]
    np.testing.assert_array_equal(load_aux("holdout", 5, 0, SHAPE, holdout=holdout), holdout)
    assert load_aux("mnist-holdout", 5, 0, SHAPE, holdout=holdout).shape == holdout.shape
    with pytest.raises(ShapeError, match="3, 8, 8"):
        load_aux("holdout", 5, 0, SHAPE, holdout=holdout[:, :1])


@pytest.mark.parametrize("name", ["letters", "digits-uci", "emnist-letters"])
def test_mnist_style_aux_against_colour_targets_is_one_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_aux(name, 10, 0, (3, 32, 32))
    message = str(info.value)
    assert "\n" not in message and "1x28x28" in message and "3x32x32" in message


def test_emnist_letters_from_the_callers_arrays() -> None:
    letters = np.zeros((30, 28, 28), np.uint8)
    letters[:, 5, :] = 255
    x = load_aux("emnist-letters", 12, 0, (1, 28, 28), emnist=letters)
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32
    assert (x[:, 0, 5] == 1.0).all() and x.sum() == pytest.approx(12 * 28)
    with pytest.raises(ConfigError, match="exceeds"):
        load_aux("emnist-letters", 31, 0, (1, 28, 28), emnist=letters)
    with pytest.raises(ShapeError):
        load_aux("emnist-letters", 5, 0, (1, 28, 28), emnist=letters[:, :20])


def test_validator_adapts_to_shape_and_classes() -> None:
    x, y = squares(600, 2)
    model = train_validator(x[:500], y[:500], 3, seed=0, epochs=8)
    assert isinstance(model, AdaptiveValidator)
    assert model(torch.from_numpy(x[:2])).shape == (2, 3)
    assert accuracy(model, x[500:], y[500:]) > 0.8  # which band the square is in: easy
    assert embed(model, x[:7]).shape == (7, 128)
    with pytest.raises(ShapeError):
        train_validator(x, y, 2, seed=0, epochs=1)  # label 2 is out of range for 2 classes
    with pytest.raises(ShapeError):
        train_validator(x.reshape(600, -1), y, 3, seed=0, epochs=1)
    mnist = train_validator(np.zeros((4, 1, 28, 28), np.float32), np.arange(4), 10, epochs=1)
    assert type(mnist) is ValidatorCNN and embed(mnist, np.zeros((2, 1, 28, 28))).shape == (2, 128)
