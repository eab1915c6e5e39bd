"""The data owner: holds private inputs, runs the first part, answers oracle queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actors.model import INPUT_DIM, OwnerNet
from actors.role import Role, check_batch
from actors.wire import Network
from defences.spec import build_defences, parse_defence
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
        defences: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, codec, session, network)
        # Built here, inside the owner: noise generators and budgets are the owner's own.
        self.defences = build_defences(parse_defence(text) for text in defences)
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
        sent = self.defences.apply(h)  # dropout, clipping and noise: what goes on the wire
        grad, loss = self.remote_step(sent.detach().numpy(), y.numpy())
        if grad.shape != tuple(h.shape) or not np.all(np.isfinite(grad)):
            raise ShapeError(f"bad cut-layer gradient {grad.shape} for activations "
                             f"{tuple(h.shape)}")
        penalty = self.defences.penalty(x, h)  # NoPeek: the owner's own extra loss
        outputs, grads = [sent], [torch.from_numpy(grad.astype(np.float32))]
        if penalty.requires_grad:
            outputs.append(penalty)
            grads.append(torch.ones_like(penalty))
        torch.autograd.backward(outputs, grads)
        self.opt.step()
        return loss

    def remote_step(self, h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Vanilla split learning: labels and activations out; gradient and loss back."""
        replies = self.request(self.server, [(MessageKind.LABELS, y),
                                             (MessageKind.ACTIVATIONS, h)])
        grad = self.expect(replies, MessageKind.GRADIENTS, self.server).tensor
        loss = self.expect(replies, MessageKind.CONTROL, self.server).tensor
        return grad, float(loss[0])

    def remote_logits(self, h: np.ndarray) -> np.ndarray:
        replies = self.request(self.server, [(MessageKind.INFER_ACTIVATIONS, h)])
        return self.expect(replies, MessageKind.PREDICTIONS, self.server).tensor

    # --- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch_size: int = 250) -> InferenceReport:
        """Predict the private test set through the server; activations cross the wire."""
        self.model.eval()
        correct = 0
        for start in range(0, len(self.test_x), batch_size):
            x, y = self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]
            logits = self.remote_logits(self.defences.apply(self.model(x)).numpy())
            if logits.shape != (len(x), 10):
                raise ShapeError(f"predictions shape {logits.shape} for a batch of {len(x)}")
            correct += int((logits.argmax(1) == y.numpy()).sum())
        self.network.flush()
        return InferenceReport(self.name, len(self.test_x), correct)

    # --- the public oracle and weight hand-off -----------------------------------------------
    def on_message(self, msg: Message) -> list[bytes]:
        if msg.kind == MessageKind.QUERY:
            check_batch(msg.tensor, INPUT_DIM, "query")
            x = msg.tensor
            if self.defences.budget is not None:  # answer the first queries up to the budget
                x = x[: self.defences.budget.charge(msg.sender, len(x))]
                if len(x) == 0:
                    self.defences.budget.require(msg.sender, 1)  # raises: dropped, counted
            with torch.no_grad():
                self.model.eval()
                # the deployed service answers with what the owner would send: defended
                out = self.defences.apply(self.model(torch.from_numpy(x.astype(np.float32))))
                out = out.numpy()
            self.queries_answered += len(x)
            return [self.reply(msg.sender, MessageKind.QUERY_RESULT, out)]
        if msg.kind == MessageKind.WEIGHTS:
            self.require_owner(msg)  # only the previous owner hands the first part on
            self._load_weights(msg.tensor)
            return []
        return super().on_message(msg)

    def first_part_weights(self) -> np.ndarray:
        """The first part's parameters alone (for a white-box attack's threat model)."""
        return torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().numpy()

    def flat_weights(self) -> np.ndarray:
        """The first part and its SGD momentum, one vector: round-robin training then equals
        sequential training over the owners' data (momentum would otherwise go stale)."""
        params = list(self.model.parameters())
        momentum = [self.opt.state.get(p, {}).get("momentum_buffer") for p in params]
        momentum = [torch.zeros_like(p) if m is None else m for p, m in zip(params, momentum,
                                                                            strict=True)]
        vec = torch.cat([torch.nn.utils.parameters_to_vector(params),
                         torch.nn.utils.parameters_to_vector(momentum)])
        return vec.detach().numpy()

    def _load_weights(self, flat: np.ndarray) -> None:
        params = list(self.model.parameters())
        n = sum(p.numel() for p in params)
        if flat.shape != (2 * n,) or flat.dtype != np.float32:
            raise ShapeError(
                f"weights must be float32 ({2 * n},), got {flat.dtype} {flat.shape}")
        t = torch.from_numpy(flat.copy())
        torch.nn.utils.vector_to_parameters(t[:n], params)
        for p, m in zip(params, torch.split(t[n:], [p.numel() for p in params]), strict=True):
            self.opt.state[p]["momentum_buffer"] = m.view_as(p).clone()

    def hand_off(self, to: str) -> None:
        """Vanilla split learning: pass the first part to the next owner, over the wire."""
        self.request(to, [(MessageKind.WEIGHTS, self.flat_weights())])
        self.network.flush()

