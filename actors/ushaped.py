"""U-shaped split learning (``--topology u-shaped``): the owner keeps the tail and its labels.

The owner runs the head, the server the middle, the owner the tail and the loss. One training
step is two exchanges on the owner -> server link:

    owner  -> server   STEP, ACTIVATIONS        (the head's output; no LABELS frame)
    server -> owner    MIDDLE                   (the middle's output)
    owner  -> server   MIDDLE_GRADIENTS         (d mean-loss / d middle output, per example,
                                                 after the owner's label defences)
    server -> owner    GRADIENTS                (d loss / d cut layer, for the head)

Inference: ``INFER_ACTIVATIONS`` is answered with ``INFER_MIDDLE``; the owner's tail makes the
logits, which never leave it. The labels still leak through ``MIDDLE_GRADIENTS`` (Li et al.,
ICLR 2022): both the curious server (it receives them) and the eavesdropper (plaintext: it reads
them) keep the last :data:`LABEL_WINDOW` of them per owner for the label-inference attack of
``attack.labels``. Retries answer from the server's reply cache by step id, as in vanilla.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from actors.mpc_roles import SERVER1, Op, SharingOwner
from actors.owner import DataOwner
from actors.server import MAX_REPLIES, ComputeServer
from protocol.endpoint import Message
from protocol.errors import ConfigError, ShapeError
from protocol.frame import MessageKind as K

#: Training batches of returned gradients each label attacker keeps per owner (the last ones:
#: 100 batches of 64 x 500 floats is 12.8 MB), and the labels the owner logs to score them.
LABEL_WINDOW = 100


def _finite_batch(t: np.ndarray, rows: int, shape: tuple[int, ...], what: str) -> None:
    if t.shape != (rows, *shape) or t.dtype.kind != "f" or not np.all(np.isfinite(t)):
        raise ShapeError(f"{what} must be finite float ({rows}, {', '.join(map(str, shape))}), "
                         f"got {t.dtype} {t.shape}")


def _defended(defences: Any, g: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The label defences' output, refused with one line if it is no longer finite."""
    out = defences.gradient(g, labels)
    if not bool(torch.isfinite(out).all()):
        raise ShapeError("the gradient to send back is not finite after the label defences: "
                         "training diverged (lower the defence's strength or --lr)")
    return out


def _tail_backward(owner: DataOwner, middle: np.ndarray,
                   y: np.ndarray) -> tuple[torch.Tensor, float]:
    """The owner's tail on the middle's output for a training batch: the loss, its backward
    (the tail's gradients accumulate; train_step's optimiser step applies them with the
    head's: one optimiser, one momentum state, both in the handed-on flat state), and the
    label-defended gradient w.r.t. the middle's output that goes back to the server."""
    assert owner.model is not None
    _finite_batch(middle, len(y), owner.net.middle_shape, "the middle's output")
    m = torch.from_numpy(middle.astype(np.float32)).requires_grad_(True)
    labels = torch.from_numpy(y)
    loss = F.cross_entropy(owner.model.tail(m), labels)
    loss.backward()
    assert m.grad is not None
    return _defended(owner.defences, m.grad.detach(), labels), float(loss.detach())


