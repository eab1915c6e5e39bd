"""Secret-shared inference of the server part against plaintext float32, in one run.

    python bench/mpc.py [--batch 256] [--repeats 7]

The server part is Linear(500,500) + ReLU + Linear(500,10). For one batch it times, as medians
over ``--repeats`` trials:

- plaintext: torch float32 forward (one core);
- public weights (``--reveal-model``): local ring products, 8 ReLU rounds;
- shared weights (the default): Beaver products for both linear layers, 10 rounds;

each secret-shared mode "online" (triples dealt beforehand, as the dealer's offline phase) and
"with triples" (the dealer's work and both parties' expansion of its seeds included). Both
parties run in this process one after the other (``protocol.mpc.run_locally``), so the time is
the two servers' computation added up, with no network: what the protocol itself costs. It also
prints the bytes each mode opens per batch (what crosses the wire between the servers).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch
import without_avx512  # bench/ is the script's directory

from actors.nets.zoo import ModelSpec, build_network
from protocol import beaver, mpc, ring, ring_kernels
from protocol.beaver import TripleStore

#: The default network's server part (Linear 500->500, ReLU, Linear 500->10).
NET = build_network(ModelSpec("mlp"), 0)
D_IN = NET.cut_shape[0]
D_HIDDEN, D_OUT = NET.server.fc2.out_features, NET.classes


def median(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def deal(plan, materialize: bool):
    dealt = beaver.deal(plan)
    stores = (TripleStore(0, plan, dealt.seed0),
              TripleStore(1, plan, dealt.seed1, dealt.corrections))
    return tuple(s.materialize() for s in stores) if materialize else stores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    args, emulated = without_avx512.parse(p)
    torch.set_num_threads(1)
    net = NET.server_part().eval()
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(args.batch, D_IN)), 0).astype(np.float32)
    first, second = net.fc2, net.fc3
    params = {"w1": first.weight.T, "b1": first.bias, "w2": second.weight.T,
              "b2": second.bias}
    enc = {k: ring.encode(v.detach().numpy()) for k, v in params.items()}
    shares = {k: ring.share(v) for k, v in enc.items()}
    models = [mpc.SharedModel(i, {k: v[i] for k, v in shares.items()}) for i in (0, 1)]
    h0, h1 = ring.share(ring.encode(h))

    with torch.no_grad():
        xt = torch.from_numpy(h)
        plain = []
        for _ in range(max(args.repeats, 50)):
            t = time.perf_counter()
            want = net(xt).numpy()
            plain.append(time.perf_counter() - t)
        t_plain = median(plain)

    def run(public_weights: bool, stores) -> tuple[np.ndarray, mpc.RoundStats]:
        s0, s1 = stores
        stats = mpc.RoundStats()
        if public_weights:
            z0, z1 = mpc.run_locally(mpc.infer_public(0, enc, s0, h0),
                                     mpc.infer_public(1, enc, s1, h1), stats)
        else:
            (z0, _), (z1, _) = mpc.run_locally(mpc.forward(models[0], s0, h0),
                                               mpc.forward(models[1], s1, h1), stats)
        return ring.decode(ring.reveal(z0, z1)), stats

    dims = (args.batch, D_IN, D_HIDDEN, D_OUT)
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch "
          f"{torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}; batch {args.batch}, "
          f"medians of {args.repeats}")
    if emulated:
        print(without_avx512.banner())
    kernel, calibration = ring_kernels.chosen()
    shapes = " + ".join("x".join(map(str, s)) for s in ring_kernels.CALIBRATION_SHAPES)
    if calibration:
        print(f"ring-product kernel: {kernel} (calibration, best of 5 on m x k x n = {shapes}, "
              f"of {ring_kernels.PRUNE_AFTER} where over {ring_kernels.PRUNE_FACTOR:g}x the "
              "fastest: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in calibration.items())
              + ")")
    else:
        print(f"ring-product kernel: {kernel} (forced by {ring_kernels.FORCE_ENV}: no calibration)")
    every = ring_kernels.calibrate((args.batch, D_IN, D_HIDDEN), rounds=3,
                                   names=tuple(ring_kernels.KERNELS))
    print(f"every exact kernel on {args.batch}x{D_IN} @ {D_IN}x{D_HIDDEN}: " + ", ".join(
        f"{k} {1e3 * v:.1f} ms" for k, v in every.items()))
    print(f"plaintext float32 inference of the server part: {t_plain:.3f} ms")
    print("online = triples dealt and expanded beforehand; +triples = the dealer's work and the "
          "seed expansion included.\nsummed = both servers' compute added up; side by side = "
          "per round, the slower server (two machines, network aside).")
    print("| mode | online, side by side | online, summed | +triples, summed | rounds "
          "| opened MB | dealer MB | max abs error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, public_weights in (("public weights", True), ("shared weights", False)):
        plan = mpc.infer_plan(*dims, public_weights=public_weights)
        side, summed, full = [], [], []
        for _ in range(args.repeats):
            _, stats = run(public_weights, deal(plan, materialize=True))
            side.append(stats.parallel_seconds)
            summed.append(sum(stats.seconds))
            t = time.perf_counter()
            got, stats = run(public_weights, deal(plan, materialize=False))
            full.append(time.perf_counter() - t)
        err = np.abs(got - want).max()
        opened_mb = 2 * 8 * stats.opened_elements / 1e6  # both servers send their shares
        dealer_mb = (8 * beaver.corrections_len(plan) + 64) / 1e6
        cells = [f"{median(v):.1f} ms ({median(v) / t_plain:.1f}x)" for v in (side, summed, full)]
        print(f"| {name} | " + " | ".join(cells) + f" | {stats.rounds} | {opened_mb:.1f} | "
              f"{dealer_mb:.1f} | {err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
