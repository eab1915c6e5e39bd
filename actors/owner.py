"""The data owner: holds private inputs, runs the first part, answers oracle queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actors.model import INPUT_DIM, OwnerNet
from actors.role import Role, check_batch
from actors.wire import Network
from protocol.endpoint import Message
from protocol.errors import ShapeError
from protocol.frame import MessageKind


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings shared by owner and server (SGD with momentum: 96% in 10 epochs)."""

    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class EpochReport:
    owner: str
    batches: int
    examples: int
    mean_loss: float


@dataclass(frozen=True)
class InferenceReport:
    owner: str
    examples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.examples, 1)


class DataOwner(Role):
    """Runs ``OwnerNet`` on private data; only cut-layer tensors ever leave it.

    It also exposes the first part as a public service (``QUERY`` frames): that oracle is what a
    black-box attacker uses, exactly as any user of the deployed model could.
    """

    def __init__(
        self,
        name: str,
        *,
        server: str,
        codec: str,
        session: int,
        network: Network,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        model: OwnerNet,
        config: TrainConfig,
    ) -> None:
        super().__init__(name, codec, session, network)
        self.server = server
        self.train_x, self.train_y = (torch.as_tensor(a) for a in train)
        self.test_x, self.test_y = (torch.as_tensor(a) for a in test)
        self.model = model
        self.config = config
        self.opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        # Per-owner shuffling stream, reproducible from the run seed.
        self.gen = torch.Generator().manual_seed(config.seed * 1000 + sum(name.encode()))
        self.queries_answered = 0

    # --- training ----------------------------------------------------------------------------
    def train_epoch(self) -> EpochReport:
        self.model.train()
        n = len(self.train_x)
        perm = torch.randperm(n, generator=self.gen)
        losses: list[float] = []
        for start in range(0, n, self.config.batch_size):
            idx = perm[start:start + self.config.batch_size]
            losses.append(self.train_step(self.train_x[idx], self.train_y[idx]))
        self.network.flush()
        return EpochReport(self.name, len(losses), n, float(np.mean(losses)) if losses else 0.0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One split-learning step: activations out, cut-layer gradient back, local update."""
        self.opt.zero_grad()
        h = self.model(x)
        replies = self.request(
            self.server,
            [(MessageKind.LABELS, y.numpy()),
             (MessageKind.ACTIVATIONS, h.detach().numpy())],
        )
        grad = self.expect(replies, MessageKind.GRADIENTS, self.server).tensor
        if grad.shape != tuple(h.shape):
            raise ShapeError(f"gradient shape {grad.shape} != activations {tuple(h.shape)}")
        loss = self.expect(replies, MessageKind.CONTROL, self.server).tensor
        h.backward(torch.from_numpy(grad))
        self.opt.step()
        return float(loss[0])

    # --- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch_size: int = 250) -> InferenceReport:
        """Predict the private test set through the server; activations cross the wire."""
        self.model.eval()
        correct = 0
        for start in range(0, len(self.test_x), batch_size):
            x, y = self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]
            h = self.model(x).numpy()
            replies = self.request(self.server, [(MessageKind.INFER_ACTIVATIONS, h)])
            logits = self.expect(replies, MessageKind.PREDICTIONS, self.server).tensor
            if logits.shape != (len(x), 10):
                raise ShapeError(f"predictions shape {logits.shape} for a batch of {len(x)}")
            correct += int((logits.argmax(1) == y.numpy()).sum())
        self.network.flush()
        return InferenceReport(self.name, len(self.test_x), correct)

    # --- the public oracle and weight hand-off -----------------------------------------------
    def on_message(self, msg: Message) -> list[bytes]:
        if msg.kind == MessageKind.QUERY:
            check_batch(msg.tensor, INPUT_DIM, "query")
            with torch.no_grad():
                self.model.eval()
                out = self.model(torch.from_numpy(msg.tensor.astype(np.float32))).numpy()
            self.queries_answered += len(msg.tensor)
            return [self.reply(msg.sender, MessageKind.QUERY_RESULT, out)]
        if msg.kind == MessageKind.WEIGHTS:
            self._load_weights(msg.tensor)
            return []
        return super().on_message(msg)

    def flat_weights(self) -> np.ndarray:
        return torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().numpy()

    def _load_weights(self, flat: np.ndarray) -> None:
        expected = sum(p.numel() for p in self.model.parameters())
        if flat.shape != (expected,) or flat.dtype != np.float32:
            raise ShapeError(
                f"weights must be float32 ({expected},), got {flat.dtype} {flat.shape}")
        torch.nn.utils.vector_to_parameters(torch.from_numpy(flat), self.model.parameters())

    def hand_off(self, to: str) -> None:
        """Vanilla split learning: pass the first part to the next owner, over the wire."""
        self.request(to, [(MessageKind.WEIGHTS, self.flat_weights())])
        self.network.flush()

