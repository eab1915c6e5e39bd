"""The CNN server part on shares (protocol.shared) against plaintext float32, in one run.

    python bench/mpc_layers.py [--net cnn|mlp] [--batch 64] [--repeats 5] [--clock cpu|wall]
                               [--before] [--without-avx512]

The server part is the contract's ``cnn`` after pool1, on an (B, 8, 12, 12) cut: conv2 5x5
8->16, ReLU, MaxPool 2, Flatten, Linear 256->120, ReLU, Linear 120->84, ReLU, Linear 84->10.
For one batch it times, as medians over ``--repeats`` trials, on one core:

- plaintext: torch float32 inference, and one training step (forward, loss, backward, SGD);
- public weights (``--reveal-model``): linear layers local, rounds only for ReLU and MaxPool;
- shared weights: Beaver products for every linear layer as well;
- a training step on shares: forward, backward and SGD with momentum (the owner's loss
  gradient, computed in between, is not counted);

``--before`` adds the shared-weight rows with the convolution as it was before convolution
triples (Beaver matrix triples over the im2col matrix, which open kh kw times the input's
size), in the same run. Trials of every mode take turns, so load from other processes on the
host falls on all of them alike.

"online" = triples dealt and expanded beforehand (the offline phase); "+triples" adds the
dealer's work and both parties' expansion of its seeds, and for shared-weight
inference the preparation (one round opening the weights' masks, then the precomputation
that needs no input: ``SharedNet.prepare``). "side by side" = per round, the slower
party (two servers on two machines, network aside); "summed" = both parties' compute added up.
Both parties run in this process, in lockstep as ``protocol.mpc.run_locally`` plays them,
timed by CPU time of the thread (``--clock wall`` for wall time): the 2-core host is shared,
and CPU time is what one dedicated core would take. Ring matrix products go
through ``protocol.ring.matmul``, whose exact kernel is chosen per machine (printed).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
import without_avx512  # bench/ is the script's directory
from torch import nn

from protocol import beaver, mpc, ring, ring_conv
from protocol.beaver import TripleStore
from protocol.shared import Conv2d, SharedNet, from_torch, infer_plan, train_plan
from protocol.shared import linear as lin

CUT_SHAPE = (8, 12, 12)
MLP_CUT = (500,)
CRYPTEN = ("CrypTen 2PC (published, CPU): small feed-forward network inference ~115x "
           "plaintext, training ~25x per epoch; conv2d 58x; ReLU ~5,400x")


def mlp_server_part() -> nn.Module:
    """The mlp's server part after relu1 (Linear 500->500, ReLU, Linear 500->10)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 10))


def cnn_server_part() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


@dataclass(frozen=True)
class MatrixConv2d(Conv2d):
    """Conv2d as before convolution triples: a Beaver matrix product over im2col(x), so the
    forward opens im2col(x) - A (for ``--before``; same weights, same results)."""

    def prepare(self, ctx, params, in_shape):
        b, _, oh, ow = self.out_shape(in_shape)
        w = params["weight"]
        return lin.weight_prepare(ctx, beaver.matmul(b * oh * ow, *w.shape), w)

    def forward(self, ctx, params, x):
        b, _, oh, ow = self.out_shape(x.shape)
        z, cache = yield from lin.matmul_forward(ctx, ring_conv.im2col(x, self.geometry),
                                                 params["weight"])
        if self.bias:
            z = ctx.add_bias(z, params["bias"])
        return np.ascontiguousarray(z.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2)), (cache,
                                                                                     x.shape)

    def backward(self, ctx, params, cache, dy):
        mat, in_shape = cache
        b, _, oh, ow = dy.shape
        dz = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(b * oh * ow, -1)
        dcols, dw = yield from lin.matmul_backward(ctx, mat, dz)
        dcols = dcols.reshape(b, oh, ow, self.in_channels, *self.kernel).transpose(
            0, 3, 1, 2, 4, 5)
        dx = ctx.trunc(lin.win.unwindows(dcols, in_shape, self.stride, self.padding))
        grads = {"weight": dw}
        if self.bias:
            grads["bias"] = dy.sum((0, 2, 3), dtype=np.uint64)
        return dx, grads


def as_before(layers):
    """The same layers with every Conv2d on im2col matrix triples."""
    return tuple(MatrixConv2d(**{f.name: getattr(layer, f.name) for f in fields(layer)})
                 if isinstance(layer, Conv2d) else layer for layer in layers)


