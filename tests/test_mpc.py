"""Two-party computation on shares: triples, matmul, ReLU, training steps, plans."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from actors.mpc_roles import decode_plan, encode_plan, pack_round, unpack_round
from protocol import beaver, bitplanes, mpc, ring
from protocol.beaver import TripleSpec, TripleStore
from protocol.errors import ShapeError
from protocol.shared.core import Ctx, Factor, products, times_derivative
from protocol.shared.core import relu as core_relu

ULP = 2.0**-ring.DEFAULT_FRAC_BITS


def stores(plan):
    dealt = beaver.deal(plan)
    return TripleStore(0, plan, dealt.seed0), TripleStore(1, plan, dealt.seed1, dealt.corrections)


def shared(x):
    return ring.share(ring.encode(x))


def test_dealt_triples_are_correct_including_reused_masks():
    plan = [beaver.mul((3, 4)), beaver.matmul(3, 5, 2), beaver.and_(7),
            TripleSpec("matmul", (5, 3), (3, 4), a_ref=(1, "a", True)),
            TripleSpec("matmul", (2, 5), (5, 3), a_ref=(1, "b", True), b_ref=(1, "a", True))]
    s0, s1 = stores(plan)
    triples = [(s0.take(spec), s1.take(spec)) for spec in plan]
    for (t0, t1), spec in zip(triples, plan, strict=True):
        a, b, c = (spec.combine(getattr(t0, f), getattr(t1, f)) for f in "abc")
        assert np.array_equal(c, spec.product(a, b)), spec
    a1 = triples[1][0].a + triples[1][1].a
    assert np.array_equal(triples[3][0].a + triples[3][1].a, a1.T)  # the reused mask
    assert s0.exhausted and s1.exhausted


def test_dealt_bit_triples_hold_one_random_bit_both_ways():
    """A bitmul triple: r = r0 ^ r1 (packed in one bit-plane), b0 + b1 = r as integers,
    c = a * r; a later product reusing its b multiplies by the same r."""
    n = 130
    plan = [beaver.matmul(2, 3, 4), beaver.bitmul(n),
            TripleSpec("mul", (n,), (n,), b_ref=(1, "b", False)), beaver.mul((5,))]
    s0, s1 = stores(plan)
    triples = [(s0.take(spec), s1.take(spec)) for spec in plan]
    (t0, t1) = triples[1]
    assert t0.r.shape == t1.r.shape == (3,)  # ceil(130 / 64) words
    r = bitplanes.from_plane(t0.r ^ t1.r, n)
    assert set(np.unique(r)) == {0, 1}  # a bit per element, both values drawn
    assert np.array_equal(t0.b + t1.b, r)
    assert np.array_equal(t0.c + t1.c, (t0.a + t1.a) * r)
    (u0, u1) = triples[2]
    assert np.array_equal(u0.b + u1.b, r)  # the reused bit
    assert np.array_equal(u0.c + u1.c, (u0.a + u1.a) * r)
    for (x0, x1), spec in zip(triples[::3], plan[::3], strict=True):  # neighbours unharmed
        assert np.array_equal(x0.c + x1.c, spec.product(x0.a + x1.a, x0.b + x1.b))
    assert s0.exhausted and s1.exhausted
    with pytest.raises(ShapeError, match="inconsistent"):
        TripleSpec("bitmul", (n,), (n,), b_ref=(0, "b", False)).check()


def test_relu_times_its_derivative_opens_only_the_gradients_mask():
    """The backward product g * d reuses the bitmul's bit: exact, one round, n words."""
    rng = np.random.default_rng(3)
    n = 150
    x = rng.integers(0, 2**64, n, dtype=np.uint64)
    g = rng.integers(0, 2**64, n, dtype=np.uint64)
    plan = mpc.relu_plan(n) + [TripleSpec("mul", (n,), (n,), b_ref=(len(mpc.relu_plan(n)) - 1,
                                                                     "b", False))]
    s0, s1 = stores(plan)

    def party(p, x_share, g_share, store):
        ctx = Ctx(p, store)
        out = yield from core_relu(ctx, x_share)
        return (yield from times_derivative(ctx, g_share, out))

    x0, g0 = rng.integers(0, 2**64, n, dtype=np.uint64), rng.integers(0, 2**64, n,
                                                                      dtype=np.uint64)
    stats = mpc.RoundStats()
    z0, z1 = mpc.run_locally(party(0, x0, g0, s0), party(1, x - x0, g - g0, s1), stats)
    nonneg = x.view(np.int64) >= 0
    assert np.array_equal(z0 + z1, np.where(nonneg, g, np.uint64(0)))
    words = -(-n // 64)
    # ReLU: 378 words of AND openings per 64 elements, then one bit and one word per element
    # (a Beaver product of the bit would open four words); the backward opens n more.
    assert stats.rounds == 8 + 1 and stats.opened_elements == 378 * words + words + n + n
    assert s0.exhausted and s1.exhausted


def test_triple_store_refuses_a_triple_out_of_plan():
    s0, _ = stores([beaver.mul((2,))])
    with pytest.raises(ShapeError, match="dealt plan"):
        s0.take(beaver.mul((3,)))


def test_beaver_matmul_matches_plaintext():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(6, 8)), rng.normal(size=(8, 5))
    (x0, x1), (w0, w1) = shared(x), shared(w)
    spec = beaver.matmul(6, 8, 5)
    s0, s1 = stores([spec])
    (z0,), (z1,) = mpc.run_locally(mpc.multiply(0, s0, [(spec, x0, w0)]),
                                   mpc.multiply(1, s1, [(spec, x1, w1)]))
    z = ring.decode(ring.reveal(ring.truncate(z0, 0), ring.truncate(z1, 1)))
    assert np.abs(z - x @ w).max() < 8 * 2 * ULP


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3, 2.0**28])
def test_relu_and_its_derivative_on_shares(scale):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 40)) * scale
    x[0, :6] = [0.0, ULP, -ULP, 2 * ULP, -(2.0**29), 2.0**29]  # zero and extremes
    x0, x1 = shared(x)
    plan = mpc.relu_plan(x.size)
    s0, s1 = stores(plan)
    stats = mpc.RoundStats()
    (y0, d0), (y1, d1) = mpc.run_locally(mpc.relu(0, s0, x0), mpc.relu(1, s1, x1), stats)
    xq = ring.decode(ring.encode(x))  # what the ring holds
    assert np.array_equal(ring.decode(ring.reveal(y0, y1)), np.maximum(xq, 0))  # exact
    assert np.array_equal(ring.reveal(d0, d1).view(np.int64), (xq >= 0).astype(np.int64))
    assert stats.rounds == 8 and s0.exhausted


