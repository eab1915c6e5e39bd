"""Which server parts the secret-shared protocol can compute on shares today.

``protocol/mpc.py`` computes one shape of server part: Linear, ReLU, Linear (weights stored as
(in, out) ring matrices ``w1, b1, w2, b2``). Anything else is refused before any role starts,
with one line naming the first layer that does not fit, so a run never trains half-way and
fails (``--protocol all`` skips the protocol and says why).
"""

from __future__ import annotations

import torch
from torch import nn

from protocol.errors import ConfigError

SUPPORTED = "Linear, ReLU, Linear"


def mpc_parameters(server: nn.Module, cut_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The server part's weights as protocol/mpc.py names them, or a ConfigError."""
    layers = list(server.named_children()) if isinstance(server, nn.Sequential) else [
        (type(server).__name__, server)]
    kinds = (nn.Linear, nn.ReLU, nn.Linear)
    for i, (name, layer) in enumerate(layers):
        if i >= len(kinds) or not isinstance(layer, kinds[i]):
            raise ConfigError(f"secret-shared cannot run layer {name} ({type(layer).__name__}) "
                              f"of the server part: supported on shares is {SUPPORTED}")
    if len(layers) != len(kinds):
        raise ConfigError(f"secret-shared needs the server part {SUPPORTED}, got "
                          f"{', '.join(type(m).__name__ for _, m in layers)}")
    if len(cut_shape) != 1:
        raise ConfigError(f"secret-shared: the cut must be a flat vector for the shared server "
                          f"part ({SUPPORTED}), got cut shape {cut_shape}")
    first, second = layers[0][1], layers[2][1]
    return {"w1": first.weight.T, "b1": first.bias, "w2": second.weight.T, "b2": second.bias}
