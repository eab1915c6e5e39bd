"""Two-party computation of the server part on additive shares, as symmetric coroutines.

Each protocol is a generator that one server runs with its own shares. Where the protocol needs
values opened, it yields an ``Open`` holding this party's masked shares and is sent back the
opened values (both parties' shares combined). Server 0 drives: it sends its shares to server 1
over the wire, server 1 advances its own generator with them and replies with its shares, so one
``Open`` is one round trip. ``run_locally`` plays both parties in one process for tests.

Layers (weights stored as (in, out) ring matrices, 16 fractional bits by default):
- linear: Beaver matrix triples, then local truncation (protocol.ring.truncate);
- ReLU: arithmetic-to-binary conversion of the two shares, the carry tree of a parallel-prefix
  adder over XOR shares with binary AND triples (7 rounds, bit-sliced: one bit of 64 elements
  to a word) to get the sign bit, then one round that turns that bit into an arithmetic share
  and multiplies the input by it (a "bitmul" triple: 8 rounds in all); the bit (ReLU's
  derivative) is kept for the backward pass;
- backward and SGD with momentum, all on shares; the cut-layer gradient is returned as shares.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from protocol import beaver, ring
from protocol.beaver import Triple, TripleSpec, TripleStore
from protocol.bitplanes import PLANE_OF_BIT, from_plane, to_planes

PARAMS = ("w1", "b1", "w2", "b2")


@dataclass
class Open:
    """This party's shares of values to open; ``binary`` ones combine by XOR, others by +."""

    arrays: list[np.ndarray]
    binary: list[bool]


Proto = Generator[Open, list[np.ndarray], object]


def combine(mine: Open, theirs: list[np.ndarray]) -> list[np.ndarray]:
    return [a ^ b if binary else a + b
            for a, b, binary in zip(mine.arrays, theirs, mine.binary, strict=True)]


# --- primitives --------------------------------------------------------------------------------
def product(party: int, t: Triple, e: np.ndarray, f: np.ndarray) -> np.ndarray:
    """This party's share of x*y (or x@y, x&y) from a triple and the opened e = x-a, f = y-b."""
    spec = t.spec
    # Party 0 adds e*f as well: e*b0 + e*f = e*(b0 + f), one product fewer (the dominant
    # cost of a matrix triple), the same ring element.
    b = spec.combine(t.b, f) if party == 0 else t.b
    if spec.kind == "matmul" and e.shape[1] < e.shape[0]:
        # A short inner dimension (a weight gradient: k is the batch) with a large output:
        # one product [e | a] @ [b; f] of twice the depth costs the same BLAS work but
        # converts and adds the output once, not twice (500x64 @ 64x500: 11.2 against 14.9 ms).
        out = ring.matmul(np.concatenate([e, t.a], 1), np.concatenate([b, f], 0))
        return spec.accumulate(out, t.c)
    out = spec.product(e, b)  # fresh: the sum builds up in it, not in new temporaries
    spec.accumulate(out, t.c)
    return spec.accumulate(out, spec.product(t.a, f))


def multiply(party: int, store: TripleStore,
             ops: list[tuple[TripleSpec, np.ndarray, np.ndarray]]) -> Proto:
    """Products of shared pairs, all in one round: x*y, x@y or x&y per the triple's kind."""
    triples = [store.take(spec) for spec, _, _ in ops]
    masked, binary = [], []
    for (spec, x, y), t in zip(ops, triples, strict=True):
        masked += [spec.split(x, t.a), spec.split(y, t.b)]
        binary += [spec.kind == "and"] * 2
    opened = yield Open(masked, binary)
    return [product(party, t, opened[2 * i], opened[2 * i + 1]) for i, t in enumerate(triples)]


def relu(party: int, store: TripleStore, x: np.ndarray) -> Proto:
    """ReLU on shares; returns (relu(x), d) with d = [x >= 0] as an integer-valued share."""
    y, d, _ = yield from relu_with_bit(party, store, x)
    return y, d


