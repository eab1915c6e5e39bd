"""Small builders several test files share."""

from __future__ import annotations

from actors.nets.descriptor import SplitNetwork
from actors.nets.zoo import ModelSpec, build_network
from actors.owner import TrainConfig
from actors.server import ComputeServer
from actors.wire import LocalTransport, Network


def mlp_net(seed: int = 0) -> SplitNetwork:
    """The default network (Linear 784->500 + ReLU | 500->500->10) with seed-``seed`` weights."""
    return build_network(ModelSpec("mlp"), seed)


def plaintext_server() -> ComputeServer:
    """A plaintext compute server for session 1 on an in-process wire, seed-0 second part."""
    return ComputeServer("server", codec="plaintext", session=1,
                         network=Network("server", LocalTransport()), net=mlp_net(0),
                         config=TrainConfig())