@dataclass
class Trial:
    side: float  # online, side by side
    summed: float  # online, both parties
    offline_side: float  # the dealer, then the slower party's expansion (and preparation)
    offline_summed: float  # the dealer's and both parties' offline work
    rounds: int  # online
    offline_rounds: int
    opened: int  # ring elements one party opens, online and offline
    logits: np.ndarray

    @property
    def full_side(self) -> float:
        return self.offline_side + self.side

    @property
    def full_summed(self) -> float:
        return self.offline_summed + self.summed


CLOCK = time.thread_time  # CPU time of this thread: immune to other people's load on the host


def run_pair(proto0: mpc.Proto, proto1: mpc.Proto) -> tuple[tuple, mpc.RoundStats]:
    """``protocol.mpc.run_locally`` with ``CLOCK`` as the clock (same lockstep, same stats)."""
    stats = mpc.RoundStats()
    protos, msgs, results = (proto0, proto1), [None, None], [None, None]
    inputs: list = [None, None]
    while True:
        spent = [0.0, 0.0]
        for i in (0, 1):
            t = CLOCK()
            try:
                msgs[i] = next(protos[i]) if inputs[i] is None else protos[i].send(inputs[i])
            except StopIteration as done:
                msgs[i], results[i] = None, done.value
            spent[i] = CLOCK() - t
            stats.seconds[i] += spent[i]
        stats.parallel_seconds += max(spent)
        if msgs[0] is None or msgs[1] is None:
            if msgs[0] is not msgs[1]:
                raise RuntimeError("one party wants another round, the other finished")
            return (results[0], results[1]), stats
        stats.rounds += 1
        stats.opened_elements += sum(a.size for a in msgs[0].arrays)
        inputs = [mpc.combine(msgs[0], msgs[1].arrays), mpc.combine(msgs[1], msgs[0].arrays)]


def dealt(plan) -> tuple[tuple[TripleStore, TripleStore], float, tuple[float, float]]:
    t = CLOCK()
    d = beaver.deal(plan)
    dealer = CLOCK() - t
    stores, expand = [], []
    for s in (TripleStore(0, plan, d.seed0), TripleStore(1, plan, d.seed1, d.corrections)):
        t = CLOCK()
        stores.append(s.materialize())
        expand.append(CLOCK() - t)
    return tuple(stores), dealer, tuple(expand)


def infer_trial(nets, public, x_shares, plan) -> Trial:
    """Shared weights: the preparation (opening the weights' masks, precomputing) belongs to
    the offline phase with the dealer's triples: it does not depend on the input."""
    (s0, s1), dealer, expand = dealt(plan)
    prepared, prep = (None, None), mpc.RoundStats()
    if public is None:
        shape = x_shares[0].shape
        prepared, prep = run_pair(nets[0].prepare(s0, shape), nets[1].prepare(s1, shape))
    (z0, z1), stats = run_pair(
        nets[0].infer(s0, x_shares[0], public and public[0], prepared[0]),
        nets[1].infer(s1, x_shares[1], public and public[1], prepared[1]))
    return Trial(stats.parallel_seconds, sum(stats.seconds),
                 dealer + max(expand) + prep.parallel_seconds,
                 dealer + sum(expand) + sum(prep.seconds), stats.rounds, prep.rounds,
                 stats.opened_elements + prep.opened_elements, ring.decode(ring.reveal(z0, z1)))


def train_trial(nets, x_shares, y, plan) -> Trial:
    (s0, s1), dealer, expand = dealt(plan)
    ((z0, c0), (z1, c1)), fwd = run_pair(nets[0].forward(s0, x_shares[0]),
                                         nets[1].forward(s1, x_shares[1]))
    logits = ring.decode(ring.reveal(z0, z1))
    lt = torch.from_numpy(logits).requires_grad_(True)  # the owner's part: not timed
    F.cross_entropy(lt, y, reduction="sum").backward()
    g0, g1 = ring.share(ring.encode(lt.grad.numpy()))
    batch = len(y)
    _, bwd = run_pair(nets[0].backward(s0, c0, g0, 0.05, 0.9, batch),
                      nets[1].backward(s1, c1, g1, 0.05, 0.9, batch))
    return Trial(fwd.parallel_seconds + bwd.parallel_seconds, sum(fwd.seconds + bwd.seconds),
                 dealer + max(expand), dealer + sum(expand), fwd.rounds + bwd.rounds, 0,
                 fwd.opened_elements + bwd.opened_elements, logits)


