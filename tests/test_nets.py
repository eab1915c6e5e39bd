"""The split-network descriptor: built-ins, cuts, a user's own network, state dicts."""

from __future__ import annotations

import copy
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from actors.nets.descriptor import SplitNetwork, StateLayout
from actors.nets.shareable import check_shareable
from actors.nets.zoo import BUILTINS, ModelSpec, build_network, cuts, parse_model, split_sequential
from actors.owner import DataOwner, TrainConfig
from actors.server import ComputeServer
from actors.wire import LocalTransport, Network
from protocol.errors import ConfigError, ShapeError


def test_cnn_cuts_are_he_et_al_layer_names_with_dry_run_shapes():
    found = {n.cut: n.cut_shape for n in cuts(ModelSpec("cnn"))}
    assert found["conv1"] == (8, 24, 24) and found["pool1"] == (8, 12, 12)
    assert found["relu2"] == (16, 8, 8) and found["fc2"] == (84,)
    assert "fc3" not in found  # the server needs a layer


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_cut_computes_the_whole_network(name):
    full = None
    x = torch.rand(4, *BUILTINS[name].input_shape, generator=torch.Generator().manual_seed(0))
    for net in cuts(ModelSpec(name), seed=3):
        out = net.server(net.owner(x))
        assert out.shape == (4, net.classes)
        if full is None:
            full = out
        torch.testing.assert_close(out, full)  # same seed: the same network, cut elsewhere


def test_mlp_is_seeded_and_seed_dependent():
    a, b, c = (build_network(ModelSpec("mlp"), s) for s in (1, 1, 2))
    assert torch.equal(a.owner.fc1.weight, b.owner.fc1.weight)
    assert not torch.equal(a.owner.fc1.weight, c.owner.fc1.weight)
    assert a.cut_shape == (500,) and a.input_shape == (1, 28, 28)


@pytest.mark.parametrize(("model", "cut", "needle"), [
    ("resnet", None, "unknown model 'resnet'"), ("cnn", "conv9", "unknown cut 'conv9'"),
    ("cnn", "fc3", "unknown cut 'fc3'")])
def test_unknown_model_or_cut_is_one_line(model, cut, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        parse_model(model, cut)
    assert "\n" not in str(err.value)


def test_builtin_on_the_wrong_dataset_names_both_shapes():
    with pytest.raises(ConfigError, match=r"1x28x28 inputs .* 3x32x32"):
        build_network(ModelSpec("cnn"), 0, (3, 32, 32), 10)


def _user_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"user_net_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def test_user_network_as_sequential_and_cut(tmp_path, monkeypatch):
    mod = _user_module(tmp_path, monkeypatch, """
        from torch import nn
        def net():
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(4 * 26 * 26, 10)), 2
    """)
    net = build_network(parse_model(f"{mod}:net"), 0, (1, 28, 28), 10)
    assert net.cut_shape == (4, 26, 26) and net.cut == "2"
    assert any("running_mean" in e.key for e in net.owner_layout.entries)


@pytest.mark.parametrize(("body", "needle"), [
    ("from torch import nn\ndef net():\n    return nn.Sequential(nn.Linear(10, 5), nn.ReLU(),"
     " nn.Linear(5, 10)), 0\n", r"does not take input 1x28x28"),
    ("from torch import nn\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5),"
     " nn.Linear(5, 3)), 1\n", r"output is \(3,\), not the dataset's 10 classes"),
    ("def net():\n    return 42\n", "must return a SplitNetwork or"),
])
def test_user_network_that_does_not_fit_is_one_line(tmp_path, monkeypatch, body, needle):
    mod = _user_module(tmp_path, monkeypatch, body)
    with pytest.raises(ConfigError, match=needle) as err:
        build_network(parse_model(f"{mod}:net"), 0, (1, 28, 28), 10)
    assert "\n" not in str(err.value)


def test_user_network_import_failure_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import"):
        build_network(parse_model("no_such_module_xyz:net"), 0, (1, 28, 28), 10)


def _bn_net() -> SplitNetwork:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 6 * 6, 4))
    return split_sequential("bn", seq, 2, (1, 8, 8), 4)