def relu_with_bit(party: int, store: TripleStore, x: np.ndarray) -> Proto:
    """ReLU on shares: (relu(x), d, c), d = [x >= 0] as an integer-valued share and c the
    opened m ^ r of the last round (m = 1 - d, r the bitmul triple's bit), which a product
    with d needs again (``protocol.shared.core.times_derivative``).

    The sign bit of x = x0 + x1 is bit 63 of a 64-bit addition whose inputs each party holds in
    the clear (arithmetic-to-binary: as XOR shares, party 0 holds (x0, 0), party 1 (0, x1)).
    Only the carry into bit 63 is needed, so a tree of generate/propagate combinations over the
    63 low bits suffices (the prefix adder's carry tree, without the prefix outputs): one AND
    round for the bits' generates, then six levels, each halving the number of groups.

    The adder runs bit-sliced: each party transposes its own input once, locally, into 64
    bit-planes (``to_planes``: plane = one bit of every element, 64 elements to a word), in an
    order where every level's low and high groups are the two halves of the planes. A level
    is then two slices and one AND round, and no level moves bits; the AND triples hold as
    many words as packing every element's bits would (``relu_plan``; n is padded up to a
    multiple of 64).

    The last round turns the sign m = [x < 0] (XOR-shared, one plane) into an arithmetic share
    and multiplies x by 1 - m at once, with a bitmul triple (a, r, a*r; r a random bit held
    both ways): it opens c = m ^ r (one plane: a bit per element) and e = x - a, and then
    m = c + (1 - 2c) r and x*m = c x + (1 - 2c)(e r + a r) are local. A Beaver product of the
    opened bit and x would take two rounds (the bit's conversion, then the product) and open
    four words per element instead of one and a bit.
    """
    shape, n = x.shape, x.size
    flat = x.reshape(-1)
    mine = to_planes(flat)
    sign = mine[PLANE_OF_BIT[63]].copy()  # bit 63 of this party's own input, one plane
    mine[PLANE_OF_BIT[63]] = 0  # the adder adds the 63 low bits
    a, b = (mine.reshape(-1), ZERO) if party == 0 else (ZERO, mine.reshape(-1))
    (g,) = yield from multiply(party, store, [(beaver.and_(mine.size), a, b)])
    g = g.reshape(mine.shape)
    # Bit 63 becomes the identity of the carry operator (g = 0, p = 1), so the group generate
    # of all 64 positions is the carry into bit 63. p = a ^ b is this party's own input.
    p = mine
    if party == 0:
        p[PLANE_OF_BIT[63]] = ~np.uint64(0)
    while len(g) > 1:
        half = len(g) // 2
        g_lo, g_hi, p_lo, p_hi = (v.reshape(-1) for v in (g[:half], g[half:], p[:half],
                                                          p[half:]))
        spec = beaver.and_(g_lo.size)
        if half > 1:
            t, p = yield from multiply(party, store, [(spec, p_hi, g_lo), (spec, p_hi, p_lo)])
            p = p.reshape(half, -1)
        else:  # the last level needs only the generate
            (t,) = yield from multiply(party, store, [(spec, p_hi, g_lo)])
        t ^= g_hi
        g = t.reshape(half, -1)
    msb = sign ^ g[0]  # this party's XOR share of m = [x < 0], one plane
    t = store.take(beaver.bitmul(n))
    c_plane, e = yield Open([msb ^ t.r, flat - t.a], [True, False])
    c = from_plane(c_plane, n)
    flip = np.uint64(1) - (c << np.uint64(1))  # 1 - 2c: 1 or -1 in the ring
    xm = e * t.b  # x*m = c x + (1 - 2c)(e r + a r), built in place
    xm += t.c
    xm *= flip
    xm += c * flat
    y = flat - xm  # x * d = x - x*m
    d = flip * t.b  # d = 1 - m = (1 - c) - (1 - 2c) r
    np.negative(d, out=d)
    if party == 0:
        d += np.uint64(1) - c
    return y.reshape(shape), d.reshape(shape), c


#: The peer's input to a product, which this party holds as zero (broadcast when masked).
ZERO = np.zeros(1, np.uint64)


