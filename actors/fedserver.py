"""SplitFed's fed server: averages the owners' first parts each round (FedAvg).

In SplitFed (Thapa et al., AAAI 2022) every owner trains its own copy of the first part
against the compute server in a round; a separate fed server — not the compute server, which
would otherwise see the owners' weights — averages the copies, weighted by examples. Uploads
(``CONTROL`` count + ``WEIGHTS``) and downloads (``MODEL_REQUEST`` -> ``WEIGHTS``) are frames on
the wire like everything else. The running sum keeps memory at one model, whatever the owners.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from actors.role import Role
from actors.wire import Network
from protocol.endpoint import Message
from protocol.errors import ShapeError
from protocol.frame import MessageKind

FED_SERVER = "fed-server"


class FedServer(Role):
    def __init__(self, name: str, *, codec: str, session: int, network: Network,
                 initial: np.ndarray) -> None:
        super().__init__(name, codec, session, network)
        self.model = np.array(initial, np.float32)  # the round's first part
        self.round = 0
        self._sum = np.zeros_like(self.model, np.float64)
        self._examples = 0
        self._counts: dict[str, int] = {}
        self.uploads = 0

    def handlers(self) -> dict[MessageKind, Callable[[Message], list[bytes]]]:
        return {MessageKind.MODEL_REQUEST: self._on_request, MessageKind.CONTROL: self._on_count,
                MessageKind.WEIGHTS: self._on_upload}

    def _on_request(self, msg: Message) -> list[bytes]:
        return [self.reply(msg.sender, MessageKind.WEIGHTS, self.model)]

    def _on_count(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        n = msg.tensor
        if n.shape != (1,) or n.dtype != np.int64 or not 0 < n[0] < 2**31:
            raise ShapeError(f"an example count is int64 (1,) > 0, got {n.dtype} {n.shape}")
        self._counts[msg.sender] = int(n[0])
        return []

    def _on_upload(self, msg: Message) -> list[bytes]:
        """A state vector (weights, buffers, momentum): averaged as it is, buffers included."""
        self.require_owner(msg)
        n = self._counts.pop(msg.sender, None)
        if n is None or msg.tensor.shape != self.model.shape or msg.tensor.dtype != np.float32:
            raise ShapeError(f"weights from {msg.sender} without a count or of shape "
                             f"{msg.tensor.shape}")
        self._sum += n * msg.tensor.astype(np.float64)
        self._examples += n
        self.uploads += 1
        return []

    def begin_round(self, model: np.ndarray, round_: int) -> None:
        """Start round ``round_`` from ``model`` (also how the lab rolls a failed round back)."""
        self.model = np.array(model, np.float32)
        self.round = round_
        self._sum[:] = 0
        self._examples = 0
        self._counts.clear()

    def close_round(self) -> np.ndarray:
        """FedAvg: the example-weighted mean of this round's uploads becomes the model."""
        if self._examples == 0:
            raise ShapeError("no owner uploaded a first part this round")
        self.model = (self._sum / self._examples).astype(np.float32)
        return self.model
