"""How many steps does FSHA need? The hijack alone, in-process, beyond the lab's run length.

    python bench/fsha_steps.py [--steps 3000] [--every 250] [--aux letters] [--pilot initial]
                               [--train-pilot] [--model mlp] [--owner-lr 0.1]

Plays the owner itself, as the lab's owner trains (the default network's first part, SGD lr
0.1, momentum 0.9, batch 64, the 4,000 training digits), on nothing but the gradients of
``attack.fsha.FeatureSpaceHijacker`` with the lab's settings (``actors.malicious``), and every
``--every`` steps scores the decoder's reconstructions of the 500 private test digits through
the owner's current first part: SSIM, MSE in [0, 1] and in the paper's [-1, 1] (four times
it). ``--pilot fresh`` starts the pilot from the attacker's own weights (the paper's setting)
instead of the first part's initial weights (what the lab's server holds). ``--train-pilot``
trains the pilot with the decoder (the authors' way) instead of holding it still (the lab's).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main() -> int:
    from actors.data import load_target
    from actors.fsha_pilot import PILOT_STARTS, PilotChoice
    from actors.malicious import LAB_SETTINGS, pilot_encoder
    from actors.nets.zoo import ModelSpec, build_network
    from attack import metrics
    from attack.auxiliary import load_aux
    from attack.fsha import FeatureSpaceHijacker

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--aux", default="letters")
    p.add_argument("--pilot", choices=PILOT_STARTS, default="initial")
    p.add_argument("--model", default="mlp")
    p.add_argument("--train-pilot", action="store_true",
                   help="train the pilot with the decoder (the authors' FSHA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--owner-lr", type=float, default=0.1,
                   help="the owner's SGD rate (the lab's: 0.1; its cnn runs use 0.05)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_target(seed=args.seed)
    net = build_network(ModelSpec(args.model), args.seed, data.input_shape, data.classes)
    aux = load_aux(args.aux, 6000, args.seed, data.input_shape, holdout=data.holdout.x)
    seed = args.seed

    # The lab's --fsha-pilot choices are (initial, held), (initial, trained), (fresh, trained);
    # the bench also runs (fresh, held).
    choice = PilotChoice(f"{args.pilot}/{'trained' if args.train_pilot else 'held'}",
                         args.pilot, args.train_pilot, "bench/fsha_steps.py")
    t0 = time.perf_counter()
    fsha = FeatureSpaceHijacker(data.input_shape, net.cut_shape, aux, seed=seed,
                                encoder_factory=lambda: pilot_encoder(net, choice.start, seed),
                                **(LAB_SETTINGS | choice.settings))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; "
          f"{net.describe()}; aux {args.aux}, pilot {args.pilot} "
          f"({'trained' if args.train_pilot else 'held still'}); "
          f"warm-up {time.perf_counter() - t0:.0f} s", flush=True)
    owner = net.owner_part()
    opt = torch.optim.SGD(owner.parameters(), lr=args.owner_lr, momentum=0.9)
    x = torch.from_numpy(data.train.x)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    print("step  ssim   mse[0,1]  mse[-1,1]  seconds")
    while step < args.steps:
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            h = owner(x[perm[start:start + 64]])
            grad = fsha.step(h.detach().numpy())
            opt.zero_grad()
            h.backward(torch.from_numpy(grad))
            opt.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                with torch.no_grad():
                    recon = fsha.reconstruct(owner(torch.from_numpy(data.test.x)).numpy())
                mse = metrics.mse(recon, data.test.x)
                print(f"{step:>5} {metrics.ssim(recon, data.test.x):.3f}  {mse:.4f}    "
                      f"{4 * mse:.4f}     {time.perf_counter() - t0:.0f}", flush=True)
            if step >= args.steps:
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(int(np.sign(main())))
