"""The compute server: runs the second part on received activations and holds the labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from actors.adversary import Intercepted, InversionAttacker, stack
from actors.model import CUT_DIM, N_CLASSES, ServerNet
from actors.owner import TrainConfig
from actors.role import Role, check_batch
from actors.wire import Network
from protocol.endpoint import Message
from protocol.errors import ShapeError
from protocol.frame import MessageKind


class ComputeServer(Role, InversionAttacker):
    """Vanilla split learning's server: forward, loss, backward, and the cut-layer gradient.

    Each owner sends ``LABELS`` then ``ACTIVATIONS`` in one burst; the server answers with the
    ``GRADIENTS`` of the loss w.r.t. those activations and the loss as a ``CONTROL`` scalar.
    ``INFER_ACTIVATIONS`` get ``PREDICTIONS`` (logits). Malformed content is a ShapeError, which
    ``Role.handle`` drops and counts.

    It is honest but curious: it keeps the inference activations it had to decrypt anyway, and
    the lab may ask it to run the same black-box attack on them (``attack``).
    """

    def __init__(
        self, name: str, *, codec: str, session: int, network: Network, model: ServerNet,
        config: TrainConfig,
    ) -> None:
        super().__init__(name, codec, session, network)
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        self.pending_labels: dict[str, np.ndarray] = {}
        self.steps = 0
        self.seen: dict[str, list[tuple[int, np.ndarray]]] = {}  # owner -> (seq, activations)

    def on_message(self, msg: Message) -> list[bytes]:
        if msg.kind in (MessageKind.LABELS, MessageKind.ACTIVATIONS,
                        MessageKind.INFER_ACTIVATIONS):
            self.require_owner(msg)
        if msg.kind == MessageKind.LABELS:
            y = msg.tensor
            if y.ndim != 1 or y.dtype != np.int64 or y.size == 0:
                raise ShapeError(f"labels must be int64 (B,), got {y.dtype} {y.shape}")
            if y.min() < 0 or y.max() >= N_CLASSES:
                raise ShapeError(f"labels must lie in 0..{N_CLASSES - 1}")
            self.pending_labels[msg.sender] = y
            return []
        if msg.kind == MessageKind.ACTIVATIONS:
            check_batch(msg.tensor, CUT_DIM, "activations")
            y = self.pending_labels.pop(msg.sender, None)
            if y is None or len(y) != len(msg.tensor):
                raise ShapeError(f"activations from {msg.sender} without matching labels")
            grad, loss = self.train_step(msg.tensor, y)
            return [
                self.reply(msg.sender, MessageKind.GRADIENTS, grad),
                self.reply(msg.sender, MessageKind.CONTROL, np.array([loss], np.float32)),
            ]
        if msg.kind == MessageKind.INFER_ACTIVATIONS:
            check_batch(msg.tensor, CUT_DIM, "activations")
            self.seen.setdefault(msg.sender, []).append((msg.seq, msg.tensor))
            return [self.reply(msg.sender, MessageKind.PREDICTIONS, self.predict(msg.tensor))]
        return super().on_message(msg)

    def intercepted_activations(self, owner: str) -> Intercepted:
        return stack(owner, self.seen.get(owner, []))

    def train_step(self, h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        self.model.train()
        h_t = torch.from_numpy(h.astype(np.float32)).requires_grad_(True)
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(h_t), torch.from_numpy(y))
        loss.backward()
        self.opt.step()
        self.steps += 1
        return h_t.grad.numpy(), float(loss.detach())

    @torch.no_grad()
    def predict(self, h: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model(torch.from_numpy(h.astype(np.float32))).numpy()
