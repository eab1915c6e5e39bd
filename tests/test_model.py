"""The split network computes, and trains, exactly like the unsplit one."""

from __future__ import annotations

import copy

import numpy as np
import torch

from actors.model import SplitNN, seeded_parts
from actors.owner import DataOwner, TrainConfig
from actors.server import ComputeServer
from actors.wire import LocalTransport, Network


def test_split_forward_equals_unsplit():
    owner, server = seeded_parts(3)
    full = SplitNN(copy.deepcopy(owner), copy.deepcopy(server))
    x = torch.rand(16, 784)
    torch.testing.assert_close(server(owner(x)), full(x), rtol=0, atol=0)


def test_seeded_parts_is_deterministic_and_seed_dependent():
    a1, _ = seeded_parts(1)
    a2, _ = seeded_parts(1)
    b, _ = seeded_parts(2)
    assert torch.equal(a1.fc.weight, a2.fc.weight)
    assert not torch.equal(a1.fc.weight, b.fc.weight)


def test_split_training_over_the_wire_equals_unsplit_training():
    """Three SGD steps through frames give the same weights as three steps in one process."""
    cfg = TrainConfig(batch_size=8, lr=0.1, momentum=0.9, seed=0)
    first, second = seeded_parts(0)
    full = SplitNN(copy.deepcopy(first), copy.deepcopy(second))
    transport = LocalTransport()
    server = ComputeServer("server", codec="plaintext", session=5,
                           network=Network("server", transport), model=second, config=cfg)
    rng = np.random.default_rng(0)
    x = rng.random((24, 784), dtype=np.float32)
    y = rng.integers(0, 10, 24).astype(np.int64)
    owner = DataOwner("owner:0", server="server", codec="plaintext", session=5,
                      network=Network("owner:0", transport), train=(x, y), test=(x, y),
                      model=first, config=cfg)
    transport.add_party("server", server)

    opt = torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9)
    for i in range(3):
        xb, yb = torch.from_numpy(x[i * 8:(i + 1) * 8]), torch.from_numpy(y[i * 8:(i + 1) * 8])
        loss_wire = owner.train_step(xb, yb, step=i)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(full(xb), yb)
        loss.backward()
        opt.step()
        assert abs(loss_wire - float(loss.detach())) < 1e-6
    for p_split, p_full in zip([*owner.model.parameters(), *second.parameters()], full.parameters(),
                               strict=True):
        torch.testing.assert_close(p_split, p_full, rtol=1e-6, atol=1e-7)
    assert server.steps == 3
