"""Which server parts the secret-shared protocol can compute on shares.

The layer library on shares (``protocol.shared``) runs Linear, Conv2d (stride, padding),
AvgPool2d, MaxPool2d, ReLU, Flatten and, folded into the layer before it, BatchNorm of a part
that is not trained (the training step on shares refuses it: folding would train something
other than torch does). Anything else is refused before any role starts, with one line naming
the layer, so a run never trains half-way and fails (``--protocol all`` skips the protocol and
says why).
"""

from __future__ import annotations

import numpy as np

from actors.nets.descriptor import SplitNetwork
from protocol import shared
from protocol.errors import ConfigError


def shareable_layers(net: SplitNetwork, frac_bits: int
                     ) -> tuple[tuple[shared.Layer, ...], tuple[list[dict[str, np.ndarray]], ...]]:
    """The server part as layers on shares and two parties' fresh shares of its weights."""
    try:
        layers, shares = shared.from_torch(net.server, frac_bits, input_shape=net.cut_shape)
    except ConfigError as exc:
        raise ConfigError(f"secret-shared cannot run the server part of {net.name} cut at "
                          f"{net.cut}: {exc}") from None
    return tuple(layers), shares


def check_shareable(net: SplitNetwork, frac_bits: int = 16) -> None:
    """A ConfigError naming the first layer the secret-shared protocol cannot run."""
    shareable_layers(net, frac_bits)