def test_state_layout_carries_buffers_and_momentum():
    net = _bn_net()
    part = net.owner_part().train()
    opt = torch.optim.SGD(part.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        part(torch.rand(5, 1, 8, 8)).sum().backward()
        opt.step()
    flat = net.owner_layout.pack(part, opt)
    assert flat.shape == (net.owner_layout.state_size,) and flat.dtype == np.float32
    back = net.owner_from(flat)
    for key, value in part.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert int(back.state_dict()["1.num_batches_tracked"]) == 3
    named = dict(part.named_parameters())
    for key, m in net.owner_layout.momentum(flat).items():
        assert torch.equal(m, opt.state[named[key]]["momentum_buffer"])
    with pytest.raises(ShapeError):
        net.owner_layout.check(flat[:-1])
    bad = flat.copy()
    bad[0] = np.nan
    with pytest.raises(ShapeError):
        net.owner_layout.check(bad)


def test_parameters_to_vector_would_drop_the_running_statistics():
    """Why the layout exists: a parameter vector has no room for BatchNorm's buffers."""
    net = _bn_net()
    params = sum(p.numel() for p in net.owner.parameters())
    layout = StateLayout.of(net.owner)
    assert layout.weights_size == params + 3 + 3 + 1  # running mean, var, batches tracked


def _train_over_the_wire(net: SplitNetwork, steps: int = 3, batch: int = 8):
    cfg = TrainConfig(batch_size=batch, lr=0.1, momentum=0.9, seed=0)
    first, second = net.owner_part(), net.server_part()
    full = nn.Sequential(copy.deepcopy(first), copy.deepcopy(second))
    transport = LocalTransport()
    server = ComputeServer("server", codec="plaintext", session=5, net=net,
                           network=Network("server", transport), model=second, config=cfg)
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, *net.input_shape), dtype=np.float32)
    y = rng.integers(0, net.classes, steps * batch).astype(np.int64)
    owner = DataOwner("owner:0", server="server", net=net, codec="plaintext", session=5,
                      network=Network("owner:0", transport), train=(x, y), test=(x, y),
                      model=first, config=cfg)
    transport.add_party("server", server)
    opt = torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps):
        xb = torch.from_numpy(x[i * batch:(i + 1) * batch])
        yb = torch.from_numpy(y[i * batch:(i + 1) * batch])
        loss_wire = owner.train_step(xb, yb, step=i)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(full(xb), yb)
        loss.backward()
        opt.step()
        assert abs(loss_wire - float(loss.detach())) < 1e-5
    for p_split, p_full in zip([*owner.model.parameters(), *second.parameters()],
                               full.parameters(), strict=True):
        torch.testing.assert_close(p_split, p_full, rtol=1e-5, atol=1e-6)
    assert server.steps == steps
    return owner


@pytest.mark.parametrize(("model", "cut"), [("mlp", "relu1"), ("cnn", "conv1"), ("cnn", "pool2")])
def test_split_training_over_the_wire_equals_unsplit_training(model, cut):
    """SGD steps through frames (rank-4 cuts included) give the unsplit network's weights."""
    _train_over_the_wire(build_network(ModelSpec(model, cut), 0))


def test_batchnorm_statistics_train_through_the_wire():
    owner = _train_over_the_wire(_bn_net())
    stats = owner.model.state_dict()["1.running_mean"]
    assert float(stats.abs().sum()) > 0  # the owner's running statistics moved


def test_secret_sharing_runs_every_builtin_cut_and_refuses_what_it_cannot():
    for name in BUILTINS:
        for net in cuts(ModelSpec(name)):
            check_shareable(net)  # every built-in server part translates to shared layers
    torch.manual_seed(0)
    odd = split_sequential("odd", nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(),
                                                nn.Linear(16, 10)), 1, (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="Tanh") as err:
        check_shareable(odd)
    assert "\n" not in str(err.value)


def test_learning_rate_is_the_networks_unless_given() -> None:
    from actors.api import LabOptions, run_config
    from actors.nets.zoo import DEFAULT_LR, default_lr

    cnn = build_network(parse_model("cnn"), 0)
    mlp = build_network(parse_model("mlp"), 0)
    assert default_lr(cnn) < default_lr(mlp) == DEFAULT_LR
    assert run_config(LabOptions(), "plaintext", cnn).train.lr == default_lr(cnn)
    assert run_config(LabOptions(), "plaintext", mlp).train.lr == DEFAULT_LR
    assert run_config(LabOptions(lr=0.3), "plaintext", cnn).train.lr == 0.3
