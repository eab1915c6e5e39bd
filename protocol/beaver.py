"""Correlated randomness from the dealer: Beaver triples, arithmetic and binary.

A triple is (a, b, c) with c = a*b (element-wise), a@b (matrix), a&b (bitwise, XOR-shared) or
a convolution, secret-shared between the two servers. A "bitmul" triple multiplies by a random
bit held both ways: r is XOR-shared (``Triple.r``, packed in one bit-plane,
``protocol.bitplanes``) and arithmetically shared (b), with c = a*r; it turns a XOR-shared bit
into an arithmetic one and multiplies a shared value by it in the same round (``mpc.relu``).

Convolution triples (CrypTen's) have a shaped like the convolution's (B, C, H, W) input:
"conv" has c = im2col(a) @ b (b shaped like the (C kh kw, n) weight matrix), so a Beaver
product of a convolution opens x - a, the input's size, instead of its im2col matrix (kh kw
times larger); "convgrad" has c = im2col(a)^T @ b (b shaped like the output gradient), the
weight gradient's product, whose a is the forward conv triple's a reused. A spec's
``geometry`` (kh, kw, sh, sw, ph, pw) fixes the convolution.

The dealer compresses what it sends as CrypTen's trusted third party does: each party's shares
of a and b — and party 0's share of c — are expanded from a 32-byte seed, so only party 1's
correction c1 = c - c0 (or c ^ c0) crosses the wire (and a bitmul's b1 = r - b0).

A *plan* is the ordered list of triples a protocol run will consume; dealer and parties expand
the same plan in the same order, and a party that consumes a triple of the wrong kind or shape
raises instead of computing garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol import ring, ring_conv
from protocol.bitplanes import from_plane
from protocol.errors import ShapeError
from protocol.ring import SecureRandom

Shape = tuple[int, ...]


#: A mask reused from an earlier triple of the same plan: (plan index, "a" or "b", transposed).
#: Reusing the mask of a value already opened (W1 - B in the forward pass, say) means that
#: value's opening is reused too, so the backward pass does not open W1 again.
MaskRef = tuple[int, str, bool]


KINDS = ("mul", "matmul", "and", "conv", "convgrad", "bitmul")
CONV_KINDS = ("conv", "convgrad")


@dataclass(frozen=True)
class TripleSpec:
    kind: str  # "mul", "matmul", "conv", "convgrad", "bitmul" (arithmetic), "and" (binary)
    a: Shape
    b: Shape
    a_ref: MaskRef | None = None
    b_ref: MaskRef | None = None
    geometry: ring_conv.Geometry | tuple[()] = ()  # conv kinds only: (kh, kw, sh, sw, ph, pw)

    def same_shape(self, other: TripleSpec) -> bool:
        return ((self.kind, self.a, self.b, self.geometry)
                == (other.kind, other.a, other.b, other.geometry))

    @property
    def c(self) -> Shape:
        if self.kind == "matmul":
            return (self.a[0], self.b[1])
        if self.kind == "conv":
            return (ring_conv.cols_shape(self.a, self.geometry)[0], self.b[1])
        if self.kind == "convgrad":
            return (ring_conv.cols_shape(self.a, self.geometry)[1], self.b[1])
        return self.a

    @property
    def bit_words(self) -> int:
        """Words of the packed random bit r ("bitmul": one plane of ceil(n / 64) words)."""
        return -(-int(np.prod(self.a)) // 64) if self.kind == "bitmul" else 0

    def check(self) -> TripleSpec:
        """Raise ShapeError unless a and b fit the kind (for specs read from the wire)."""
        a, b = self.a, self.b
        if self.kind not in KINDS or min(a + b, default=0) < 1:
            raise ShapeError(f"bad triple spec {self}")
        if self.kind in CONV_KINDS:
            rows, k = ring_conv.cols_shape(a, self.geometry)  # checks rank and geometry
            want = k if self.kind == "conv" else rows
            if len(b) != 2 or b[0] != want:
                raise ShapeError(f"inconsistent triple spec {self}")
        elif self.geometry or (self.kind == "matmul" and (len(a) != 2 or len(b) != 2
                                                         or a[1] != b[0])) or (
                self.kind != "matmul" and a != b) or (
                self.kind == "bitmul" and (len(a) != 1 or self.b_ref is not None)):
            # a bitmul's b is its fresh random bit: never a reused mask
            raise ShapeError(f"inconsistent triple spec {self}")
        return self

    def product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The triple's bilinear map: c = product(a, b)."""
        if self.kind == "matmul":
            return ring.matmul(a, b)
        if self.kind == "conv":
            return ring_conv.conv_matmul(a, b, self.geometry)
        if self.kind == "convgrad":
            return ring_conv.conv_t_matmul(a, b, self.geometry)
        return a & b if self.kind == "and" else a * b

    def combine(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """How shares add up: XOR for binary triples, + mod 2^64 otherwise."""
        return x ^ y if self.kind == "and" else x + y

    def split(self, c: np.ndarray, c0: np.ndarray) -> np.ndarray:
        return c ^ c0 if self.kind == "and" else c - c0

    def accumulate(self, out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``combine`` into ``out`` (a fresh array the caller owns): no temporary."""
        return (np.bitwise_xor if self.kind == "and" else np.add)(out, x, out=out)


@dataclass(frozen=True)
class Triple:
    spec: TripleSpec
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    r: np.ndarray | None = None  # "bitmul": this party's XOR share of the bit, one plane


def mul(shape: Shape) -> TripleSpec:
    return TripleSpec("mul", shape, shape)


def matmul(m: int, k: int, n: int) -> TripleSpec:
    return TripleSpec("matmul", (m, k), (k, n))


def and_(n: int) -> TripleSpec:
    return TripleSpec("and", (n,), (n,))


def bitmul(n: int) -> TripleSpec:
    return TripleSpec("bitmul", (n,), (n,))


def conv(in_shape: Shape, weight_shape: Shape, geometry: ring_conv.Geometry) -> TripleSpec:
    """A convolution triple: a shaped like the (B, C, H, W) input, b like the weight matrix."""
    return TripleSpec("conv", tuple(in_shape), tuple(weight_shape),
                      geometry=tuple(geometry)).check()


@dataclass(frozen=True)
class DealerOutput:
    """What the dealer sends: a seed for party 0; a seed and the corrections for party 1."""

    seed0: bytes
    seed1: bytes
    corrections: np.ndarray  # party 1's c (and bitmul b) shares, flattened, in plan order


def _mask(spec: TripleSpec, which: str, rng: SecureRandom,
          earlier: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A triple's a or b share: fresh from the PRG, or an earlier triple's (transposed)."""
    ref = spec.a_ref if which == "a" else spec.b_ref
    shape = spec.a if which == "a" else spec.b
    if ref is None:
        return rng.uint64(shape)
    index, field_, transpose = ref
    if not 0 <= index < len(earlier) or field_ not in ("a", "b"):
        raise ShapeError(f"bad mask reference {ref}")
    m = earlier[index][0 if field_ == "a" else 1]
    m = np.ascontiguousarray(m.T) if transpose else m
    if m.shape != shape:
        raise ShapeError(f"mask reference {ref} has shape {m.shape}, triple needs {shape}")
    return m


def deal(plan: list[TripleSpec]) -> DealerOutput:
    """The dealer's work for one plan: expand both parties' seeds, multiply, correct."""
    seed0, seed1 = (SecureRandom().uint64((4,)).tobytes() for _ in range(2))
    rng0, rng1 = SecureRandom(seed0), SecureRandom(seed1)
    corrections = []
    masks0: list[tuple[np.ndarray, np.ndarray]] = []
    masks1: list[tuple[np.ndarray, np.ndarray]] = []
    for spec in plan:
        if spec.kind == "bitmul":
            corrections += _deal_bitmul(spec, rng0, rng1, masks0, masks1)
            continue
        a0, b0 = _mask(spec, "a", rng0, masks0), _mask(spec, "b", rng0, masks0)
        c0 = rng0.uint64(spec.c)
        a1, b1 = _mask(spec, "a", rng1, masks1), _mask(spec, "b", rng1, masks1)
        masks0.append((a0, b0))
        masks1.append((a1, b1))
        c = spec.product(spec.combine(a0, a1), spec.combine(b0, b1))
        corrections.append(spec.split(c, c0).reshape(-1))
    flat = np.concatenate(corrections) if corrections else np.zeros(0, np.uint64)
    return DealerOutput(seed0, seed1, flat)


def _deal_bitmul(spec: TripleSpec, rng0: SecureRandom, rng1: SecureRandom,
                 masks0: list[tuple[np.ndarray, np.ndarray]],
                 masks1: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """A random bit r = r0 ^ r1 (each party's share from its seed, one plane), its arithmetic
    shares b0 + b1 = r and c = a*r; party 1's corrections are b1, then c1. The draws are in
    the order ``TripleStore._expand`` makes them: a, b, r, c for party 0; a, r for party 1."""
    n = spec.a[0]
    a0, b0 = _mask(spec, "a", rng0, masks0), rng0.uint64((n,))
    r0, c0 = rng0.uint64((spec.bit_words,)), rng0.uint64((n,))
    a1, r1 = _mask(spec, "a", rng1, masks1), rng1.uint64((spec.bit_words,))
    r = from_plane(r0 ^ r1, n)
    b1 = r - b0
    masks0.append((a0, b0))
    masks1.append((a1, b1))
    return [b1, (a0 + a1) * r - c0]


def corrections_len(plan: list[TripleSpec]) -> int:
    """Party 1's correction words: every c, and a bitmul's b (its arithmetic bit) too."""
    return sum(int(np.prod(s.c)) + (int(np.prod(s.b)) if s.kind == "bitmul" else 0)
               for s in plan)


def check_refs(spec: TripleSpec, earlier: list[TripleSpec]) -> TripleSpec:
    """``spec.check()``, and its mask references against the plan before it: a bitmul's b
    is a single bit, not a uniform mask, so only an element-wise product's b may reuse it
    (whose "y - b" is then known to be 0 and never opened: ``shared.core.times_derivative``);
    a product that opened a value masked by it would reveal that value to within 1."""
    spec.check()
    for which, ref in (("a", spec.a_ref), ("b", spec.b_ref)):
        if ref is None or not 0 <= ref[0] < len(earlier):
            continue  # a reference out of range is refused where it is expanded
        if earlier[ref[0]].kind == "bitmul" and ref[1] == "b" and (
                spec.kind != "mul" or which != "b" or ref[2]):
            raise ShapeError(f"triple {spec} may not reuse a bitmul's bit as its {which}")
    return spec


class TripleStore:
    """One party's view of a dealt plan, consumed strictly in plan order."""

    def __init__(self, party: int, plan: list[TripleSpec], seed: bytes,
                 corrections: np.ndarray | None = None) -> None:
        if party == 1 and (corrections is None or len(corrections) != corrections_len(plan)):
            raise ShapeError("party 1's triples need one correction per element of every c "
                             "(and of every bitmul's b)")
        self.party = party
        self.plan = list(plan)
        self.rng = SecureRandom(seed)
        self.corrections = corrections
        self.taken = 0  # triples handed out
        self.offset = 0  # into party 1's corrections
        self.masks: list[tuple[np.ndarray, np.ndarray]] = []  # every a, b (for mask reuse)
        self._expanded: list[Triple | None] = []  # expanded ahead of use (materialize)

    def materialize(self) -> TripleStore:
        """Expand every triple now (the offline phase), so ``take`` costs nothing online."""
        while len(self._expanded) < len(self.plan):
            self._expanded.append(self._expand(len(self._expanded)))
        return self

    def take(self, spec: TripleSpec) -> Triple:
        """The next triple of the plan, which must have ``spec``'s kind and shapes."""
        i = self.taken
        if i >= len(self.plan) or not self.plan[i].same_shape(spec):
            want = self.plan[i] if i < len(self.plan) else "nothing"
            raise ShapeError(f"protocol asked for triple {spec}, the dealt plan has {want}")
        if i == len(self._expanded):
            self._expanded.append(self._expand(i))
        triple, self._expanded[i] = self._expanded[i], None  # hand it out, keep no copy
        self.taken += 1
        return triple

    def _expand(self, i: int) -> Triple:
        spec = self.plan[i]
        a = _mask(spec, "a", self.rng, self.masks)
        if spec.kind == "bitmul":  # b is the bit's arithmetic share: party 1's is a correction
            b = self.rng.uint64(spec.b) if self.party == 0 else self._correction(spec.b)
        else:
            b = _mask(spec, "b", self.rng, self.masks)
        self.masks.append((a, b))
        r = self.rng.uint64((spec.bit_words,)) if spec.kind == "bitmul" else None
        c = self.rng.uint64(spec.c) if self.party == 0 else self._correction(spec.c)
        return Triple(spec, a, b, c, r)

    def _correction(self, shape: Shape) -> np.ndarray:
        n = int(np.prod(shape))
        out = self.corrections[self.offset:self.offset + n].reshape(shape)
        self.offset += n
        return out

    @property
    def exhausted(self) -> bool:
        return self.taken == len(self.plan)
