"""FSHA's server side as a plain class (no Ray, no wire): shapes, errors, and that it hijacks.

The hijack test plays the owner itself: the default network's first part, trained by SGD (the
lab's lr 0.1, momentum 0.9) on nothing but the gradients ``step`` returns, for a few hundred
batches of the real digits; the attacker's public data are the 500 holdout digits (the
authors' setting: public data from the same distribution); the pilot starts from the first
part's initial weights, as the lab's malicious server's does. Its decoder must then rebuild
unseen test digits far better than the mean image does, and a validator must read them.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch
from torch import nn

from actors.malicious import LAB_SETTINGS
from attack import metrics, validator
from attack.fsha import FeatureSpaceHijacker, fresh_copy
from protocol.errors import ConfigError, ShapeError
from tests.helpers import mlp_net

SHAPE = (1, 28, 28)



def _aux(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


@pytest.mark.parametrize("cut", [(500,), (8, 12, 12)])
def test_step_and_reconstruct_keep_shapes(cut: tuple[int, ...]) -> None:
    fsha = FeatureSpaceHijacker(SHAPE, cut, _aux(), seed=0, batch_size=8)
    h = np.random.default_rng(1).random((8, *cut), dtype=np.float32)
    grad = fsha.step(h)
    assert grad.shape == h.shape and grad.dtype == np.float32
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    out = fsha.reconstruct(h[:3])
    assert out.shape == (3, *SHAPE) and out.min() >= 0 and out.max() <= 1
    assert fsha.reconstruct(h[:0]).shape == (0, *SHAPE)
    assert fsha.steps == 1 and {"owner_loss", "critic_loss", "autoencoder_mse"} <= set(fsha.last)


def test_seeded_runs_agree_and_seeds_differ() -> None:
    h = np.random.default_rng(1).random((8, 500), dtype=np.float32)
    grads = [FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=s, batch_size=8).step(h)
             for s in (0, 0, 1)]
    np.testing.assert_array_equal(grads[0], grads[1])
    assert not np.allclose(grads[0], grads[2])


def test_fresh_copy_keeps_layers_not_weights() -> None:
    owner = mlp_net(0).owner
    copy = fresh_copy(owner, seed=5)
    assert [type(m) for m in copy.modules()] == [type(m) for m in owner.modules()]
    assert not torch.equal(copy.fc1.weight, owner.fc1.weight)
    assert torch.equal(fresh_copy(owner, seed=5).fc1.weight, copy.fc1.weight)


def test_a_pilot_at_rate_zero_stays_put_while_the_decoder_learns() -> None:
    start = mlp_net(0).owner_part()
    frozen, trained = (FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=0, batch_size=8,
                                            warmup=3, encoder_factory=lambda: deepcopy(start),
                                            **rates) for rates in
                       ({"pilot_lr": 0.0, "warmup_pilot_lr": 0.0}, {}))
    h = np.random.default_rng(1).random((8, 500), dtype=np.float32)
    decoder_before = [p.detach().clone() for p in frozen.decoder.parameters()]
    for fsha in (frozen, trained):
        fsha.step(h)
    for got, want in zip(frozen.encoder.parameters(), start.parameters(), strict=True):
        assert torch.equal(got, want)
    assert not all(torch.equal(got, want) for got, want in
                   zip(trained.encoder.parameters(), start.parameters(), strict=True))
    assert not all(torch.equal(got, was) for got, was in
                   zip(frozen.decoder.parameters(), decoder_before, strict=True))
    with pytest.raises(ConfigError, match="warmup_pilot_lr"):
        FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=0, warmup_pilot_lr=-1.0)


def test_bad_input_is_a_typed_error() -> None:
    fsha = FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=0)
    with pytest.raises(ShapeError, match="500"):
        fsha.step(np.zeros((4, 499), np.float32))
    with pytest.raises(ShapeError):
        fsha.step(np.zeros((4, 500), np.int64))
    with pytest.raises(ShapeError, match="auxiliary"):
        FeatureSpaceHijacker(SHAPE, (500,), _aux()[:, :, :27], seed=0)
    with pytest.raises(ConfigError, match="grad_scale"):
        FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=0, grad_scale=float("nan"))
    with pytest.raises(ConfigError, match="encoder"):
        FeatureSpaceHijacker(SHAPE, (500,), _aux(), seed=0,
                             encoder_factory=lambda: nn.Sequential(nn.Flatten(),
                                                                   nn.Linear(784, 10)))


def _hijack(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Train the mlp's first part on FSHA's gradients; reconstruct 200 unseen test digits."""
    from actors.data import load_target

    data = load_target(seed=0)
    net = mlp_net(seed)
    fsha = FeatureSpaceHijacker(SHAPE, net.cut_shape, data.holdout.x, seed=seed,
                                encoder_factory=net.owner_part, **FAST)
    owner = net.owner_part()
    opt = torch.optim.SGD(owner.parameters(), lr=0.1, momentum=0.9)
    x = torch.from_numpy(data.train.x)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        h = owner(x[torch.randint(len(x), (64,), generator=gen)])
        grad = fsha.step(h.detach().numpy())
        opt.zero_grad()
        h.backward(torch.from_numpy(grad))
        opt.step()
    test_x, test_y = data.test.x[:200], data.test.y[:200]
    with torch.no_grad():
        recon = fsha.reconstruct(owner(torch.from_numpy(test_x)).numpy())
    mean_ssim = metrics.ssim(np.repeat(data.train.x.mean(0, keepdims=True), 200, 0), test_x)
    return recon, test_x, test_y, mean_ssim


#: The lab's settings for the malicious server (actors.malicious), a fifth of the warm-up
#: (measured: 200 hijacked steps then rebuild the 200 digits at SSIM 0.52 against the mean
#: image's 0.18, validator 69%).
FAST = LAB_SETTINGS | {"warmup": 100}


def test_fsha_rebuilds_digits_from_a_hijacked_first_part() -> None:
    from actors.data import load_target

    recon, x, y, mean_ssim = _hijack(steps=200)
    ssim = metrics.ssim(recon, x)
    assert ssim > mean_ssim + 0.2, (ssim, mean_ssim)
    data = load_target(seed=0)
    judge = validator.train_validator(data.train.x, data.train.y, 10, seed=0, epochs=1)
    assert validator.accuracy(judge, recon, y) > 0.5