def relu_plan(n: int) -> list[TripleSpec]:
    """The triples ``relu`` takes for n elements: the AND of 64 planes of ceil(n/64) words,
    two ANDs of half as many planes per level but the last, then one bitmul."""
    words = -(-n // 64)
    plan, planes = [beaver.and_(64 * words)], 64
    while planes > 1:
        planes //= 2
        plan += [beaver.and_(planes * words)] * (2 if planes > 1 else 1)
    return plan + [beaver.bitmul(n)]


# --- the server part: Linear(500,500) + ReLU + Linear(500,10) ---------------------------------
@dataclass
class SharedModel:
    """One party's shares of the server part and its momentum buffers."""

    party: int
    params: dict[str, np.ndarray]
    frac_bits: int = ring.DEFAULT_FRAC_BITS
    momentum: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dims(self) -> tuple[int, int, int]:
        return (self.params["w1"].shape[0], self.params["w1"].shape[1], self.params["w2"].shape[1])

    def trunc(self, x: np.ndarray) -> np.ndarray:
        return ring.truncate(x, self.party, self.frac_bits)

    def add_public(self, x: np.ndarray, public: np.ndarray) -> np.ndarray:
        """Adding a public value to a shared one: only party 0 adds it."""
        return x + public if self.party == 0 else x


@dataclass
class ForwardCache:
    h: np.ndarray
    a1: np.ndarray
    d1: np.ndarray
    opened: dict[str, np.ndarray]  # h-A1, W1-B1, a1-A2, W2-B2: reused by the backward pass
    t1: Triple  # the forward triples whose masks the backward triples reuse
    t2: Triple


def forward_plan(batch: int, d_in: int, d_hidden: int, d_out: int) -> list[TripleSpec]:
    return ([beaver.matmul(batch, d_in, d_hidden)] + relu_plan(batch * d_hidden)
            + [beaver.matmul(batch, d_hidden, d_out)])


def forward(model: SharedModel, store: TripleStore, h: np.ndarray) -> Proto:
    """Shared logits of a batch, and what the backward pass needs."""
    p, party = model.params, model.party
    b, d_in = h.shape
    _, d_hidden, d_out = model.dims
    t1 = store.take(beaver.matmul(b, d_in, d_hidden))
    e1, f1 = yield Open([h - t1.a, p["w1"] - t1.b], [False, False])
    z1 = model.trunc(product(party, t1, e1, f1)) + p["b1"]
    a1, d1 = yield from relu(party, store, z1)
    t2 = store.take(beaver.matmul(b, d_hidden, d_out))
    e2, f2 = yield Open([a1 - t2.a, p["w2"] - t2.b], [False, False])
    z2 = model.trunc(product(party, t2, e2, f2)) + p["b2"]
    opened = {"e1": e1, "f1": f1, "e2": e2, "f2": f2}
    return z2, ForwardCache(h, a1, d1, opened, t1, t2)


def backward_plan(batch: int, d_in: int, d_hidden: int, d_out: int,
                  forward_len: int) -> list[TripleSpec]:
    """The backward triples; masks of values the forward pass opened are reused, so h, a1, W1
    and W2 are not opened again (``forward_len``: index of the first backward triple)."""
    t1, t2 = 0, forward_len - 1
    t3, t6 = forward_len, forward_len + 3
    return [
        TripleSpec("matmul", (d_hidden, batch), (batch, d_out), a_ref=(t2, "a", True)),
        TripleSpec("matmul", (batch, d_out), (d_out, d_hidden), a_ref=(t3, "b", False),
                   b_ref=(t2, "b", True)),
        beaver.mul((batch, d_hidden)),
        TripleSpec("matmul", (d_in, batch), (batch, d_hidden), a_ref=(t1, "a", True)),
        TripleSpec("matmul", (batch, d_hidden), (d_hidden, d_in), a_ref=(t6, "b", False),
                   b_ref=(t1, "b", True)),
    ]


def train_plan(batch: int, d_in: int, d_hidden: int, d_out: int) -> list[TripleSpec]:
    fwd = forward_plan(batch, d_in, d_hidden, d_out)
    return fwd + backward_plan(batch, d_in, d_hidden, d_out, len(fwd))


def backward(model: SharedModel, store: TripleStore, cache: ForwardCache, g2: np.ndarray,
             lr: float, momentum: float, grad_scale: float = 1.0) -> Proto:
    """Backward pass and SGD-with-momentum step on shares; returns shares of dLoss/dh.

    ``g2`` is the shared gradient of the loss w.r.t. the logits (the owner computes it from the
    logits it alone reconstructs), multiplied by ``grad_scale``: the owner sends the gradient
    of the *summed* loss (scale = batch size) so that its entries are ~1, not ~1/64, which
    fixed point with 16 fractional bits represents far more precisely; the step uses
    lr / grad_scale, so the update equals torch.optim.SGD(momentum=...) on the mean loss. The
    returned cut-layer gradient carries the same scale. Three rounds: g2, then the ReLU mask,
    then dz1 are the only values opened.
    """
    party, o = model.party, cache.opened
    b, d_in = cache.h.shape
    _, d_hidden, d_out = model.dims
    # dW2 = a1^T g2 and da1 = g2 W2^T: a1 and W2 are already open under these masks.
    t3 = store.take(beaver.matmul(d_hidden, b, d_out))
    t4 = store.take(beaver.matmul(b, d_out, d_hidden))
    (f3,) = yield Open([g2 - t3.b], [False])
    dw2 = product(party, t3, np.ascontiguousarray(o["e2"].T), f3)
    da1 = model.trunc(product(party, t4, f3, np.ascontiguousarray(o["f2"].T)))
    (dz1,) = yield from multiply(party, store, [(beaver.mul((b, d_hidden)), da1, cache.d1)])
    # dW1 = h^T dz1 and dh = dz1 W1^T: h and W1 are already open; dz1 is opened once.
    t6 = store.take(beaver.matmul(d_in, b, d_hidden))
    t7 = store.take(beaver.matmul(b, d_hidden, d_in))
    (f6,) = yield Open([dz1 - t6.b], [False])
    dw1 = product(party, t6, np.ascontiguousarray(o["e1"].T), f6)
    dh = product(party, t7, f6, np.ascontiguousarray(o["f1"].T))
    grads = {"w1": model.trunc(dw1), "b1": dz1.sum(0, dtype=np.uint64),
             "w2": model.trunc(dw2), "b2": g2.sum(0, dtype=np.uint64)}
    sgd_step(model, grads, lr / grad_scale, momentum)
    return model.trunc(dh)


def sgd_step(model: SharedModel, grads: dict[str, np.ndarray], lr: float,
             momentum: float) -> None:
    """v = momentum * v + g;  w = w - lr * v (public scalars: local products, truncated)."""
    mu = ring.encode(np.array(momentum), model.frac_bits)
    eta = ring.encode(np.array(lr), model.frac_bits)
    for name in PARAMS:
        g = grads[name]
        v = model.momentum.get(name)
        v = g if v is None else model.trunc(v * mu) + g
        model.momentum[name] = v
        model.params[name] = model.params[name] - model.trunc(v * eta)


def infer_plan(batch: int, d_in: int, d_hidden: int, d_out: int,
               public_weights: bool) -> list[TripleSpec]:
    if not public_weights:
        return forward_plan(batch, d_in, d_hidden, d_out)
    return relu_plan(batch * d_hidden)


def infer_public(party: int, weights: dict[str, np.ndarray], store: TripleStore,
                 h: np.ndarray, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> Proto:
    """Inference with revealed (public, encoded) weights: the linear layers are local products,
    only ReLU needs rounds."""
    z1 = ring.truncate(ring.matmul(h, weights["w1"]), party, frac_bits)
    z1 = z1 + weights["b1"] if party == 0 else z1
    a1, _ = yield from relu(party, store, z1)
    z2 = ring.truncate(ring.matmul(a1, weights["w2"]), party, frac_bits)
    return z2 + weights["b2"] if party == 0 else z2


def reveal_weights(model: SharedModel) -> Proto:
    """Open the trained server part to both servers (deployment with --reveal-model)."""
    opened = yield Open([model.params[n] for n in PARAMS], [False] * len(PARAMS))
    return dict(zip(PARAMS, opened, strict=True))


# --- both parties in one process ---------------------------------------------------------------
@dataclass
class RoundStats:
    rounds: int = 0
    opened_elements: int = 0
    #: Compute time: each party's, and the sum over rounds of the slower party's (the wall
    #: time two servers computing side by side would need, network aside).
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0])
    parallel_seconds: float = 0.0


def run_locally(proto0: Proto, proto1: Proto, stats: RoundStats | None = None
                ) -> tuple[object, object]:
    """Run two parties' generators in lockstep (what the two servers do over the wire)."""
    stats = stats or RoundStats()
    protos, msgs, results = (proto0, proto1), [None, None], [None, None]
    inputs: list[list[np.ndarray] | None] = [None, None]
    while True:
        spent = [0.0, 0.0]
        for i in (0, 1):
            t = time.perf_counter()
            try:
                msgs[i] = next(protos[i]) if inputs[i] is None else protos[i].send(inputs[i])
            except StopIteration as done:
                msgs[i], results[i] = None, done.value
            spent[i] = time.perf_counter() - t
            stats.seconds[i] += spent[i]
        stats.parallel_seconds += max(spent)
        if msgs[0] is None or msgs[1] is None:
            if msgs[0] is not msgs[1]:
                raise RuntimeError("one party wants another round, the other finished")
            return results[0], results[1]
        stats.rounds += 1
        stats.opened_elements += sum(a.size for a in msgs[0].arrays)
        inputs = [combine(msgs[0], msgs[1].arrays), combine(msgs[1], msgs[0].arrays)]

