"""The roles' SGD is torch.optim.SGD to the bit, and builds without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from actors.nets.sgd import MomentumSGD
from protocol.errors import ConfigError


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_steps_equal_torch_sgd_to_the_bit(momentum):
    ours, theirs = _net(0), _net(0)
    opt_ours = MomentumSGD(ours.parameters(), lr=0.07, momentum=momentum)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.07, momentum=momentum)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for step in range(6):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x * (step + 1)), y)
            loss.backward()
            if step == 2:  # a parameter without a gradient is skipped, its buffer kept
                model[3].bias.grad = None
            opt.step()
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if momentum:
            assert torch.equal(opt_ours.state[p]["momentum_buffer"],
                               opt_theirs.state[q]["momentum_buffer"])
        else:
            assert "momentum_buffer" not in opt_ours.state[p]


def test_a_restored_buffer_continues_as_torch_does():
    ours, theirs = _net(1), _net(1)
    opt_ours = MomentumSGD(ours.parameters(), lr=0.1, momentum=0.5)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.5)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        buf = torch.randn(p.shape)
        opt_ours.state[p]["momentum_buffer"] = buf.clone()
        opt_theirs.state[q]["momentum_buffer"] = buf.clone()
    x = torch.randn(4, 6)
    for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="lr"):
        MomentumSGD([torch.zeros(1, requires_grad=True)], lr=float("nan"))
    with pytest.raises(ConfigError, match="momentum"):
        MomentumSGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=-0.1)


def _dynamo_loaded_after(*stages: str) -> list[bool]:
    """Run ``stages`` in order in one fresh process; after each, is torch._dynamo loaded?"""
    probe = "print('torch._dynamo' in sys.modules)\n"
    code = "import sys\n" + "".join(stage + probe for stage in stages)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    seen = out.stdout.split()
    assert len(seen) == len(stages), out.stdout
    return [word == "True" for word in seen]


def test_a_training_step_imports_no_dynamo():
    """Nor does a fit step with ``attack.adam.Adam`` (the attacks' and validator's optimiser).
    One subprocess checks the three stages in turn (each process costs an import of torch,
    3-4 s on a slow host): an import is never undone, so what a stage finds loaded was loaded
    by it or before it."""
    after_torch, after_ours, after_sgd = _dynamo_loaded_after(
        "import torch\n",
        "from actors.nets.sgd import MomentumSGD\n"
        "m = torch.nn.Linear(3, 2); opt = MomentumSGD(m.parameters(), 0.1, 0.9)\n"
        "opt.zero_grad(); m(torch.ones(1, 3)).sum().backward(); opt.step()\n"
        "m.load_state_dict(m.state_dict())\n"
        "from attack.adam import Adam\n"
        "fit = Adam(m.parameters(), 0.01)\n"
        "fit.zero_grad(); m(torch.ones(1, 3)).sum().backward(); fit.step()\n",
        "torch.optim.SGD([torch.zeros(1)], lr=0.1)\n")
    if after_torch:
        pytest.skip("this torch imports torch._dynamo with torch itself: nothing to save")
    assert not after_ours
    if not after_sgd:
        pytest.skip("this torch's optimisers no longer import torch._dynamo: "
                    "actors.nets.sgd could give way to torch.optim.SGD")
