"""What a defence is: one ordered step around what the data owner sends.

Like Flower's client *mods* (``flwr.client.mod.LocalDpMod`` wraps what a client sends), each
defence is a small object with up to four hooks, all optional:

* :meth:`OwnerDefence.transform` ``(h) -> h`` -- rewrite the cut activations (N, *cut_shape)
  before they leave the owner, in training and at inference. The composed
  :class:`defences.spec.Defences` applies the transforms in ascending :attr:`~OwnerDefence.order`
  (ties: by name), so the built-ins run dropout (10) before clipping and noise (90) and what goes
  on the wire is exactly the noise mechanism's output;
* :meth:`OwnerDefence.penalty` ``(x, h) -> loss`` -- an extra term on the owner's training loss,
  given the inputs and the *clean* activations (before any transform); the terms are summed;
* :meth:`OwnerDefence.epsilon` -- the per-query ``(epsilon, delta)`` the defence guarantees for
  whatever reaches it;
* a query gate (subclass :class:`QueryGate`) -- how many of a party's oracle queries to answer;
* a *detector* (subclass :class:`ServerCheck`) -- the owner verifying its compute server:
  :meth:`ServerCheck.fake_labels` may turn a training batch into a probe (other labels, no
  local update) and :meth:`ServerCheck.observe_gradient` sees every gradient the server sends
  back; a :class:`Verdict` stops training (the owner raises :class:`ServerJudgedMalicious`).
  Its :meth:`ServerCheck.state` / :meth:`ServerCheck.load_state` (named numeric arrays) put it
  in the lab's checkpoints, so it survives ``--chaos`` rollbacks and ``--resume``; every other
  defence's generators travel the same way (:meth:`OwnerDefence.state`);
* :meth:`OwnerDefence.gradient` ``(g, y) -> g`` -- U-shaped splits: rewrite the per-example
  gradient the owner sends back to the server's middle (label defences, ``defences.labels``).

A defence declares its ``--defence`` name and its parameter table (:class:`Param` per key) as
class attributes; the parser types each ``key=value`` from that table and the class checks the
ranges in its constructor. A defence that draws randomness sets ``random = True``, declares an
``int`` key ``seed`` and takes a keyword ``stream``: :func:`defence_generator` then gives each
owner its own generator (see there).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from protocol.errors import ConfigError, SplitWireError

#: Position in the outgoing chain when a defence does not say (between dropout and noise).
DEFAULT_ORDER = 50


@dataclass(frozen=True)
class Param:
    """How one ``key=value`` is typed; ranges beyond "finite, >= 0" are the class's to check."""

    kind: str  # "float", "int" or "choice"
    required: bool = False
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "choice"):
            raise ValueError(f"parameter kind must be float, int or choice, got {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError("a choice parameter needs choices, and only a choice has them")


class OwnerDefence(ABC):  # every hook is optional: the ABC marks the interface
    """One defence the data owner applies; override the hooks it needs (defaults: no effect)."""

    #: The ``--defence`` name, lower case.
    name: ClassVar[str]
    #: Accepted ``key=value`` keys; optional keys take the constructor's defaults when absent.
    params: ClassVar[Mapping[str, Param]]
    #: Where :meth:`transform` runs in the outgoing chain; lower runs first.
    order: ClassVar[int] = DEFAULT_ORDER
    #: True if the defence draws randomness: it then takes ``seed`` and ``stream``.
    random: ClassVar[bool] = False

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """What to send instead of the activations ``h`` (N, *cut_shape); default: ``h``."""
        return h

    def penalty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """Extra owner loss for inputs ``x`` (N, C, H, W) and clean ``h``; default: none."""
        return None

    def epsilon(self) -> tuple[float, float] | None:
        """Per-query ``(epsilon, delta)`` for one input, if the defence guarantees one."""
        return None

    def gradient(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """U-shaped splits only: what to send back instead of the per-example gradient ``g``
        (B, *middle_shape) of the owner's loss w.r.t. the middle's output, given the batch's
        labels ``y`` (B,) (label defences: ``max-norm``, ``marvell``); default: ``g``."""
        return g

    #: True if the defence rewrites :meth:`gradient` (it then needs ``--topology u-shaped``).
    label_defence: ClassVar[bool] = False

    def state(self) -> dict[str, np.ndarray]:
        """What the defence must carry across a rollback or ``--resume``, as named arrays of
        numbers (kept with the owner's checkpoint, written into ``state.npz``, loaded without
        pickle). Default: the state of every ``torch.Generator`` attribute, keyed by its name:
        a random defence (noise, dropout, the label noises) then draws, on the steps replayed
        after a rollback, exactly what it drew on their first try."""
        return {name: generator_state(value) for name, value in sorted(vars(self).items())
                if isinstance(value, torch.Generator)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from :meth:`state`'s output. Default: the generators named in ``state``
        (one missing: left as it is, e.g. a checkpoint written before defences had state)."""
        for name, value in state.items():
            gen = vars(self).get(name)
            if not isinstance(gen, torch.Generator):
                raise ConfigError(f"--defence {self.name}: the checkpoint holds state "
                                  f"{name!r}, which this defence does not have")
            set_generator_state(gen, value, f"--defence {self.name}")


class QueryBudgetExceeded(SplitWireError):
    """A party asked for queries after its budget was used up."""


class QueryGate(OwnerDefence):
    """A defence that decides how many of a party's oracle queries the owner answers."""

    @abstractmethod
    def charge(self, party: str, n: int) -> int:
        """Spend up to ``n`` of ``party``'s queries; return how many are answered (0..n)."""

    def refund(self, party: str) -> None:
        """Forget what ``party`` has spent (the lab scores alternative strategies this way)."""

    def refusal(self, party: str, n: int) -> str:
        """The one-line reason :meth:`require` gives when nothing is answered."""
        return f"party {party!r} was refused {n} queries by --defence {self.name}"

    def require(self, party: str, n: int) -> int:
        """Like :meth:`charge`, but raise :class:`QueryBudgetExceeded` if none is answered."""
        granted = self.charge(party, n)
        if n > 0 and granted == 0:
            raise QueryBudgetExceeded(self.refusal(party, n))
        return granted


def check_seed(flag: str, seed: object) -> int:
    """``seed`` as given, refused unless it is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{flag}: seed must be an integer >= 0, got {seed!r}")
    return seed


def check_stream(stream: object) -> int | str:
    """An owner's stream: an integer >= 0 or a non-empty string (e.g. the owner's name)."""
    if isinstance(stream, bool) or not isinstance(stream, (int, str)):
        raise ConfigError(f"defence stream must be an integer or a name, got {stream!r}")
    if (isinstance(stream, int) and stream < 0) or stream == "":
        raise ConfigError(f"defence stream must be an integer >= 0 or a name, got {stream!r}")
    return stream


def derive_seed(seed: int, stream: int | str, name: str) -> int:
    """The generator seed for defence ``name`` with spec ``seed`` in owner ``stream``.

    Stream ``0`` is the seed itself, so the first owner (and any caller that gives no stream)
    draws exactly what ``torch.Generator().manual_seed(seed)`` draws. Any other stream hashes
    (name, seed, stream) into 63 bits: distinct owners get unrelated generators, and the same
    owner with the same seed gets the same draws in every run. The type is hashed with the value
    so stream ``1`` and stream ``"1"`` differ.
    """
    if stream == 0 and not isinstance(stream, str):
        return seed
    text = f"splitwire-defence\0{name}\0{seed}\0{type(stream).__name__}:{stream}"
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def defence_generator(seed: int, stream: int | str, name: str) -> torch.Generator:
    """A CPU generator for one owner's draws: seeded, reproducible and device independent."""
    return torch.Generator().manual_seed(derive_seed(seed, check_stream(stream), name))


# --- detectors: the owner checks its compute server ----------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A detector's judgement that the server is malicious, and why (results.json's
    ``detection``)."""

    detector: str
    step: int  # the global training step at which it was judged
    score: float  # the detector's statistic at that step (its meaning: ``reason``)
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"detector": self.detector, "step": self.step, "score": self.score,
                "reason": self.reason}


class ServerJudgedMalicious(SplitWireError):
    """An owner's detector judged the compute server malicious: training stops here.

    Raised by the owner inside its training step; the trainer catches it, stops training, and
    the lab goes on to deployment, inference, attacks and reporting (nothing is lost).
    """

    def __init__(self, verdict: Verdict, owner: str = "") -> None:
        super().__init__(f"{owner or 'the owner'}: --defence {verdict.detector} judged the "
                         f"server malicious at step {verdict.step}: {verdict.reason}")
        self.verdict, self.owner = verdict, owner

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Ray) whole
        return (type(self), (self.verdict, self.owner))


@dataclass(frozen=True)
class OwnerContext:
    """What an owner tells its detectors once, when it is built: its network (the run's
    initial weights), its private training shard and its optimiser settings, so a detector
    can simulate honest training locally (SplitOut)."""

    net: Any  # actors.nets.descriptor.SplitNetwork (not imported: defences stay below actors)
    train_x: torch.Tensor
    train_y: torch.Tensor
    batch_size: int
    lr: float
    momentum: float
    name: str = "owner:0"
    #: The owner's other (non-detector) defences, in transform order: a simulation of honest
    #: training applies them as the owner does (filled in by ``Defences.bind``).
    others: tuple[OwnerDefence, ...] = ()


@dataclass(frozen=True)
class Observation:
    """One training step as the owner saw it, for a detector."""

    step: int  # global step id
    x: torch.Tensor  # (N, C, H, W) inputs
    y: torch.Tensor  # the labels sent (the fake ones on a fake batch)
    h: torch.Tensor  # clean activations, still attached to ``model``'s graph
    grad: np.ndarray  # the cut-layer gradient the server sent back, same shape as h
    fake: bool  # True on a probe batch from :meth:`ServerCheck.fake_labels`
    model: torch.nn.Module  # the first part being trained


class ServerCheck(OwnerDefence):
    """A defence that verifies the compute server from the gradients it sends back."""

    def bind(self, context: OwnerContext) -> None:  # noqa: B027 - optional hook
        """Called once when the owner is built (before any training step)."""

    def fake_labels(self, step: int, y: torch.Tensor) -> torch.Tensor | None:
        """Labels to send instead of ``y`` to make this batch a probe (the owner then does
        not update its part on it); ``None``: a regular batch. Default: never."""
        return None

    @abstractmethod
    def observe_gradient(self, obs: Observation) -> Verdict | None:
        """See one step's gradient; a :class:`Verdict` if the server is judged malicious."""

    def state(self) -> dict[str, np.ndarray]:
        """Everything the detector has gathered so far (counts, collected gradients, its
        generator), as named arrays of numbers: the lab keeps it with the owner's checkpoint
        and writes it into ``state.npz`` (loaded without pickle), so after a rollback or a
        ``--resume`` the detector goes on from exactly this point and counts no replayed step
        twice. Default: nothing (a detector without state, or one that does not survive)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027 - optional
        """Continue from :meth:`state`'s output (malformed state: ``ConfigError``)."""


def generator_state(gen: torch.Generator) -> np.ndarray:
    """A CPU generator's state as bytes (uint8), for a detector's :meth:`ServerCheck.state`."""
    return gen.get_state().numpy().copy()


def set_generator_state(gen: torch.Generator, state: np.ndarray, flag: str) -> None:
    """Put ``gen`` back where :func:`generator_state` saw it."""
    arr = np.asarray(state)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ConfigError(f"{flag}: a checkpointed generator state is uint8 bytes, got "
                          f"{arr.dtype} {arr.shape}")
    try:
        gen.set_state(torch.from_numpy(arr.copy()))
    except RuntimeError as exc:
        raise ConfigError(f"{flag}: unusable checkpointed generator state ({exc})") from None


def state_array(state: Mapping[str, np.ndarray], key: str, flag: str, kind: str,
                ndim: int | None = None) -> np.ndarray:
    """``state[key]``, refused with one line if it is missing, not of numpy kind ``kind``
    ("i", "f", "b"; "f" also takes integers) or not ``ndim``-dimensional."""
    if key not in state:
        raise ConfigError(f"{flag}: the checkpoint's detector state has no {key!r}")
    arr = np.asarray(state[key])
    ok = arr.dtype.kind == kind or (kind == "f" and arr.dtype.kind in "iu")
    if not ok or (ndim is not None and arr.ndim != ndim):
        raise ConfigError(f"{flag}: checkpointed {key!r} is {arr.dtype} {arr.shape}")
    return arr
