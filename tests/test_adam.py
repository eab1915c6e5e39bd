"""The fits' Adam is torch.optim.Adam(fused=True) to the bit (no torch._dynamo: test_sgd)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attack.adam import Adam
from protocol.errors import ConfigError


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.BatchNorm1d(3))


@pytest.mark.parametrize("lr", [1e-3, 2e-2])
def test_steps_equal_torch_adam_to_the_bit(lr):
    ours, theirs = _net(0), _net(0)
    frozen = next(ours.parameters()), next(theirs.parameters())
    opt_ours, opt_theirs = Adam(ours.parameters(), lr=lr), torch.optim.Adam(theirs.parameters(),
                                                                             lr=lr, fused=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(60):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if step % 7 == 3:  # a parameter without a gradient this step is left alone
                frozen[model is theirs].grad = None
            opt.step()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    p, q = next(ours.parameters()), next(theirs.parameters())
    assert torch.equal(opt_ours.state[p]["exp_avg_sq"], opt_theirs.state[q]["exp_avg_sq"])
    assert opt_ours.state[p]["step"].item() == opt_theirs.state[q]["step"].item() < 60


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="lr"):
        Adam(nn.Linear(2, 2).parameters(), lr=float("nan"))
    with pytest.raises(ConfigError, match="betas"):
        Adam(nn.Linear(2, 2).parameters(), betas=(1.0, 0.999))
    with pytest.raises(ConfigError, match="empty"):
        Adam([])
