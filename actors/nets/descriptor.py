"""The split-network descriptor: the one place that knows the network's shapes.

A :class:`SplitNetwork` holds the owner's part and the server's part as torch modules (the
run's initial weights), the input shape (C, H, W), the number of classes and the cut's tensor
shape, which is *derived* by a dry run through the owner's part, never declared. Every role,
frame check, attack, defence, metric and report reads its shapes here, so nothing else in the
lab holds an image size, a cut width or a class count.

Weights travel as state dicts, buffers included (BatchNorm running statistics): a
:class:`StateLayout` flattens a part's ``state_dict()`` into one float32 vector in a fixed key
order that both ends derive from the same descriptor, so a ``WEIGHTS`` frame carries numbers
only (no keys, nothing pickled) and loads back with every parameter and buffer in place.

A U-shaped split (``--topology u-shaped``) has a third part, the owner's *tail* (the last
layers, to the logits): the server's part is then the *middle*, and the owner's part is
:class:`HeadAndTail`, whose forward is the head alone, so everything that runs "the first part"
(oracle, attacks, deployment) runs the head, while the tail's weights and momentum travel in the
same flat state (hand-offs, checkpoints, SplitFed averages) as the head's.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from protocol.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from actors.nets.sgd import MomentumSGD

Shape = tuple[int, ...]
#: Integer buffers (BatchNorm's ``num_batches_tracked``) travel as float32: exact below 2^24.
_EXACT_INT = 2**24


@dataclass(frozen=True)
class Entry:
    key: str
    shape: Shape
    dtype: torch.dtype
    is_param: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class StateLayout:
    """The order, shapes and dtypes of a module's state dict, and its flat float32 form.

    ``state`` vectors are ``[every state-dict entry][the momentum of every parameter]``:
    momentum travels with the weights so that round-robin training equals sequential training
    over the owners' data (momentum would otherwise go stale at each hand-off).
    """

    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, module: nn.Module) -> StateLayout:
        return cls(tuple(Entry(key, tuple(value.shape), value.dtype,
                                 isinstance(value, nn.Parameter))
                           for key, value in module.state_dict(keep_vars=True).items()))

    @property
    def weights_size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def momentum_size(self) -> int:
        return sum(e.size for e in self.entries if e.is_param)

    @property
    def state_size(self) -> int:
        return self.weights_size + self.momentum_size

    def pack(self, module: nn.Module, opt: MomentumSGD | None = None) -> np.ndarray:
        """Weights, buffers and (zero if absent) momentum as one float32 vector."""
        state = module.state_dict()
        named = dict(module.named_parameters())
        opt_state = opt.state if opt is not None else {}
        parts: list[np.ndarray] = []
        for e in self.entries:
            value = state[e.key].detach()
            if not value.is_floating_point() and value.numel() and value.abs().max() >= _EXACT_INT:
                raise ShapeError(f"buffer {e.key} holds {int(value.abs().max())}, too large to "
                                 "travel as float32")
            parts.append(value.reshape(-1).to(torch.float32).numpy())
        for e in self.entries:
            if e.is_param:
                m = opt_state.get(named[e.key], {}).get("momentum_buffer")
                parts.append(np.zeros(e.size, np.float32) if m is None
                             else m.detach().reshape(-1).numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def check(self, flat: np.ndarray, with_momentum: bool = True) -> None:
        size = self.state_size if with_momentum else self.weights_size
        if flat.dtype != np.float32 or flat.shape != (size,):
            raise ShapeError(f"weights must be float32 ({size},), got {flat.dtype} {flat.shape}")
        if not np.all(np.isfinite(flat)):
            raise ShapeError("weights contain NaN/inf")

    def state_dict(self, flat: np.ndarray) -> OrderedDict[str, torch.Tensor]:
        """The state dict at the head of ``flat`` (copies: the frame's buffer is not ours)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        off = 0
        for e in self.entries:
            chunk = torch.from_numpy(np.array(flat[off:off + e.size], np.float32))
            if not e.dtype.is_floating_point:
                chunk = torch.round(chunk)
            out[e.key] = chunk.to(e.dtype).view(e.shape)
            off += e.size
        return out

    def momentum(self, flat: np.ndarray) -> dict[str, torch.Tensor]:
        """The parameters' momentum buffers by state-dict key."""
        off, out = self.weights_size, {}
        for e in self.entries:
            if e.is_param:
                out[e.key] = torch.from_numpy(np.array(flat[off:off + e.size], np.float32)
                                              ).view(e.shape)
                off += e.size
        return out


class HeadAndTail(nn.Module):
    """The owner's two parts under a U-shaped split: ``forward`` is the head (the cut layer's
    output); ``tail`` maps the middle's output to the logits, at the owner."""

    def __init__(self, head: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@dataclass(frozen=True)
class SplitNetwork:
    """A network split at a cut: what every part of the lab reads its shapes from."""

    name: str
    owner: nn.Module  # the first part with the run's initial weights (a template: copy it)
    server: nn.Module
    input_shape: Shape  # (C, H, W)
    classes: int
    cut: str
    cut_shape: Shape = field(default=())  # derived by ``build``
    owner_layout: StateLayout = field(default=StateLayout(()), repr=False)
    #: U-shaped only: the last layer the server's middle runs, and the middle output's shape.
    tail_cut: str | None = None
    middle_shape: Shape = field(default=())

    @classmethod
    def build(cls, name: str, owner: nn.Module, server: nn.Module, input_shape: Shape,
              classes: int, cut: str, tail: nn.Module | None = None,
              tail_cut: str | None = None) -> SplitNetwork:
        """Check the parts fit the input and the classes, and derive the cut's shape.

        With ``tail`` the split is U-shaped: ``server`` is the middle, ``tail`` (the owner's)
        takes the middle's output to the logits."""
        input_shape = tuple(int(d) for d in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ConfigError(f"network {name}: input shape must be (C, H, W), got {input_shape}")
        if classes < 2:
            raise ConfigError(f"network {name}: needs at least 2 classes, got {classes}")
        if not any(True for _ in owner.parameters()):
            raise ConfigError(f"network {name}: the owner's part up to {cut} has no weights "
                              "(the raw input would cross the wire): cut after a layer with "
                              "parameters")
        if isinstance(owner, HeadAndTail):  # a U-shaped network's parts, rebuilt
            owner, tail = owner.head, owner.tail
        probe = torch.zeros((2, *input_shape))
        owner, server = owner.eval(), server.eval()
        with torch.no_grad():
            try:
                h = owner(probe)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ConfigError(f"network {name}: the first part does not take input "
                                  f"{dims(input_shape)}: {_first_line(exc)}") from None
            if not isinstance(h, torch.Tensor) or h.ndim < 2 or h.shape[0] != 2:
                raise ConfigError(f"network {name}: the first part must return a (B, ...) "
                                  "tensor")
            try:
                out = server(h)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ConfigError(f"network {name}: the server part does not take the cut "
                                  f"{dims(tuple(h.shape[1:]))}: {_first_line(exc)}") from None
            middle: Shape = ()
            if tail is not None:
                middle = _middle_shape(name, out)
                try:
                    out = tail.eval()(out)
                except (RuntimeError, ValueError, TypeError) as exc:
                    raise ConfigError(f"network {name}: the owner's tail does not take the "
                                      f"middle's output {dims(middle)}: {_first_line(exc)}"
                                      ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"network {name}: the output is {got}, not the dataset's "
                              f"{classes} classes")
        mine: nn.Module = owner.train() if tail is None else HeadAndTail(owner, tail).train()
        return cls(name, mine, server.train(), input_shape, int(classes), cut,
                   tuple(int(d) for d in h.shape[1:]), StateLayout.of(mine),
                   tail_cut if tail is not None else None, middle)

    @property
    def topology(self) -> str:
        """``vanilla`` (the server computes the loss) or ``u-shaped`` (the owner keeps a tail
        and its labels)."""
        return "vanilla" if self.tail_cut is None else "u-shaped"

    @property
    def tail(self) -> nn.Module | None:
        """The owner's tail (its initial weights), or None for a vanilla split."""
        return self.owner.tail if isinstance(self.owner, HeadAndTail) else None

    # --- fresh parts ---------------------------------------------------------------------------
    def owner_part(self) -> nn.Module:
        return copy.deepcopy(self.owner)

    def server_part(self) -> nn.Module:
        return copy.deepcopy(self.server)

    def owner_from(self, flat: np.ndarray) -> nn.Module:
        """A first part with the weights and buffers at the head of ``flat``."""
        part = copy.deepcopy(self.owner)
        part.load_state_dict(self.owner_layout.state_dict(flat))
        return part

    def initial_state(self) -> np.ndarray:
        """The flat state a run starts from: the initial weights and zero momentum."""
        return self.owner_layout.pack(self.owner)

    # --- checks on what crosses the wire -------------------------------------------------------
    def check_images(self, x: np.ndarray, what: str) -> None:
        check_batch(x, self.input_shape, what)

    def check_cut(self, h: np.ndarray, what: str) -> None:
        check_batch(h, self.cut_shape, what)

    def check_logits(self, z: np.ndarray, what: str) -> None:
        check_batch(z, (self.classes,), what)

    def check_middle(self, m: np.ndarray, what: str) -> None:
        """A U-shaped split's middle output (or its gradient): (B, *middle_shape)."""
        check_batch(m, self.middle_shape, what)

    def with_parts(self, owner: nn.Module, server: nn.Module) -> SplitNetwork:
        """The same network and cut with other initial weights (same architecture)."""
        return SplitNetwork.build(self.name, owner, server, self.input_shape, self.classes,
                                  self.cut, tail_cut=self.tail_cut)

    def describe(self) -> str:
        if self.tail_cut is not None:
            return (f"{self.name} u-shaped, cut at {self.cut} and {self.tail_cut}: input "
                    f"{dims(self.input_shape)} -> cut {dims(self.cut_shape)} -> middle "
                    f"{dims(self.middle_shape)} -> the owner's tail -> {self.classes} classes")
        return (f"{self.name} cut at {self.cut}: input {dims(self.input_shape)} -> cut "
                f"{dims(self.cut_shape)} -> {self.classes} classes")


def check_batch(tensor: np.ndarray, shape: Shape, what: str) -> None:
    """A float batch of shape (B, *shape) with B >= 1: anything else is a ShapeError."""
    if tensor.ndim != 1 + len(shape) or tuple(tensor.shape[1:]) != tuple(shape) or (
            tensor.shape[0] < 1):
        raise ShapeError(f"{what} must have shape (B, {', '.join(map(str, shape))}), got "
                         f"{tensor.shape}")
    if tensor.dtype.kind != "f":
        raise ShapeError(f"{what} must be floating point, got {tensor.dtype}")


def _middle_shape(name: str, out: object) -> Shape:
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 2:
        raise ConfigError(f"network {name}: the server's middle must return a (B, ...) tensor")
    return tuple(int(d) for d in out.shape[1:])


def dims(shape: Shape) -> str:
    """A shape as the lab prints it: 8x24x24."""
    return "x".join(str(d) for d in shape)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