EDGES = np.array([0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**62, 2**32, 2**31, 2**32 - 1],
                 np.uint64)


@pytest.mark.parametrize("n", [1, 10, 64, 200])
def test_bit_planes_hold_each_bit_of_each_element(n):
    rng = np.random.default_rng(n)
    v = rng.integers(0, 2**64, n, dtype=np.uint64)
    v[:min(n, len(EDGES))] = EDGES[:n]
    planes = bitplanes.to_planes(v)
    assert planes.shape == (64, -(-n // 64))
    for i in range(64):
        bits = bitplanes.from_plane(planes[bitplanes.PLANE_OF_BIT[i]], n)
        assert np.array_equal(bits, (v >> np.uint64(i)) & np.uint64(1)), i


@pytest.mark.parametrize("n", [1, 63, 130, 1000])
def test_relu_on_shares_equals_numpy_sign_for_any_ring_element(n):
    """Every ring element, not just encoded reals: the edges of the signed range, all powers
    of two and random words, split into random shares (so carries into bit 63 vary)."""
    rng = np.random.default_rng(100 + n)
    x = rng.integers(0, 2**64, n, dtype=np.uint64)
    edges = np.concatenate([EDGES, np.uint64(1) << np.arange(64, dtype=np.uint64)])
    x[:min(n, len(edges))] = edges[:n]
    x0 = rng.integers(0, 2**64, n, dtype=np.uint64)
    x0[:3] = np.array([0, 2**64 - 1, 2**63], np.uint64)[:min(n, 3)]  # shares at the edges too
    x1 = x - x0
    s0, s1 = stores(mpc.relu_plan(n))
    (y0, d0), (y1, d1) = mpc.run_locally(mpc.relu(0, s0, x0), mpc.relu(1, s1, x1))
    nonneg = x.view(np.int64) >= 0
    assert np.array_equal(d0 + d1, nonneg.astype(np.uint64))
    assert np.array_equal(y0 + y1, np.where(nonneg, x, np.uint64(0)))
    assert s0.exhausted and s1.exhausted


def tiny_model(seed=0, d_in=12, hidden=9, d_out=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, d_out))


def test_training_steps_on_shares_match_plaintext_training():
    ref = tiny_model()
    params = {"w1": ref[0].weight.T, "b1": ref[0].bias, "w2": ref[2].weight.T, "b2": ref[2].bias}
    sh = {k: shared(v.detach().numpy()) for k, v in params.items()}
    m0 = mpc.SharedModel(0, {k: v[0] for k, v in sh.items()})
    m1 = mpc.SharedModel(1, {k: v[1] for k, v in sh.items()})
    model = copy.deepcopy(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(2)
    batch = 16
    for _ in range(4):
        h = rng.normal(size=(batch, 12)).astype(np.float32)
        y = torch.from_numpy(rng.integers(0, 4, batch))
        s0, s1 = stores(mpc.train_plan(batch, 12, 9, 4))
        h0, h1 = shared(h)
        (z0, c0), (z1, c1) = mpc.run_locally(mpc.forward(m0, s0, h0), mpc.forward(m1, s1, h1))
        logits = torch.from_numpy(ring.decode(ring.reveal(z0, z1))).requires_grad_(True)
        torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
        g0, g1 = shared(logits.grad.numpy())
        dh0, dh1 = mpc.run_locally(mpc.backward(m0, s0, c0, g0, 0.1, 0.9, batch),
                                   mpc.backward(m1, s1, c1, g1, 0.1, 0.9, batch))
        ht = torch.from_numpy(h).requires_grad_(True)
        opt.zero_grad()
        out = model(ht)
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
        assert np.abs(logits.detach().numpy() - out.detach().numpy()).max() < 1e-2
        assert np.abs(ring.decode(ring.reveal(dh0, dh1)) / batch - ht.grad.numpy()).max() < 1e-3
        assert s0.exhausted and s1.exhausted
    w1 = ring.decode(ring.reveal(m0.params["w1"], m1.params["w1"]))
    assert np.abs(w1 - model[0].weight.detach().numpy().T).max() < 1e-3
    assert np.abs(w1 - ref[0].weight.detach().numpy().T).max() > 1e-2  # it did learn


def test_public_weight_inference_equals_shared_weight_inference():
    ref = tiny_model(1)
    params = {"w1": ref[0].weight.T, "b1": ref[0].bias, "w2": ref[2].weight.T, "b2": ref[2].bias}
    enc = {k: ring.encode(v.detach().numpy()) for k, v in params.items()}
    sh = {k: ring.share(v) for k, v in enc.items()}
    m0 = mpc.SharedModel(0, {k: v[0] for k, v in sh.items()})
    m1 = mpc.SharedModel(1, {k: v[1] for k, v in sh.items()})
    w0, w1 = mpc.run_locally(mpc.reveal_weights(m0), mpc.reveal_weights(m1))
    assert all(np.array_equal(w0[k], enc[k]) and np.array_equal(w1[k], enc[k]) for k in enc)
    h = np.random.default_rng(3).normal(size=(7, 12))
    h0, h1 = shared(h)
    s0, s1 = stores(mpc.infer_plan(7, 12, 9, 4, public_weights=True))
    stats = mpc.RoundStats()
    z0, z1 = mpc.run_locally(mpc.infer_public(0, w0, s0, h0), mpc.infer_public(1, w1, s1, h1),
                             stats)
    with torch.no_grad():
        want = ref(torch.from_numpy(h).float()).numpy()
    assert np.abs(ring.decode(ring.reveal(z0, z1)) - want).max() < 1e-2
    assert stats.rounds == 8  # only ReLU needs rounds


def test_plan_wire_encoding_round_trips_and_rejects_garbage():
    plan = mpc.train_plan(8, 12, 9, 4)
    request_id, back = decode_plan(encode_plan(plan, 42))
    assert request_id == 42 and back == plan
    bad = encode_plan(plan, 1)
    bad[3, 0] = 9  # unknown kind
    with pytest.raises(ShapeError):
        decode_plan(bad)
    huge = encode_plan([beaver.matmul(10**5, 10**4, 10)], 1)
    with pytest.raises(ShapeError, match="exceeds"):
        decode_plan(huge)
    forward_ref = encode_plan(plan, 1)
    forward_ref[-1, 5] = len(plan) + 3  # a mask reference to a triple not yet dealt
    with pytest.raises(ShapeError, match="reference"):
        decode_plan(forward_ref)


def test_a_round_travels_as_one_frame_split_by_the_receivers_own_shapes(monkeypatch):
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 2**64, shape, dtype=np.uint64) for shape in ((3, 4), (7,), (2, 5))]
    mine = mpc.Open(arrays, [False, True, False])
    (packed,) = pack_round(mine)
    assert packed.shape == (1 + 3 + 12 + 7 + 10,) and packed.dtype == np.uint64
    assert packed[:4].tolist() == [3, 12, 7, 10]  # the head: arrays and their sizes
    back = unpack_round(mine, [packed])
    assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip(arrays, back,
                                                                           strict=True))
    # The same words split otherwise (12 | 7 | 10 against 7 | 12 | 10) is a peer out of step.
    other = mpc.Open([arrays[1], arrays[0].reshape(-1), arrays[2]], [False] * 3)
    bad_split = pack_round(other)
    for bad in ([packed[:-1]], [packed, packed], [packed.view(np.int64)], [packed.reshape(1, -1)],
                [], bad_split):
        with pytest.raises(ShapeError, match="out of step"):
            unpack_round(mine, bad)
    # A round larger than a frame's payload travels in pieces, in order.
    monkeypatch.setattr("actors.mpc_roles.OPEN_FRAME_WORDS", 8)
    pieces = pack_round(mine)
    assert len(pieces) == 5 and all(p.size <= 8 for p in pieces)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, unpack_round(mine, pieces),
                                                    strict=True))


def test_a_bitmul_bit_is_reused_only_as_an_unopened_product_factor():
    """A bitmul's b is one bit, not a uniform mask: a plan may reuse it only as an
    element-wise product's b (never opened), and a program may not open a factor masked by it."""
    n = 70
    ok = [beaver.bitmul(n), TripleSpec("mul", (n,), (n,), b_ref=(0, "b", False))]
    request_id, back = decode_plan(encode_plan(ok, 3))
    assert back == ok
    for bad in (TripleSpec("mul", (n,), (n,), a_ref=(0, "b", False)),
                TripleSpec("and", (n,), (n,), b_ref=(0, "b", False)),
                TripleSpec("matmul", (1, n), (n, 1), a_ref=(0, "b", True))):
        with pytest.raises(ShapeError, match="bitmul's bit"):
            decode_plan(encode_plan([ok[0], bad], 3))
    s0, s1 = stores(ok)
    ctx = Ctx(0, s0)
    ctx.take(ok[0])
    with pytest.raises(ShapeError, match="must not open"):
        next(products(ctx, [(ok[1], Factor(np.zeros(n, np.uint64)),
                             Factor(np.zeros(n, np.uint64)))]))