class UShapedOwner(DataOwner):
    """A data owner that keeps the tail: computes the loss on its own labels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.net.tail is None:
            raise ConfigError(f"{self.name}: a u-shaped owner needs a network with a tail")
        # Lab instrumentation (the ground truth for scoring label inference): the labels of
        # the last batches whose gradients this owner sent, in sending order.
        self.label_log: deque[np.ndarray] = deque(maxlen=LABEL_WINDOW)

    def remote_step(self, h: np.ndarray, y: np.ndarray, step: int = 0) -> tuple[np.ndarray, float]:
        """Head output out, middle output back; the tail's loss and backward here; the
        middle's gradient out (label-defended), the cut layer's gradient back."""
        assert self.model is not None
        replies = self.request(self.server, [(K.STEP, np.array([step], np.int64)),
                                             (K.ACTIVATIONS, h)])
        middle = self.expect(replies, K.MIDDLE, self.server).tensor
        g, loss = _tail_backward(self, middle, y)
        self.label_log.append(np.array(y, np.int64))
        replies = self.request(self.server, [(K.MIDDLE_GRADIENTS,
                                              g.numpy().astype(np.float32, copy=False))])
        grad = self.expect(replies, K.GRADIENTS, self.server).tensor
        return grad, loss

    def _tail_logits(self, middle: np.ndarray, rows: int) -> np.ndarray:
        _finite_batch(middle, rows, self.net.middle_shape, "the middle's output")
        tail = self._deployed().tail
        with torch.no_grad():
            tail.eval()
            return tail(torch.from_numpy(middle.astype(np.float32))).numpy()

    def remote_logits(self, h: np.ndarray) -> np.ndarray:
        replies = self.request(self.server, [(K.INFER_ACTIVATIONS, h)])
        return self._tail_logits(self.expect(replies, K.INFER_MIDDLE, self.server).tensor,
                                 len(h))

    def api_logits(self, h: np.ndarray) -> np.ndarray:
        replies = self.request(self.server, [(K.API_ACTIVATIONS, h)])
        return self._tail_logits(self.expect(replies, K.API_PREDICTIONS, self.server).tensor,
                                 len(h))

    def sent_labels(self) -> list[np.ndarray]:
        """Lab instrumentation: the labels of the last batches sent, oldest first."""
        return list(self.label_log)


class UShapedServer(ComputeServer):
    """Runs the middle: forward on ``ACTIVATIONS``, backward on ``MIDDLE_GRADIENTS``.

    It never sees a label. Honest but curious: it keeps the gradients the owners send back
    (the last :data:`LABEL_WINDOW` batches per owner) for label inference.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # owner -> (step, input with grad, output with graph) or (step, cached reply)
        self.forwards: dict[str, tuple[int | None, Any, Any]] = {}
        self.held: dict[str, deque[np.ndarray]] = {}

    def handlers(self) -> dict[K, Callable[[Message], list[bytes]]]:
        table = super().handlers()
        del table[K.LABELS]  # the labels stay with the owner: a LABELS frame is refused
        return table | {K.ACTIVATIONS: self._on_forward, K.MIDDLE_GRADIENTS: self._on_backward,
                        K.INFER_ACTIVATIONS: self._on_infer_middle}

    def _on_forward(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        self.net.check_cut(msg.tensor, "activations")
        step = self.pending_step.pop(msg.sender, None)
        if step is not None and step in self.replies:  # a retry: answer as before
            middle, cut_grad = self.replies[step]
            self.forwards[msg.sender] = (step, None, cut_grad)
            return [self.reply(msg.sender, K.MIDDLE, middle)]
        self.model.train()
        h_t = torch.from_numpy(msg.tensor.astype(np.float32)).requires_grad_(True)
        out = self.model(h_t)
        self.forwards[msg.sender] = (step, h_t, out)
        return [self.reply(msg.sender, K.MIDDLE, out.detach().numpy())]

    def _on_backward(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        pending = self.forwards.pop(msg.sender, None)
        if pending is None:
            raise ShapeError(f"MIDDLE_GRADIENTS from {msg.sender} without a forward pass")
        step, h_t, out = pending
        rows = len(out) if h_t is not None else len(self.replies[step][0])
        _finite_batch(msg.tensor, rows, self.net.middle_shape, "MIDDLE_GRADIENTS")
        self.held.setdefault(msg.sender, deque(maxlen=LABEL_WINDOW)).append(msg.tensor.copy())
        if h_t is None:  # the retry's cut-layer gradient, from the cache
            self.duplicates += 1
            return [self.reply(msg.sender, K.GRADIENTS, out)]
        self.opt.zero_grad()
        out.backward(torch.from_numpy(msg.tensor.astype(np.float32)))
        self.opt.step()
        self.steps += 1
        cut_grad = h_t.grad.numpy()
        if step is not None:
            self.replies[step] = (out.detach().numpy(), cut_grad)
            if len(self.replies) > MAX_REPLIES:
                del self.replies[next(iter(self.replies))]
        return [self.reply(msg.sender, K.GRADIENTS, cut_grad)]

    def _on_infer_middle(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)
        self.net.check_cut(msg.tensor, "activations")
        self.seen.setdefault(msg.sender, []).append((msg.seq, msg.tensor))
        return [self.reply(msg.sender, K.INFER_MIDDLE, self.predict(msg.tensor))]

    def restore(self, state: dict[str, np.ndarray]) -> None:
        super().restore(state)
        self.forwards.clear()

    def held_gradients(self, owner: str) -> list[np.ndarray]:
        """The returned gradients this server holds of ``owner``'s last batches, oldest first."""
        return list(self.held.get(owner, ()))

    def intercepted_outputs(self, owner: str) -> np.ndarray:
        raise ConfigError("under --topology u-shaped the server never sees the outputs: the "
                          "owner's tail computes them")

    def query_outputs(self, owner: str, x: np.ndarray) -> np.ndarray:
        raise ConfigError("under --topology u-shaped the server cannot compute the outputs: "
                          "the tail is the owner's")


class UShapedSharingOwner(SharingOwner):
    """Secret-shared u-shaped: the servers compute the middle on shares; the owner reveals
    its output (as a vanilla sharing owner reveals the logits), runs its tail and loss, and
    sends d loss / d middle back as two shares (``GRAD_SHARE``). No server ever holds more
    than one share of anything the owner sends: no labels, no usable gradient."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if self.net.tail is None:
            raise ConfigError(f"{name}: a u-shaped owner needs a network with a tail")

    def remote_step(self, h: np.ndarray, y: np.ndarray,
                    step: int = 0) -> tuple[np.ndarray, float]:
        assert self.model is not None
        h0, h1 = self._shares(h)
        self.request(SERVER1, [(K.SHARE, h1)])
        middle = self._collect(K.SHARE, h0, Op.LOGITS)
        self.wraps.check(middle, "middle activations", step)
        g, loss = _tail_backward(self, middle, y)
        # The label defences saw the mean loss's gradient (as on one server); the shares carry
        # the summed loss's (entries ~1 survive fixed point; the servers divide lr by B).
        g0, g1 = self._shares((g * len(y)).numpy())
        self.request(SERVER1, [(K.GRAD_SHARE, g1)])
        dh = self._collect(K.GRAD_SHARE, g0, Op.CUT_GRAD) / len(y)
        self.wraps.check(dh, "cut-layer gradient", step)
        return dh, loss

    def remote_logits(self, h: np.ndarray) -> np.ndarray:
        middle = super().remote_logits(h)
        _finite_batch(middle, len(h), self.net.middle_shape, "the middle's output")
        tail = self._deployed().tail
        with torch.no_grad():
            tail.eval()
            return tail(torch.from_numpy(middle.astype(np.float32))).numpy()


# --- what the lab calls --------------------------------------------------------------------
def role_classes(u_shaped: bool) -> tuple[type[DataOwner], type[ComputeServer]]:
    """The owner and server classes of a one-server topology."""
    return (UShapedOwner, UShapedServer) if u_shaped else (DataOwner, ComputeServer)


def check_topology(topology: str, *, attacks: tuple[str, ...],
                   label_defences: list[str]) -> None:
    """One line for each combination a topology cannot run."""
    if topology != "u-shaped":
        if label_defences:
            raise ConfigError(f"--defence {label_defences[0]} perturbs the gradient a u-shaped "
                              "owner sends back: it needs --topology u-shaped (under vanilla "
                              "the server is sent the labels themselves)")
        return
    if attacks and {"output"} >= set(attacks):
        raise ConfigError("--attack output needs --topology vanilla: under u-shaped the "
                          "outputs never leave the owner's tail")


def label_reports(backend: Any, cast: Any, adversaries: list[str], protocol: str,
                  net: Any, train_labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every adversary's label inference, scored against the owners' logged labels."""
    from actors.owner_host import OwnerHost
    from attack.labels import align, score_label_inference, vanilla_labels

    if net.tail is None:
        counts = np.bincount(np.asarray(train_labels, np.int64), minlength=net.classes)
        chance = float(counts.max() / max(counts.sum(), 1))
        return {a: vanilla_labels(a, protocol, net.classes, chance) for a in adversaries}
    if cast.dealer is not None:  # secret-shared: each server holds one share of each gradient
        return {a: {"via": "one share of each returned gradient (GRAD_SHARE)",
                    "label_accuracy": None, "chance": None,
                    "note": "uniformly random shares: nothing beyond chance"
                    if a != "colluding-servers" else "not measured: pooling both servers' "
                    "GRAD_SHARE shares would give the plaintext gradients (and their leak)"}
                for a in adversaries}
    labels = {o: backend.call(cast.host_of[o], OwnerHost.owner_call, o, UShapedOwner.sent_labels)
              for o in cast.owners}
    out = {}
    for adversary in adversaries:
        role = cast.adversaries[adversary][0]
        batches = []
        for owner in cast.owners:
            held = backend.call(role, "held_gradients", owner)
            batches += align(held, labels[owner])
        out[adversary] = score_label_inference(batches, net.classes)
    return out
