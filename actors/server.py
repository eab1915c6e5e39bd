"""The compute server: runs the second part on received activations and holds the labels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from actors.adversary import Intercepted, InversionAttacker, stack
from actors.faults import Crash
from actors.nets.descriptor import SplitNetwork
from actors.nets.sgd import MomentumSGD
from actors.owner import TrainConfig, softmax
from actors.role import Role
from actors.wire import Network
from protocol.endpoint import Message
from protocol.errors import ShapeError
from protocol.frame import MessageKind

#: Replies kept for retries: the lab checkpoints far more often than this (--checkpoint-every).
MAX_REPLIES = 4096


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
        self, name: str, *, codec: str, session: int, network: Network, net: SplitNetwork,
        config: TrainConfig, model: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(name, codec, session, network)
        self.net = net
        self.model = net.server_part() if model is None else model
        self.opt = MomentumSGD(self.model.parameters(), lr=config.lr, momentum=config.momentum)
        self.pending_labels: dict[str, np.ndarray] = {}
        self.pending_step: dict[str, int] = {}
        self.steps = 0  # batches applied to this model (restored with it from a checkpoint)
        self.duplicates = 0  # retried batches answered from the cache, not applied again
        # Replies to the batches applied since the last checkpoint, by global step id: an
        # owner that rolls back to that checkpoint retries them and must get the same answer
        # without the server applying them twice (exactly once, as the STEP ids make it).
        self.replies: dict[int, tuple[np.ndarray, float]] = {}
        self.chaos_step: int | None = None
        self.last_seen = -1  # the highest step id received
        self.seen: dict[str, list[tuple[int, np.ndarray]]] = {}  # owner -> (seq, activations)

    def handlers(self) -> dict[MessageKind, Callable[[Message], list[bytes]]]:
        return {MessageKind.STEP: self._on_step, MessageKind.LABELS: self._on_labels,
                MessageKind.ACTIVATIONS: self._on_activations,
                MessageKind.INFER_ACTIVATIONS: self._on_infer,
                MessageKind.API_ACTIVATIONS: self._on_api}

    def _on_api(self, msg: Message) -> list[bytes]:
        """A customer's query through the owner's prediction API, not private data."""
        self.require_owner(msg)
        self.net.check_cut(msg.tensor, "activations")
        return [self.reply(msg.sender, MessageKind.API_PREDICTIONS, self.predict(msg.tensor))]

    def _on_step(self, msg: Message) -> list[bytes]:
        if msg.tensor.shape != (1,) or msg.tensor.dtype != np.int64 or msg.tensor[0] < 0:
            raise ShapeError(f"a step id is int64 (1,) >= 0, got {msg.tensor.dtype} "
                             f"{msg.tensor.shape}")
        step = int(msg.tensor[0])
        if self.chaos_step is not None and step >= self.chaos_step:
            self.chaos_step = None
            raise Crash(self.name, step)
        self.pending_step[msg.sender] = step
        self.last_seen = max(self.last_seen, step)
        return []

    def _on_labels(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        y = msg.tensor
        if y.ndim != 1 or y.dtype != np.int64 or y.size == 0:
            raise ShapeError(f"labels must be int64 (B,), got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= self.net.classes:
            raise ShapeError(f"labels must lie in 0..{self.net.classes - 1}")
        self.pending_labels[msg.sender] = y
        return []

    def _on_activations(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        self.net.check_cut(msg.tensor, "activations")
        y = self.pending_labels.pop(msg.sender, None)
        if y is None or len(y) != len(msg.tensor):
            raise ShapeError(f"activations from {msg.sender} without matching labels")
        step = self.pending_step.pop(msg.sender, None)
        if step is not None and step in self.replies:
            grad, loss = self.replies[step]  # a retry: answer as before, apply nothing
            self.duplicates += 1
        else:
            grad, loss = self.train_step(msg.tensor, y)
            if step is not None:
                self.replies[step] = (grad, loss)
                if len(self.replies) > MAX_REPLIES:  # no checkpoint for a long time
                    del self.replies[next(iter(self.replies))]
        return [
            self.reply(msg.sender, MessageKind.GRADIENTS, grad),
            self.reply(msg.sender, MessageKind.CONTROL, np.array([loss], np.float32)),
        ]

    def _on_infer(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        self.net.check_cut(msg.tensor, "activations")
        self.seen.setdefault(msg.sender, []).append((msg.seq, msg.tensor))
        return [self.reply(msg.sender, MessageKind.PREDICTIONS, self.predict(msg.tensor))]

    def arm_chaos(self, step: int) -> None:
        """--chaos server@STEP: die on receiving the batch with global step id ``step``."""
        self.chaos_step = step

    def checkpoint(self) -> dict[str, np.ndarray]:
        """The second part's state dict (buffers included), its momentum and the applied-batch
        count (never key material); batches applied before this point will never be retried,
        so their replies go."""
        self.replies.clear()
        out = {f"state:{k}": v.detach().numpy().copy()
               for k, v in self.model.state_dict().items()}
        for key, p in self.model.named_parameters():
            m = self.opt.state.get(p, {}).get("momentum_buffer")
            out[f"momentum:{key}"] = (np.zeros(tuple(p.shape), np.float32) if m is None
                                      else m.numpy().copy())
        return out | {"steps": np.array([self.steps], np.int64)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``checkpoint()``'s output (after a restart or --resume)."""
        self.model.load_state_dict({k[len("state:"):]: torch.from_numpy(np.array(v))
                                    for k, v in state.items() if k.startswith("state:")})
        for key, p in self.model.named_parameters():
            self.opt.state[p]["momentum_buffer"] = torch.from_numpy(
                np.array(state[f"momentum:{key}"], np.float32))
        self.steps = int(state["steps"][0])
        self.replies.clear()
        self.pending_labels.clear()
        self.pending_step.clear()

    def checkpoint_pair(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """``counters()`` and ``checkpoint()``: the lab waits for the first, keeps the second
        wherever it is (the object store)."""
        state = self.checkpoint()
        return self.counters(), state

    def counters(self) -> dict[str, int]:
        return {"applied": self.steps, "duplicates": self.duplicates}

    def last_step(self) -> int:
        return self.last_seen

    def intercepted_activations(self, owner: str) -> Intercepted:
        return stack(owner, self.seen.get(owner, []), self.net.cut_shape)

    def intercepted_outputs(self, owner: str) -> np.ndarray:
        """What the server answered the owner's private inference: it computed it."""
        acts = self.intercepted_activations(owner).acts
        if not len(acts):
            return np.zeros((0, self.net.classes), np.float32)
        return softmax(self.predict(acts))

    def query_outputs(self, owner: str, x: np.ndarray) -> np.ndarray:
        """The server needs no prediction API: the owner's first-part oracle and its own
        second part are the whole model (asking the owner would route back to itself)."""
        return softmax(self.predict(self.query_oracle(owner, x)))

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
