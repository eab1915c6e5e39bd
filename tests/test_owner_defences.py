"""Each data owner draws its own noise and dropout (not one stream shared by all owners)."""

from __future__ import annotations

import numpy as np
import torch

from actors.owner import DataOwner, TrainConfig
from actors.wire import LocalTransport, Network
from defences.spec import parse_defence
from tests.helpers import mlp_net

SPECS = (parse_defence("noise:mechanism=laplace,scale=1,clip=5"),
         parse_defence("dropout:rate=0.5"))


def owner(name: str, specs=SPECS) -> DataOwner:
    net = mlp_net(0)
    x = np.zeros((2, *net.input_shape), np.float32)
    y = np.zeros(2, np.int64)
    return DataOwner(name, server="server", net=net, codec="plaintext", session=1,
                     network=Network(name, LocalTransport()), train=(x, y), test=(x, y),
                     config=TrainConfig(), defences=specs)


def test_two_owners_with_the_same_spec_draw_different_noise_and_masks():
    h = torch.ones(64, 500)
    a, b = owner("owner:0").defences.apply(h), owner("owner:1").defences.apply(h)
    assert not torch.equal(a, b)
    drop = SPECS[1:]
    mask_a = owner("owner:0", drop).defences.apply(h) == 0
    mask_b = owner("owner:1", drop).defences.apply(h) == 0
    assert not torch.equal(mask_a, mask_b)  # different dropout masks too
    again = owner("owner:1").defences.apply(h)
    assert torch.equal(b, again)  # and each owner's draws are reproducible for its seed
