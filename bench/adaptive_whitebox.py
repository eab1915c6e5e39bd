"""Does the white-box rMLE attack still work when the owner defends the cut layer?

    python bench/adaptive_whitebox.py [--seed 0] [--defences SPEC ...]

For each defence, trains the split model in-process (as ``actors.sweep`` does), then inverts
the eavesdropper's intercepted activations twice with the same known weights: the plain rMLE
of He et al. (2019), which fits every activation with a squared error, and SplitWire's
``whitebox`` rung, which is told the defence (Kerckhoffs) and fits dropout survivors only, or
the clipped output with the likelihood of the noise. Prints SSIM and validator accuracy side
by side, with the target accuracy.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

DEFAULT = ["dropout:rate=0.3", "dropout:rate=0.6", "noise:mechanism=laplace,scale=0.5,clip=64",
           "noise:mechanism=laplace,scale=1,clip=64"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defences", nargs="+", default=DEFAULT)
    args = p.parse_args()
    torch.set_num_threads(1)

    from actors.backend import LocalBackend
    from actors.data import load_target
    from actors.lab import RunConfig, run_protocol, score
    from actors.nets.zoo import ModelSpec, build_network
    from actors.owner import TrainConfig
    from attack.auxiliary import load_aux
    from attack.validator import train_validator
    from attack.whitebox import WhiteBoxInversion

    data = load_target(seed=args.seed)
    aux = load_aux("letters", 6000, args.seed, data.input_shape, holdout=data.holdout.x)
    judge = train_validator(data.train.x, data.train.y, data.classes, seed=args.seed)
    print(f"# {platform.machine()} {platform.processor() or ''}, "
          f"{time.strftime('%Y-%m-%d')}, seed {args.seed}")
    print("| defence | target acc | plain rMLE SSIM / validator | aware `whitebox` SSIM / "
          "validator |\n|---|---|---|---|")
    for spec in args.defences:
        cfg = RunConfig(train=TrainConfig(seed=args.seed), protocol="plaintext", seed=args.seed,
                        adversaries=("eavesdropper",), defences=(spec,), attacks=("whitebox",))
        backend = LocalBackend()
        (aware,) = run_protocol(backend, cfg, data, aux, lambda: judge)
        acts = backend.roles["eavesdropper"].intercepted_activations("owner:0").acts
        weights = backend.party("owner:0").first_part_weights()
        net = build_network(ModelSpec("mlp"), args.seed, data.input_shape, data.classes)
        part = net.owner_from(np.asarray(weights)).eval()
        naive = WhiteBoxInversion(part, data.input_shape, seed=args.seed).reconstruct(acts)
        plain = score(naive, aware.originals, aware.labels, judge)
        print(f"| {spec} | {aware.target_accuracy:.1%} | {plain.ssim:.3f} / "
              f"{plain.validator_accuracy:.1%} | {aware.attack.ssim:.3f} / "
              f"{aware.attack.validator_accuracy:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
