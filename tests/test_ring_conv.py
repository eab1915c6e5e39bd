"""Convolution triples: the exact ring convolution, the dealer's conv/convgrad triples, what a
Conv2d on shares opens, and the plan's wire format with convolutions in it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from actors.mpc_roles import PLAN_COLUMNS, decode_plan, encode_plan
from protocol import beaver, mpc, ring, ring_conv, ring_kernels
from protocol.beaver import TripleSpec, TripleStore
from protocol.errors import ShapeError
from protocol.shared import SharedNet, from_torch, infer_plan, train_plan

torch.set_num_threads(1)
FAST = settings(max_examples=15, deadline=None)
MASK = (1 << 64) - 1


def python_conv(x: np.ndarray, w: np.ndarray, g: ring_conv.Geometry) -> np.ndarray:
    """im2col(x) @ w mod 2^64 in Python integers (object arrays): the reference."""
    cols = ring_conv.im2col(x, g).astype(object)
    return (cols.dot(w.astype(object)) % (1 << 64)).astype(np.uint64)


def random_u64(rng, shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64)


@FAST
@given(b=st.integers(1, 3), c=st.integers(1, 4), n=st.integers(1, 5), kh=st.integers(1, 3),
       kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 2), ph=st.integers(0, 2),
       pw=st.integers(0, 2), extra=st.integers(0, 4), seed=st.integers(0, 999))
def test_ring_convolution_is_exact_over_shapes_strides_and_padding(b, c, n, kh, kw, sh, sw,
                                                                   ph, pw, extra, seed):
    rng = np.random.default_rng(seed)
    g = (kh, kw, sh, sw, ph, pw)
    x = random_u64(rng, (b, c, kh + extra, kw + extra + 1))
    w = random_u64(rng, (c * kh * kw, n))
    want = python_conv(x, w, g)
    assert np.array_equal(ring_conv.conv_matmul(x, w, g), want)
    assert np.array_equal(ring_conv.cols_matmul(x, w, g), want)
    dz = random_u64(rng, want.shape)
    cols = ring_conv.im2col(x, g).astype(object)
    want_t = (cols.T.dot(dz.astype(object)) % (1 << 64)).astype(np.uint64)
    assert np.array_equal(ring_conv.cols_t_matmul(x, dz, g), want_t)
    assert np.array_equal(ring_conv.conv_t_matmul(x, dz, g), want_t)


@pytest.mark.parametrize("name", ["limb22-float64", "limb16-float64", "int64"])
def test_ring_convolution_worst_case_all_bits_set_and_channels_past_one_exact_sum(
        name, monkeypatch):
    # 30 channels of 5x5 = 750 terms per output: more than one exact float64 sum of 22-bit
    # limb products (512) holds, so the channels are cut into groups; every bit set makes
    # every limb maximal.
    monkeypatch.setattr(ring_kernels, "_chosen", (name, {}))
    g = (5, 5, 1, 1, 2, 2)
    x = np.full((2, 30, 6, 5), MASK, np.uint64)
    w = np.full((30 * 25, 3), MASK, np.uint64)
    want = python_conv(x, w, g)
    assert np.array_equal(ring_conv.conv_matmul(x, w, g), want)
    rng = np.random.default_rng(1)
    x, w = random_u64(rng, x.shape), random_u64(rng, w.shape)
    assert np.array_equal(ring_conv.conv_matmul(x, w, g), python_conv(x, w, g))


def test_ring_convolution_falls_back_when_the_float_path_disagrees(monkeypatch):
    monkeypatch.setattr(ring_kernels, "_chosen", ("limb22-float64", {}))
    monkeypatch.setattr(ring_conv, "_conv_ok", None)
    monkeypatch.setattr(ring_conv, "_limb_conv", lambda k, x, w, g: np.zeros(
        ring_conv.cols_shape(x.shape, g)[:1] + w.shape[1:], np.uint64))
    rng = np.random.default_rng(2)
    x, w, g = random_u64(rng, (2, 2, 4, 4)), random_u64(rng, (8, 2)), (2, 2, 1, 1, 0, 0)
    assert np.array_equal(ring_conv.conv_matmul(x, w, g), python_conv(x, w, g))
    assert ring_conv._conv_ok is False
    dz = random_u64(rng, (x.shape[0] * 9, 3))
    want = ring_kernels.int64_matmul(np.ascontiguousarray(ring_conv.im2col(x, g).T), dz)
    assert np.array_equal(ring_conv.conv_t_matmul(x, dz, g), want)


def test_ring_convolution_refuses_bad_operands():
    x = np.zeros((2, 3, 5, 5), np.uint64)
    with pytest.raises(ShapeError, match=r"\(27, n\) weight"):
        ring_conv.conv_matmul(x, np.zeros((26, 2), np.uint64), (3, 3, 1, 1, 0, 0))
    with pytest.raises(ShapeError, match="uint64"):
        ring_conv.conv_matmul(x.astype(np.int64), np.zeros((27, 2), np.uint64),
                              (3, 3, 1, 1, 0, 0))
    with pytest.raises(ShapeError, match="does not fit"):
        ring_conv.out_hw(x.shape, (7, 7, 1, 1, 0, 0))
    with pytest.raises(ShapeError, match="geometry"):
        ring_conv.out_hw(x.shape, (3, 3, 0, 1, 0, 0))


def reconstructed(plan):
    dealt = beaver.deal(plan)
    s0 = TripleStore(0, plan, dealt.seed0)
    s1 = TripleStore(1, plan, dealt.seed1, dealt.corrections)
    out = []
    for spec in plan:
        t0, t1 = s0.take(spec), s1.take(spec)
        out.append((t0.a + t1.a, t0.b + t1.b, t0.c + t1.c))
    return out


def test_dealer_conv_triples_hold_the_convolution_and_reuse_the_input_mask():
    g = (3, 2, 2, 1, 1, 0)
    x_shape = (2, 3, 6, 5)
    conv = beaver.conv(x_shape, (3 * 3 * 2, 4), g)
    m = ring_conv.cols_shape(x_shape, g)[0]
    grad = TripleSpec("convgrad", x_shape, (m, 4), a_ref=(0, "a", False), geometry=g)
    (a, b, c), (a2, b2, c2) = reconstructed([conv, grad])
    assert a.shape == x_shape and c.shape == (m, 4)  # a has the input's size, not im2col's
    assert np.array_equal(c, python_conv(a, b, g))
    assert np.array_equal(a2, a)  # the backward's mask is the forward's: E is reused
    cols = ring_conv.im2col(a, g).astype(object)
    assert np.array_equal(c2, (cols.T.dot(b2.astype(object)) % (1 << 64)).astype(np.uint64))


def test_conv_specs_are_checked():
    with pytest.raises(ShapeError, match="inconsistent"):
        TripleSpec("conv", (2, 3, 6, 5), (17, 4), geometry=(3, 2, 1, 1, 0, 0)).check()
    with pytest.raises(ShapeError, match="geometry"):
        TripleSpec("conv", (2, 3, 6, 5), (18, 4)).check()
    with pytest.raises(ShapeError, match="inconsistent"):
        TripleSpec("matmul", (2, 3), (3, 4), geometry=(1, 1, 1, 1, 0, 0)).check()


def cnn_part():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


def test_conv2d_on_shares_opens_the_input_size_not_its_im2col_matrix():
    layers, (p0, p1) = from_torch(cnn_part(), input_shape=(3, 7, 7))
    n0, n1 = SharedNet(0, layers, p0), SharedNet(1, layers, p1)
    shape = (2, 3, 7, 7)
    x0, x1 = ring.share(ring.encode(np.random.default_rng(5).normal(size=shape)))
    plan = train_plan(layers, shape)
    assert plan[0].kind == "conv" and plan[0].a == shape
    dealt = beaver.deal(plan)
    s0, s1 = TripleStore(0, plan, dealt.seed0), TripleStore(1, plan, dealt.seed1,
                                                            dealt.corrections)
    first = []

    def watch(proto):
        msg = next(proto)
        first.append(sum(a.size for a in msg.arrays))
        reply = yield msg
        while True:
            try:
                msg = proto.send(reply)
            except StopIteration as done:
                return done.value
            reply = yield msg

    mpc.run_locally(watch(n0.forward(s0, x0)), watch(n1.forward(s1, x1)))
    w_size = 3 * 3 * 3 * 4
    assert first == [x0.size + w_size] * 2  # im2col(x) would be 2*4*4 rows of 27: 864 > 294
    # Shared-weight inference: the conv's online opening is x - A alone.
    iplan = infer_plan(layers, shape, False)
    assert iplan[0] == beaver.conv(shape, (27, 4), (3, 3, 2, 2, 1, 1))


def test_plan_with_convolutions_round_trips_the_wire_and_bad_rows_are_refused():
    layers, _ = from_torch(cnn_part(), input_shape=(3, 7, 7))
    plan = train_plan(layers, (2, 3, 7, 7))
    assert {s.kind for s in plan} >= {"conv", "convgrad", "matmul", "and", "mul"}
    arr = encode_plan(plan, 9)
    assert arr.shape == (len(plan) + 1, PLAN_COLUMNS)
    assert decode_plan(arr) == (9, plan)
    bad = arr.copy()
    bad[1, 13] = 0  # a convolution with a zero kernel height
    with pytest.raises(ShapeError, match="geometry"):
        decode_plan(bad)
    bad = arr.copy()
    bad[1, 11] = -1  # a 3-D input with a 4th dim after it
    with pytest.raises(ShapeError):
        decode_plan(bad)
    mm = next(i for i, s in enumerate(plan, 1) if s.kind == "matmul")
    bad = arr.copy()
    bad[mm, 13:19] = (1, 1, 1, 1, 0, 0)  # a geometry on a matrix triple
    with pytest.raises(ShapeError, match="bad triple spec"):
        decode_plan(bad)


@pytest.mark.parametrize("name", ["limb22-float64", "int64"])
def test_weight_gradient_convolution_past_one_exact_sum(name, monkeypatch):
    # 40 images of 4x4 outputs: 640 terms per entry, more than one exact float64 sum of 22-bit
    # limb products holds (512), so the images are cut into groups; strided and padded.
    monkeypatch.setattr(ring_kernels, "_chosen", (name, {}))
    g = (3, 2, 2, 1, 1, 0)
    x = np.full((40, 2, 7, 5), MASK, np.uint64)
    m = ring_conv.cols_shape(x.shape, g)[0]
    for dz in (np.full((m, 3), MASK, np.uint64), random_u64(np.random.default_rng(3), (m, 3))):
        cols = ring_conv.im2col(x, g).astype(object)
        want = (cols.T.dot(dz.astype(object)) % (1 << 64)).astype(np.uint64)
        assert np.array_equal(ring_conv.conv_t_matmul(x, dz, g), want)
        x = random_u64(np.random.default_rng(4), x.shape)
