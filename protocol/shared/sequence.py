"""A server part on shares: a sequence of layers, one party's parameter shares, and the triple
plans of its programs, traced from the layers (never written by hand).

Programs (generators in protocol.mpc's ``Open`` protocol, one per party):
- ``forward`` (training): shared logits and a ``ForwardCache`` for ``backward``;
- ``backward``: the backward pass and SGD with momentum on shares; returns the cut-layer
  gradient's shares (scaled like the incoming logits gradient: see protocol.mpc.backward);
- ``infer``: logits only; with public (revealed) weights, linear layers are local products;
- ``reveal``: open the parameters to both servers (``--reveal-model``).

``train_plan`` / ``infer_plan`` trace those programs once per (layers, input shape) against a
recording store; the backward half references the forward half's masks wherever a value
opened in the forward pass is multiplied again (x and W in dW and dx, ReLU and max-pool bits).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from protocol import ring
from protocol.beaver import TripleSpec
from protocol.errors import ShapeError
from protocol.mpc import Open, Proto
from protocol.shared.core import Ctx, Layer, Params, PlanRecorder, Shape, run_on_zeros

Layers = tuple[Layer, ...]


@dataclass
class ForwardCache:
    batch: int
    in_shape: Shape
    layers: list[object]  # each layer's cache, in order


def out_shapes(layers: Layers, in_shape: Shape) -> list[Shape]:
    """The batch shape after each layer (raises ShapeError where a layer cannot take it)."""
    shapes, shape = [], tuple(in_shape)
    for layer in layers:
        shape = layer.out_shape(shape)
        shapes.append(shape)
    return shapes


def param_shapes(layers: Layers, in_shape: Shape) -> list[dict[str, Shape]]:
    shapes, shape = [], tuple(in_shape)
    for layer in layers:
        shapes.append(layer.param_shapes(shape))
        shape = layer.out_shape(shape)
    return shapes


@dataclass
class SharedNet:
    """One party's shares of a server part and its momentum buffers."""

    party: int
    layers: Layers
    params: list[Params]
    frac_bits: int = ring.DEFAULT_FRAC_BITS
    velocity: list[Params] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if len(self.params) != len(self.layers):
            raise ShapeError(f"{len(self.layers)} layers but {len(self.params)} parameter sets")
        for i, (layer, params) in enumerate(zip(self.layers, self.params, strict=True)):
            want = layer.param_shapes(())
            got = {n: tuple(np.shape(v)) for n, v in params.items()}
            if got != want:
                raise ShapeError(f"layer {i} ({type(layer).__name__}) needs parameters {want}, "
                                 f"got {got}")
        if not self.velocity:
            self.velocity = [{} for _ in self.layers]

    def ctx(self, store: object, public_weights: bool = False) -> Ctx:
        return Ctx(self.party, store, self.frac_bits, public_weights)

    def forward(self, store: object, x: np.ndarray) -> Proto:
        ctx, caches, in_shape = self.ctx(store), [], tuple(x.shape)
        for layer, params in zip(self.layers, self.params, strict=True):
            x, cache = yield from layer.forward(ctx, params, x)
            caches.append(cache)
        return x, ForwardCache(in_shape[0], in_shape, caches)

    def backward(self, store: object, cache: ForwardCache, g: np.ndarray, lr: float,
                 momentum: float, grad_scale: float = 1.0) -> Proto:
        """Backward pass, then SGD with momentum at lr / grad_scale; returns dLoss/dinput."""
        ctx = self.ctx(store)
        grads: list[Params] = [{} for _ in self.layers]
        for i in reversed(range(len(self.layers))):
            g, grads[i] = yield from self.layers[i].backward(ctx, self.params[i],
                                                             cache.layers[i], g)
        for layer, params, velocity, grad in zip(self.layers, self.params, self.velocity,
                                                 grads, strict=True):
            layer.update(ctx, params, velocity, grad, lr / grad_scale, momentum)
        return g

    def prepare(self, store: object, in_shape: Shape) -> Proto:
        """The input-independent part of a shared-weight inference pass on a batch of
        ``in_shape``: one round opening every weight's masked value, then each layer's
        precomputation. Run it ahead (when the triples arrive) and hand the result to
        ``infer``, or let ``infer`` run it first; the plan is the same."""
        ctx, pending, shape = self.ctx(store), [], tuple(in_shape)
        for layer, params in zip(self.layers, self.params, strict=True):
            p = layer.prepare(ctx, params, shape)
            if p is not None:
                pending.append(p)
            shape = layer.out_shape(shape)
        opened = yield Open([p.masked for p in pending], [False] * len(pending))
        return deque(p.finish(ctx, f) for p, f in zip(pending, opened, strict=True))

    def infer(self, store: object, x: np.ndarray, public: list[Params] | None = None,
              prepared: deque | None = None) -> Proto:
        """Logits only. ``public``: revealed weights (encoded), so linear layers are local;
        otherwise ``prepared`` (from ``prepare``), run here first if not given."""
        if public is None and prepared is None:
            prepared = yield from self.prepare(store, x.shape)
        ctx = self.ctx(store, public_weights=public is not None)
        ctx.prepared = None if public is not None else prepared
        for layer, params in zip(self.layers, public or self.params, strict=True):
            x, _ = yield from layer.forward(ctx, params, x)
        return x

    def reveal(self) -> Proto:
        """Open every parameter to both servers; returns them, encoded, layer by layer."""
        names = [(i, n) for i, p in enumerate(self.params) for n in sorted(p)]
        opened = yield Open([self.params[i][n] for i, n in names], [False] * len(names))
        public: list[Params] = [{} for _ in self.params]
        for (i, n), value in zip(names, opened, strict=True):
            public[i][n] = value
        return public


def _dummy(layers: Layers, in_shape: Shape, frac_bits: int) -> SharedNet:
    params = [{n: np.zeros(s, np.uint64) for n, s in shapes.items()}
              for shapes in param_shapes(layers, in_shape)]
    return SharedNet(0, layers, params, frac_bits)


@functools.lru_cache(maxsize=64)
def _traced(layers: Layers, in_shape: Shape, mode: str, frac_bits: int) -> tuple[TripleSpec, ...]:
    out_shapes(layers, in_shape)  # a shape error here, before any program runs
    net, rec = _dummy(layers, in_shape, frac_bits), PlanRecorder()
    x = np.zeros(in_shape, np.uint64)
    if mode == "train":
        logits, cache = run_on_zeros(net.forward(rec, x))
        run_on_zeros(net.backward(rec, cache, np.zeros_like(logits), 0.0, 0.0))
    else:
        public = net.params if mode == "public" else None
        run_on_zeros(net.infer(rec, x, public))
    return tuple(rec.plan)


def train_plan(layers: Layers, in_shape: Shape,
               frac_bits: int = ring.DEFAULT_FRAC_BITS) -> list[TripleSpec]:
    """The triples of one training step (forward, then backward and SGD) on a batch of shape
    ``in_shape`` = (B, *cut_shape), in the order the programs consume them."""
    return list(_traced(tuple(layers), tuple(in_shape), "train", frac_bits))


def infer_plan(layers: Layers, in_shape: Shape, public_weights: bool,
               frac_bits: int = ring.DEFAULT_FRAC_BITS) -> list[TripleSpec]:
    mode = "public" if public_weights else "shared"
    return list(_traced(tuple(layers), tuple(in_shape), mode, frac_bits))
