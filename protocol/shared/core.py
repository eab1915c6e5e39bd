"""What every layer on shares is built from: the party's context, Beaver products that can reuse
masks opened earlier, ReLU that keeps its derivative's mask, and the recording triple store
that plans are traced with.

A layer is a frozen dataclass (hashable, so traced plans can be cached per layer sequence and
input shape) holding only its hyperparameters; each party's parameter shares live beside it in
a dict, so the same layer list serves both parties and the dealer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import mpc, ring
from protocol.beaver import CONV_KINDS, Triple, TripleSpec
from protocol.errors import ShapeError
from protocol.mpc import Open, Proto

Shape = tuple[int, ...]
Params = dict[str, np.ndarray]


class PlanRecorder:
    """A stand-in TripleStore that records every triple asked for and hands out zeros.

    Running a program against it (``run_on_zeros``) is the trace: the plan is what the program
    consumes, in order, so no layer ever writes its plan by hand (CrypTen's TupleProvider.trace).
    """

    def __init__(self) -> None:
        self.plan: list[TripleSpec] = []

    @property
    def taken(self) -> int:
        return len(self.plan)

    def take(self, spec: TripleSpec) -> Triple:
        self.plan.append(spec)
        return Triple(spec, np.zeros(spec.a, np.uint64), np.zeros(spec.b, np.uint64),
                      np.zeros(spec.c, np.uint64),
                      np.zeros(spec.bit_words, np.uint64) if spec.kind == "bitmul" else None)


def run_on_zeros(proto: Proto) -> object:
    """Drive one party's program alone, answering every opening with zeros (for tracing)."""
    try:
        msg = next(proto)
        while True:
            msg = proto.send([np.zeros_like(a) for a in msg.arrays])
    except StopIteration as done:
        return done.value


@dataclass
class Ctx:
    """One party's view of a running program: which party, its triples, the fixed point, and
    whether the weights are public (revealed model: linear layers are then local products)."""

    party: int
    store: Any  # protocol.beaver.TripleStore or PlanRecorder
    frac_bits: int = ring.DEFAULT_FRAC_BITS
    public_weights: bool = False
    #: Inference with weights opened ahead (SharedNet.prepare): each matrix layer takes the
    #: next entry, in layer order.
    prepared: deque | None = None

    def trunc(self, x: np.ndarray) -> np.ndarray:
        return ring.truncate(x, self.party, self.frac_bits)

    def add_public(self, x: np.ndarray, public: np.ndarray) -> np.ndarray:
        """Adding a public value to a shared one: only party 0 adds it."""
        return x + public if self.party == 0 else x

    def add_bias(self, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """A bias is a share (each party adds its own) unless the weights are public."""
        return self.add_public(x, bias) if self.public_weights else x + bias

    def encode(self, value: float) -> np.ndarray:
        return ring.encode(np.array(value), self.frac_bits)

    def take(self, spec: TripleSpec) -> tuple[int, Triple]:
        """The next triple and its plan index; the dealt plan must hold exactly ``spec``,
        mask references included (TripleStore itself checks only kind and shapes)."""
        index = self.store.taken
        plan = self.store.plan
        if index < len(plan) and plan[index] != spec:
            raise ShapeError(f"program asked for triple {index} = {spec}, "
                             f"the dealt plan has {plan[index]}")
        return index, self.store.take(spec)


class _CheckedStore:
    """Hands ``mpc.relu`` its triples through ``Ctx.take`` (the full-spec check)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def take(self, spec: TripleSpec) -> Triple:
        return self.ctx.take(spec)[1]


@dataclass
class Factor:
    """One side of a Beaver product: a share to mask and open, or a value already opened
    under the mask the triple reuses (``opened``, then ``share`` is not needed)."""

    share: np.ndarray | None = None
    opened: np.ndarray | None = None


@dataclass
class Product:
    z: np.ndarray  # this party's share of the product
    e: np.ndarray  # the opened x - a
    f: np.ndarray  # the opened y - b
    index: int  # the triple's index in the plan (for later mask references)


def products(ctx: Ctx, items: list[tuple[TripleSpec, Factor, Factor]]) -> Proto:
    """Arithmetic Beaver products (element-wise or matrix), all opened in one round; factors
    already open under a reused mask are not opened again. Returns a list of ``Product``."""
    taken = [ctx.take(spec) for spec, _, _ in items]
    masked: list[np.ndarray] = []
    for (spec, x, y), (_, t) in zip(items, taken, strict=True):
        if spec.kind not in ("mul", "matmul", *CONV_KINDS):
            raise ShapeError(f"products() computes arithmetic triples, not {spec.kind}")
        if (y.opened is None and spec.b_ref is not None
                and ctx.store.plan[spec.b_ref[0]].kind == "bitmul"):
            # its b is a single bit: y - b would reveal y to within 1 (beaver.check_refs)
            raise ShapeError("a product reusing a bitmul's bit must not open its second factor")
        if x.opened is None:
            masked.append(x.share - t.a)
        if y.opened is None:
            masked.append(y.share - t.b)
    opened = iter((yield Open(masked, [False] * len(masked)))) if masked else iter(())
    out = []
    for (_, x, y), (index, t) in zip(items, taken, strict=True):
        e = next(opened) if x.opened is None else x.opened
        f = next(opened) if y.opened is None else y.opened
        out.append(Product(mpc.product(ctx.party, t, e, f), e, f, index))
    return out


@dataclass
class ReluOut:
    y: np.ndarray  # shares of max(x, 0)
    d: np.ndarray  # shares of [x >= 0] (integers, not fixed point)
    c: np.ndarray  # the opened m ^ r (0/1 per element; m = 1 - d, r the bitmul's bit)
    bit_index: int  # plan index of the bitmul triple: its "b" is r's arithmetic share


def relu(ctx: Ctx, x: np.ndarray) -> Proto:
    """``mpc.relu_with_bit`` (the comparison circuit, 8 rounds), keeping what the backward pass
    needs to multiply by the derivative without opening anything but the gradient's mask:
    the opened bit c and the index of the triple whose random bit r hides m = 1 - d."""
    flat = np.ascontiguousarray(x).reshape(-1)
    y, d, c = yield from mpc.relu_with_bit(ctx.party, _CheckedStore(ctx), flat)
    return ReluOut(y.reshape(x.shape), d, c, ctx.store.taken - 1)


def times_derivative(ctx: Ctx, g: np.ndarray, r: ReluOut) -> Proto:
    """Shares of g * d for a ReLU output's derivative d, in one round opening only g's mask:
    g d = g - g m with m = c + (1 - 2c) r, so g m = c g + (1 - 2c) g r, and g r is a Beaver
    product whose triple's b *is* r (the bitmul's arithmetic bit, reused): r - b = 0 is
    known without opening anything."""
    n = r.d.size
    _, t = ctx.take(TripleSpec("mul", (n,), (n,), b_ref=(r.bit_index, "b", False)))
    flat = np.ascontiguousarray(g).reshape(-1)
    (e,) = yield Open([flat - t.a], [False])
    gm = e * t.b  # g r = e r + a r (no public term: r is never opened); g m built in place
    gm += t.c
    gm *= np.uint64(1) - (r.c << np.uint64(1))
    gm += r.c * flat
    return (flat - gm).reshape(g.shape)


class Layer(ABC):
    """Base of every layer on shares (subclasses are frozen dataclasses).

    ``forward(ctx, params, x)`` is a program returning (y, cache); ``backward(ctx, params,
    cache, dy)`` a program returning (dx, grads); ``update`` is SGD with momentum on shares.
    Gradients carry the owner's grad scale; the learning rate passed in is already divided
    by it.
    """

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """Parameter name -> shape (the layers here need no input shape for it)."""
        return {}

    def prepare(self, ctx: Ctx, params: Params, in_shape: Shape) -> object | None:
        """Input-independent work of an inference pass that opens values (the weights' masks),
        done ahead of the input; None for layers without any."""
        return None

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    @abstractmethod
    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        """This party's share of the output and what the backward pass needs."""

    @abstractmethod
    def backward(self, ctx: Ctx, params: Params, cache: object, dy: np.ndarray) -> Proto:
        """This party's share of dLoss/dinput and of the parameters' gradients."""

    def update(self, ctx: Ctx, params: Params, velocity: Params, grads: Params, lr: float,
               momentum: float) -> None:
        """v = momentum * v + g;  w = w - lr * v (public scalars: local products, truncated)."""
        mu, eta = ctx.encode(momentum), ctx.encode(lr)
        for name, g in grads.items():
            v = velocity.get(name)
            v = g if v is None else ctx.trunc(v * mu) + g
            velocity[name] = v
            params[name] = params[name] - ctx.trunc(v * eta)


def check_rank(layer: Layer, in_shape: Shape, rank: int) -> None:
    if len(in_shape) != rank:
        raise ShapeError(f"{type(layer).__name__} takes a rank-{rank} batch, got {in_shape}")
