"""The data owner: holds private inputs, runs the first part, answers oracle queries."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from actors.faults import Crash
from actors.nets.descriptor import SplitNetwork
from actors.nets.sgd import MomentumSGD
from actors.role import Role
from actors.wire import Network
from defences.base import Observation, OwnerContext, ServerJudgedMalicious
from defences.spec import DefenceSpec, build_defences
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
class TurnPlan:
    """What one call to ``DataOwner.train_chunk`` does: a run of batches of one epoch.

    Batch ``j`` of the owner's epoch carries global step id ``first_step + j - start``: the
    lab numbers every batch of the run, so a retried batch has the same id as its first try.
    """

    epoch: int
    first_step: int
    start: int = 0  # first batch (of this owner's epoch) to train
    stop: int | None = None  # stop before this batch; None: to the end of the shard
    pull_from: str | None = None  # SplitFed: fetch the round's first part from the fed server
    send_to: str | None = None  # at the epoch's end: hand the first part on (owner or fed server)
    keep_state: bool = True  # return the trained state (the lab checkpoints after this chunk)


@dataclass(frozen=True)
class TurnReport:
    owner: str
    epoch: int
    batches: int  # trained in this call
    examples: int
    loss_sum: float
    next_batch: int  # where the owner's next chunk of this epoch starts
    n_batches: int  # batches in the owner's whole epoch


class SharedWeights:
    """Identical first parts held once per process.

    Virtual owners on one host all deploy the same final first part: an arriving part equal
    to one already held (compared in full: ~0.1 ms for 3 MB, where hashing took 2 ms) is not
    copied again, and each distinct part gets one model. 1,000 owners then hold one array and
    one model instead of 1,000. Weak references: freed when no owner uses them.
    """

    def __init__(self, net: SplitNetwork) -> None:
        self.net = net
        self._recent: list[weakref.ref] = []
        self._models: dict[int, tuple[weakref.ref, torch.nn.Module]] = {}

    def array(self, flat: np.ndarray) -> np.ndarray:
        for ref in self._recent:
            known = ref()
            if known is not None and known.shape == flat.shape and np.array_equal(known, flat):
                return known
        own = np.array(flat, np.float32)  # our own copy: the frame's buffer is not ours
        own.flags.writeable = False
        self._recent = [r for r in self._recent if r() is not None][-3:] + [weakref.ref(own)]
        return own

    def model(self, flat: np.ndarray) -> torch.nn.Module:
        """A read-only (eval) first part with the state in ``flat`` (weights first)."""
        flat = self.array(flat)
        self._models = {k: v for k, v in self._models.items() if v[0]() is not None}
        found = self._models.get(id(flat))
        if found is not None and found[0]() is flat:
            return found[1]
        model = self.net.owner_from(flat).eval().requires_grad_(False)
        self._models[id(flat)] = (weakref.ref(flat), model)
        return model


@dataclass(frozen=True)
class InferenceReport:
    owner: str
    examples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.examples, 1)


class DataOwner(Role):
    """Runs the first part on private data; only cut-layer tensors ever leave it.

    The first part is not the owner's to keep: it arrives (from the previous owner, from the
    fed server, or from the lab's checkpoint), is trained for a turn, and is handed on. Between
    turns an owner holds only its shard and its links, so one process can host many (virtual
    owners, ``actors.owner_host``); the trained state goes back to the lab after every chunk.

    It also exposes the deployed first part as a public service (``QUERY`` frames): that
    oracle is what a black-box attacker uses, exactly as any user of the deployed model could.
    """

    def __init__(
        self,
        name: str,
        *,
        server: str,
        net: SplitNetwork,
        codec: str,
        session: int,
        network: Network,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        config: TrainConfig,
        model: torch.nn.Module | None = None,
        defences: tuple[DefenceSpec, ...] = (),
        shared: SharedWeights | None = None,
    ) -> None:
        super().__init__(name, codec, session, network)
        # Built here, inside the owner: noise generators and budgets are the owner's own.
        # Each owner draws its own noise and dropout (stream: its index; owner 0 keeps the
        # spec's seed as it is, so a one-owner run draws what it always drew).
        self.defences = build_defences(defences, stream=_owner_index(name))
        self.server = server
        self.net = net
        self.train_x, self.train_y = (torch.as_tensor(a) for a in train)
        self.test_x, self.test_y = (torch.as_tensor(a) for a in test)
        self.config = config
        if self.defences.checks:  # detectors (SplitGuard, SplitOut) learn who they guard
            self.defences.bind(OwnerContext(net, self.train_x, self.train_y, config.batch_size,
                                            config.lr, config.momentum, name))
        self.shared = shared or SharedWeights(net)
        self.model: torch.nn.Module | None = None  # the first part being trained, or deployed
        self.opt: MomentumSGD | None = None
        self.inbox: np.ndarray | None = None  # the last first part handed to us (WEIGHTS)
        if model is not None:  # a stand-alone owner that starts with its own first part
            self._begin(net.owner_layout.pack(model))
        self.queries_answered = 0
        self.chaos_step: int | None = None
        self.sent_step = -1  # the last training step id this owner sent

    def last_step(self) -> int:
        return self.sent_step

    # --- training ----------------------------------------------------------------------------
    def n_batches(self) -> int:
        return -(-len(self.train_x) // self.config.batch_size)

    def train_chunk(self, plan: TurnPlan,
                    state: np.ndarray | None = None) -> tuple[TurnReport, np.ndarray | None]:
        """Train batches ``plan.start``..``plan.stop`` of epoch ``plan.epoch``.

        The first part comes from ``state`` (the lab restoring a checkpoint), else the fed
        server (SplitFed), else what the previous owner handed over, else the model this owner
        is already training (the next chunk of its turn). Returns the report and the trained
        state (weights and momentum), which the lab keeps as its checkpoint.
        """
        if state is not None:
            self._begin(state)
        elif plan.pull_from is not None and plan.start == 0:
            self._begin(self._pull(plan.pull_from, plan.epoch))
        elif self.inbox is not None:  # handed over: our turn starts with it
            self._begin(self.inbox)
        if self.opt is None or self.model is None:
            raise ShapeError(f"{self.name} has no first part to train (nothing handed over)")
        self.inbox = None
        self.model.train()
        n, size = len(self.train_x), self.config.batch_size
        # The order of an epoch's batches is a function of (seed, owner, epoch) alone, so a
        # retried chunk trains exactly the batches of its first try.
        gen = torch.Generator().manual_seed(
            (self.config.seed * 1_000_003 + plan.epoch) * 65_537 + sum(self.name.encode()))
        perm = torch.randperm(n, generator=gen)
        stop = self.n_batches() if plan.stop is None else min(plan.stop, self.n_batches())
        losses: list[float] = []
        for j in range(plan.start, stop):
            step = plan.first_step + j - plan.start
            if self.chaos_step is not None and step >= self.chaos_step:
                self.chaos_step = None
                raise Crash(self.name, step)
            idx = perm[j * size:(j + 1) * size]
            self.sent_step = step
            losses.append(self.train_step(self.train_x[idx], self.train_y[idx], step))
        examples = min(stop * size, n) - min(plan.start * size, n)
        report = TurnReport(self.name, plan.epoch, len(losses), examples, float(sum(losses)),
                            stop, self.n_batches())
        state = self.flat_weights() if plan.keep_state else None
        if plan.send_to is not None:  # the turn is over: pass the first part on
            self.hand_off(plan.send_to, examples=n)
            self.model = self.opt = None  # handed on: the next holder trains it, not us
        # No flush here: the tap's copies travel in the background (bounded) and are waited
        # for before anyone reads the capture (inference flushes).
        return report, state

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> float:
        """One split-learning step: activations out, cut-layer gradient back, local update."""
        assert self.model is not None and self.opt is not None
        self.opt.zero_grad()
        h = self.model(x)
        sent = self.defences.apply(h)  # dropout, clipping and noise: what goes on the wire
        fake = self.defences.fake_labels(step, y)  # a detector's probe batch, or None
        labels = y if fake is None else fake
        grad, loss = self.remote_step(sent.detach().numpy(), labels.numpy(), step)
        if grad.shape != tuple(h.shape) or not np.all(np.isfinite(grad)):
            raise ShapeError(f"bad cut-layer gradient {grad.shape} for activations "
                             f"{tuple(h.shape)}")
        if self.defences.checks:
            verdict = self.defences.observe(
                Observation(step, x, labels, h, grad, fake is not None, self.model))
            if verdict is not None:  # before the update: a hijacked step is not applied
                raise ServerJudgedMalicious(verdict, self.name)
            if fake is not None:  # SplitGuard: the owner's part never learns from a probe
                return loss
        penalty = self.defences.penalty(x, h)  # NoPeek: the owner's own extra loss
        outputs, grads = [sent], [torch.from_numpy(grad.astype(np.float32))]
        if penalty.requires_grad:
            outputs.append(penalty)
            grads.append(torch.ones_like(penalty))
        torch.autograd.backward(outputs, grads)
        self.opt.step()
        return loss

    def remote_step(self, h: np.ndarray, y: np.ndarray, step: int = 0) -> tuple[np.ndarray, float]:
        """Vanilla split learning: step id, labels and activations out; gradient and loss back."""
        replies = self.request(self.server, [(MessageKind.STEP, np.array([step], np.int64)),
                                             (MessageKind.LABELS, y),
                                             (MessageKind.ACTIVATIONS, h)])
        grad = self.expect(replies, MessageKind.GRADIENTS, self.server).tensor
        loss = self.expect(replies, MessageKind.CONTROL, self.server).tensor
        return grad, float(loss[0])

    def remote_logits(self, h: np.ndarray) -> np.ndarray:
        replies = self.request(self.server, [(MessageKind.INFER_ACTIVATIONS, h)])
        return self.expect(replies, MessageKind.PREDICTIONS, self.server).tensor

    def api_logits(self, h: np.ndarray) -> np.ndarray:
        """The prediction API's server leg: its own message kinds, so nobody mistakes a
        customer's query for the owner's private inference."""
        replies = self.request(self.server, [(MessageKind.API_ACTIVATIONS, h)])
        logits = self.expect(replies, MessageKind.API_PREDICTIONS, self.server).tensor
        if logits.shape != (len(h), self.net.classes):
            raise ShapeError(f"API predictions shape {logits.shape} for {len(h)} queries")
        return logits

    def check_state(self) -> dict[str, np.ndarray]:
        """The detectors' state (SplitGuard's gradients and schedule, SplitOut's reference
        model and window), for the lab's checkpoint; empty without a detector."""
        return self.defences.check_state()

    def load_check_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Detectors back to a checkpoint (a rollback, a restart, ``--resume``): the steps
        replayed after it are then seen once, as on their first try."""
        self.defences.load_check_state(state)

    def adopt(self, state: np.ndarray) -> None:
        """Hold the first part ``state`` (weights and momentum) as if training it: the lab
        resuming a run that a detector had stopped hands the detecting owner its part."""
        self._begin(state)

    def arm_chaos(self, step: int) -> None:
        """--chaos owner:I@STEP: die on reaching global training step ``step``."""
        self.chaos_step = step

    # --- deployment and inference ------------------------------------------------------------
    def deploy(self, pull_from: str | None = None) -> None:
        """Serve the final first part: the fed server's (SplitFed), else the one handed to us,
        else the one this owner trained last. Identical parts are shared within a process."""
        if pull_from is not None:
            flat = self._pull(pull_from, -1)
        elif self.inbox is not None:
            flat = self.inbox
        elif self.model is not None:
            flat = self.flat_weights()
        else:
            raise ShapeError(f"{self.name} has no first part to deploy")
        self.inbox, self.opt = None, None
        self.model = self.shared.model(flat)

    def _deployed(self) -> torch.nn.Module:
        if self.model is None:
            raise ShapeError(f"{self.name} has no deployed first part yet")
        return self.model

    @torch.no_grad()
    def infer(self, batch_size: int = 250) -> InferenceReport:
        """Predict the private test set through the server; activations cross the wire."""
        model = self._deployed().eval()
        correct = 0
        for start in range(0, len(self.test_x), batch_size):
            x, y = self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]
            logits = self.remote_logits(self.defences.apply(model(x)).numpy())
            if logits.shape != (len(x), self.net.classes):
                raise ShapeError(f"predictions shape {logits.shape} for a batch of {len(x)}")
            correct += int((logits.argmax(1) == y.numpy()).sum())
        self.network.flush()
        return InferenceReport(self.name, len(self.test_x), correct)

    # --- the public oracle and weight hand-off -----------------------------------------------
    def handlers(self) -> dict[MessageKind, Callable[[Message], list[bytes]]]:
        return {MessageKind.QUERY: self._on_query, MessageKind.QUERY_OUTPUT: self._on_query,
                MessageKind.WEIGHTS: self._on_weights}

    def _on_query(self, msg: Message) -> list[bytes]:
        """The deployed service: first-part outputs (QUERY) or the whole model's softmax
        (QUERY_OUTPUT), for at most the budget's worth of inputs."""
        self.net.check_images(msg.tensor, "query")
        x = msg.tensor
        if self.defences.budget is not None:  # answer the first queries up to the budget
            x = x[: self.defences.budget.charge(msg.sender, len(x))]
            if len(x) == 0:
                self.defences.budget.require(msg.sender, 1)  # raises: dropped, counted
        model = self._deployed()
        with torch.no_grad():
            model.eval()
            # the deployed service answers with what the owner would send: defended
            out = self.defences.apply(model(torch.from_numpy(x.astype(np.float32)))).numpy()
        if msg.kind == MessageKind.QUERY_OUTPUT:  # the whole model: ask the server
            out = softmax(self.api_logits(out))
        self.queries_answered += len(x)
        return [self.reply(msg.sender, MessageKind.QUERY_RESULT, out)]

    def _on_weights(self, msg: Message) -> list[bytes]:
        self.require_owner(msg)  # only the previous owner hands the first part on
        self._check_flat(msg.tensor)
        self.inbox = self.shared.array(msg.tensor)
        return []

    def _pull(self, fed: str, round_: int) -> np.ndarray:
        replies = self.request(fed, [(MessageKind.MODEL_REQUEST, np.array([round_], np.int64))])
        flat = self.expect(replies, MessageKind.WEIGHTS, fed).tensor
        self._check_flat(flat)
        return self.shared.array(flat)

    def refund_queries(self, party: str) -> None:
        """Lab instrumentation: ``party``'s query budget (if any) starts afresh."""
        if self.defences.budget is not None:
            self.defences.budget.refund(party)

    def first_part_weights(self) -> np.ndarray:
        """The first part's state dict alone, buffers included, no momentum (for a white-box
        attack's threat model)."""
        return self.net.owner_layout.pack(self._deployed())[:self.net.owner_layout.weights_size]

    def flat_weights(self) -> np.ndarray:
        """The first part and its SGD momentum, one vector: round-robin training then equals
        sequential training over the owners' data (momentum would otherwise go stale)."""
        return self.net.owner_layout.pack(self._deployed(), self.opt)

    def _check_flat(self, flat: np.ndarray) -> None:
        self.net.owner_layout.check(flat)

    def _begin(self, flat: np.ndarray) -> None:
        """Start training from ``flat``: a private model and optimiser with that momentum."""
        self._check_flat(flat)
        model = self.net.owner_from(flat)
        named = dict(model.named_parameters())
        opt = MomentumSGD(list(named.values()), lr=self.config.lr, momentum=self.config.momentum)
        for key, m in self.net.owner_layout.momentum(flat).items():
            opt.state[named[key]]["momentum_buffer"] = m.clone()
        self.model, self.opt = model, opt

    def share_with(self, owners: list[str]) -> None:
        """Deployment: hand the final first part to every other owner, over the wire."""
        for to in owners:
            self.request(to, [(MessageKind.WEIGHTS, self.flat_weights())])
        self.network.flush()

    def hand_off(self, to: str, examples: int | None = None) -> None:
        """Pass the first part on, over the wire: to the next owner (vanilla split learning)
        or to the fed server (SplitFed, with this owner's example count for the average)."""
        items = [(MessageKind.WEIGHTS, self.flat_weights())]
        if examples is not None and not to.startswith("owner:"):
            items.insert(0, (MessageKind.CONTROL, np.array([examples], np.int64)))
        self.request(to, items)


def _owner_index(name: str) -> int | str:
    head, _, index = name.partition(":")
    return int(index) if head == "owner" and index.isdigit() else name


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities, as a prediction API returns them (stable for any finite input)."""
    z = np.clip(np.asarray(logits, np.float64), -1e4, 1e4)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
