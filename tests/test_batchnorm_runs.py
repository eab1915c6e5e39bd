"""A first part with BatchNorm keeps its running statistics through every way weights travel:
hand-offs between owners, SplitFed averaging, and checkpoint / --resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from actors.backend import LocalBackend
from actors.lab import RunConfig, pin_identities, start_roles, train
from actors.nets.zoo import split_sequential
from actors.owner import TrainConfig

pytestmark = pytest.mark.e2e

BASE = RunConfig(protocol="plaintext", epochs=2, seed=0, clients=2, adversaries=(),
                 checkpoint_every=5, train=TrainConfig(batch_size=100))


def bn_net():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    return split_sequential("bn-cnn", seq, 2, (1, 28, 28), 10)


@pytest.fixture(scope="module")
def data(lab_setting):
    return lab_setting[0]


def train_run(cfg, net, data, on_checkpoint=None):
    """Train and deploy (no attack): the losses and every owner's deployed first part."""
    backend = LocalBackend()
    cast = start_roles(backend, cfg, net, data, session=3)
    backend.connect()
    pin_identities(backend, cast.parties)
    losses, batches, _, steps, _ = train(backend, cfg, cast, net, on_checkpoint=on_checkpoint)
    parts = [net.owner_from(backend.call(cast.host_of[o], "owner_call", o,
                                         "first_part_weights")) for o in cast.owners]
    return losses, batches, steps, parts


def tracked(part: nn.Module) -> int:
    return int(part.state_dict()["1.num_batches_tracked"])


def test_statistics_survive_every_hand_off(data):
    net = bn_net()
    losses, batches, steps, parts = train_run(BASE, net, data)
    # Every batch of every owner moved the same statistics: none was reset at a hand-off.
    assert tracked(parts[0]) == tracked(parts[1]) == steps == batches["applied"]
    moved = parts[0].state_dict()["1.running_var"]
    assert not torch.allclose(moved, torch.ones_like(moved))
    for key, value in parts[0].state_dict().items():  # deployment hands over buffers too
        assert torch.equal(value, parts[1].state_dict()[key]), key


def test_splitfed_averages_the_statistics(data):
    net = bn_net()
    cfg = dataclasses.replace(BASE, schedule="splitfed")
    _, _, _, parts = train_run(cfg, net, data)
    per_owner = -(-2000 // 100)  # 4,000 training images, two IID owners, batches of 100
    assert tracked(parts[0]) == cfg.epochs * per_owner
    mean = parts[0].state_dict()["1.running_mean"]
    assert float(mean.abs().sum()) > 0


def test_resumed_run_equals_the_uninterrupted_one_to_the_last_bit(data, tmp_path):
    net = bn_net()
    clean_losses, _, steps, clean_parts = train_run(
        dataclasses.replace(BASE, checkpoint_dir=str(tmp_path / "clean")), net, data)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(step):
        if step >= steps // 2:
            raise Stop

    cfg = dataclasses.replace(BASE, checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(Stop):
        train_run(cfg, net, data, on_checkpoint=stop_after_first_epoch)
    losses, batches, _, parts = train_run(dataclasses.replace(cfg, resume=cfg.checkpoint_dir),
                                          net, data)
    assert losses == clean_losses
    assert batches["sent"] == batches["applied"] == steps
    for key, value in clean_parts[0].state_dict().items():
        assert torch.equal(parts[0].state_dict()[key], value), key
    assert np.isfinite(losses).all()