def plaintext_times(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    repeats: int) -> tuple[float, float, np.ndarray]:
    with torch.no_grad():
        want = net(x).numpy()
        infer = []
        for _ in range(max(repeats, 50)):
            t = CLOCK()
            net(x)
            infer.append(CLOCK() - t)
    model = copy.deepcopy(net)  # the steps change it
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = []
    for _ in range(max(repeats, 20)):
        t = CLOCK()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        train.append(CLOCK() - t)
    return statistics.median(infer), statistics.median(train), want


def print_row(name: str, base: float, trials: list[Trial], plan, want: np.ndarray) -> None:
    cells = []
    for attr in ("side", "summed", "full_side", "full_summed"):
        v = statistics.median(getattr(t, attr) for t in trials)
        cells.append(f"{1e3 * v:.1f} ms ({v / base:.0f}x)")
    last = trials[-1]
    err = np.abs(last.logits - want).max() if "inference" in name else float("nan")
    opened_mb = 2 * 8 * last.opened / 1e6  # both servers send their shares
    dealer_mb = (8 * beaver.corrections_len(plan) + 64) / 1e6
    rounds = f"{last.rounds}" + (f" (+{last.offline_rounds})" if last.offline_rounds else "")
    print(f"| {name} | " + " | ".join(cells) + f" | {rounds} | {opened_mb:.1f} | "
          f"{dealer_mb:.1f} | {err:.1e} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--net", choices=("cnn", "mlp"), default="cnn",
                   help="cnn: the contract's cnn after pool1; mlp: the mlp after relu1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--before", action="store_true",
                   help="also the shared-weight rows on im2col matrix triples (as before)")
    args, emulated = without_avx512.parse(p)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    net = (cnn_server_part() if args.net == "cnn" else mlp_server_part()).eval()
    cut_shape = CUT_SHAPE if args.net == "cnn" else MLP_CUT
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(args.batch, *cut_shape)).astype(np.float32)
    y = torch.from_numpy(rng.integers(0, 10, args.batch))
    t_infer, t_train, want = plaintext_times(net, torch.from_numpy(x), y, args.repeats)
    layers, (p0, p1) = from_torch(net, input_shape=cut_shape)
    nets = (SharedNet(0, layers, p0), SharedNet(1, layers, p1))
    x_shares = ring.share(ring.encode(x))
    public = mpc.run_locally(nets[0].reveal(), nets[1].reveal())
    shape = (args.batch, *cut_shape)

    print(f"# {platform.machine()}, Python {platform.python_version()}, torch "
          f"{torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}; {args.net} server part, "
          f"batch {args.batch}, "
          f"medians of {args.repeats}; {args.clock} time; ring kernel {ring.kernel_name()}")
    if emulated:
        print(without_avx512.banner())
    print(f"plaintext float32: inference {1e3 * t_infer:.2f} ms, training step "
          f"{1e3 * t_train:.2f} ms")
    print("| mode | online, side by side | online, summed | +triples, side by side "
          "| +triples, summed | rounds (+offline) | opened MB | dealer MB | max abs err |")
    print("|---|---|---|---|---|---|---|---|---|")
    modes = [("inference, public weights", t_infer, nets, infer_plan(layers, shape, True)),
             ("inference, shared weights", t_infer, nets, infer_plan(layers, shape, False)),
             ("training step, shared", t_train, nets, train_plan(layers, shape))]
    if args.before:
        old = as_before(layers)
        old_nets = tuple(SharedNet(i, old, n.params) for i, n in enumerate(nets))
        modes += [("before: inference, shared weights", t_infer, old_nets,
                   infer_plan(old, shape, False)),
                  ("before: training step, shared", t_train, old_nets, train_plan(old, shape))]
    trials: dict[str, list[Trial]] = {name: [] for name, *_ in modes}
    for _ in range(args.repeats):  # modes take turns: load from elsewhere hits them alike
        for name, _, mode_nets, plan in modes:
            if "training" in name:
                # each mode trains its own copy, so every mode starts every trial alike
                fresh = tuple(copy.deepcopy(n) for n in mode_nets)
                trials[name].append(train_trial(fresh, x_shares, y, plan))
            else:
                trials[name].append(infer_trial(mode_nets, public if "public" in name else None,
                                                x_shares, plan))
    for name, base, _, plan in modes:
        print_row(name, base, trials[name], plan, want)
    print(CRYPTEN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
