"""White-box model inversion by regularised maximum likelihood (He, Zhang & Lee 2019, sec. 4.1).

Here the adversary knows the first part's weights (a curious server that was handed the model,
or one that trained it). Instead of learning an inverse it solves, for every intercepted
activation h, the optimisation problem

    x* = argmin_{x in [0,1]^(C x H x W)}  ||f(x) - h||^2 / ||h||^2  +  lambda_tv * TV(x)

by gradient descent through f. TV (total variation of each channel of the image, summed) is
the "natural image" prior that picks, out of the many inputs f maps close to h, the one with
smooth strokes.

``f`` is any torch module mapping (N, C, H, W) -> (N, *cut_shape): the owner's first part for
the cut layer, or the whole network (first part then server part) when the attacker
intercepts the (N, classes) output. ``input_shape`` (C, H, W) is required: this rung never sees
an image to take it from.

Defences at the cut layer are public (Kerckhoffs); their random draws are not. The attack adapts
to what it is told (:meth:`WhiteBoxInversion.knowing`): it clips ``f(x)`` as the owner clips
before adding noise, fits Laplace-noised activations with the L1 error (the maximum-likelihood
fit under Laplace noise, as L2 is under Gaussian noise), and under always-on dropout fits only
the activations that survived, undoing the survivors' ``1 / (1 - rate)`` scaling: a zero says
nothing (dropped, or a ReLU that did not fire), a survivor is an exact equation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attack.base import Rung, check_input_shape
from defences.noise import clip_rows
from defences.spec import build_defences, parse_defence
from protocol.errors import ConfigError, ShapeError


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of each image in a (N, C, H, W) batch: (N,) sums of |neighbour diffs|.

    Per channel, summed over channels: colour edges are priced like grey ones, and a
    (N, 1, H, W) batch gets exactly the grayscale TV.
    """
    if x.dim() != 4:
        raise ShapeError(f"total_variation needs (N, C, H, W) images, got {tuple(x.shape)}")
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    return dx + dy


@dataclass
class WhiteBoxInversion(Rung):
    """rMLE: optimise each input so the known first part maps it onto the intercepted output."""

    #: The module the activations came out of; its weights are known and never changed here.
    part: nn.Module | None = None
    #: The images' (C, H, W): required, the part's input.
    input_shape: tuple[int, int, int] | None = None
    steps: int = 500
    #: Adam's step in logit space (x = sigmoid(u)): 0.2 moves a pixel from 0.1 to ~0.9 in a
    #: few dozen steps; 0.1 leaves some strokes half drawn after 500 (SSIM 0.84 vs 0.89).
    lr: float = 0.2
    #: TV is summed over ~1,500 neighbour pairs while the data term is a relative error near 1
    #: at the start, so the weight is small: it breaks ties between inputs that fit h equally
    #: well (the untrained 784->500 ReLU layer leaves ~half its outputs at 0, so there are
    #: many), it does not dominate the fit. 5e-4 was best of 3e-4..2e-3 on MNIST.
    lambda_tv: float = 5e-4
    #: Images optimised together; each has its own parameters and Adam's per-coordinate steps
    #: keep them independent, so this only trades memory for speed.
    batch_size: int = 500
    seed: int = 0
    #: Starting image intensity: MNIST is mostly black, so starting dark is closer than grey.
    init: float = 0.1
    #: The owner's clipping bound on each activation row (``noise`` defence), else None.
    clip: float | None = None
    #: The norm that bound is in: 1 for Laplace noise, 2 for Gaussian.
    clip_norm: int = 2
    #: "l2" (squared error: clean or Gaussian-noised activations) or "l1" (Laplace noise).
    error: str = "l2"
    #: The owner's cut-layer dropout rate; > 0 fits only the surviving (non-zero) activations.
    dropout_rate: float = 0.0

    @classmethod
    def knowing(cls, defences: Sequence[str], **params: object  # type: ignore[override]
                ) -> WhiteBoxInversion:
        """The attack adapted to the owner's ``--defence`` specs (canonical text).

        With dropout *and* noise the zeros are noised too, so the dropout mask cannot be read
        off; dropout is then left to the error term like the noise.
        """
        built = build_defences(parse_defence(t) for t in defences)
        known: dict[str, object] = {}
        if built.noise is not None:
            known.update(clip=built.noise.clip, clip_norm=built.noise.norm,
                         error="l1" if built.noise.mechanism == "laplace" else "l2")
        elif built.dropout is not None:
            known["dropout_rate"] = built.dropout.rate
        return cls(**{**known, **params})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.input_shape = check_input_shape(self.input_shape, "white-box inversion")
        if self.input_shape is None:
            raise ConfigError("white-box inversion needs input_shape=(C, H, W), the part's input")
        if self.steps < 1 or self.lr <= 0 or self.lambda_tv < 0 or self.batch_size < 1:
            raise ConfigError(
                "white-box inversion needs steps >= 1, lr > 0, lambda_tv >= 0, batch_size >= 1; "
                f"got steps={self.steps} lr={self.lr} lambda_tv={self.lambda_tv} "
                f"batch_size={self.batch_size}"
            )
        if not 0.0 < self.init < 1.0:
            raise ConfigError(f"init intensity must lie in (0, 1), got {self.init}")
        if self.error not in ("l1", "l2") or self.clip_norm not in (1, 2):
            raise ConfigError(f"white-box error must be l1 or l2 and clip_norm 1 or 2; got "
                              f"error={self.error!r} clip_norm={self.clip_norm}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"white-box clip must be > 0, got {self.clip}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"white-box dropout_rate must be in [0, 1), got {self.dropout_rate}")

    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        """Invert every row of ``acts`` (N, *cut): float32 (N, C, H, W) in [0, 1]."""
        part = self.part
        if part is None:
            raise RuntimeError("white-box inversion needs the first part: pass part=<module>")
        acts = np.asarray(acts)
        if acts.ndim < 2:
            raise ShapeError(f"activations must be (N, *cut_shape), got {acts.shape}")
        if len(acts) == 0:
            return self.empty()
        was_training = part.training
        flags = [p.requires_grad for p in part.parameters()]
        # eval(): dropout or batch norm in the part must behave as at inference. Frozen weights:
        # we want d loss / d x only, and must not leave stale .grad tensors on a model someone
        # else may still be training.
        part.eval()
        for p in part.parameters():
            p.requires_grad_(False)
        try:
            # Garbage on the wire (ciphertext read as floats, NaN) must not blow up the
            # optimiser: clip to what the part can plausibly emit for inputs in [0, 1].
            bound = _output_bound(part, self.shape, self.seed)
            flat = acts.reshape(len(acts), -1).astype(np.float32)
            safe = np.clip(np.nan_to_num(flat, nan=0.0, posinf=bound, neginf=-bound),
                           -bound, bound)
            gen = torch.Generator().manual_seed(self.seed)
            out = [self._invert(part, torch.from_numpy(safe[i:i + self.batch_size]), gen)
                   for i in range(0, len(safe), self.batch_size)]
        finally:
            for p, flag in zip(part.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            part.train(was_training)
        return np.concatenate(out)

    @property
    def shape(self) -> tuple[int, int, int]:
        assert self.input_shape is not None  # __post_init__ refuses None
        return self.input_shape

    def run(self, oracle: object, aux: np.ndarray) -> None:
        """Nothing to query either: the adversary has the weights."""
        del oracle, aux

    def _invert(self, part: nn.Module, h: torch.Tensor, gen: torch.Generator) -> np.ndarray:
        # x = sigmoid(u): the box constraint holds by construction and Adam sees no walls.
        # A little seeded jitter breaks the symmetry between pixels the part treats alike.
        logit = float(np.log(self.init / (1.0 - self.init)))
        u = (logit + 0.1 * torch.randn(len(h), *self.shape, generator=gen)).requires_grad_()
        opt = torch.optim.Adam([u], lr=self.lr)
        # Which activations constrain x: all of them, or under dropout only the survivors,
        # rescaled back to what the first part emitted.
        if self.dropout_rate > 0:
            weight = (h != 0).to(h.dtype)
            h = h * (1.0 - self.dropout_rate)
        else:
            weight = torch.ones_like(h)
        count = weight.sum(dim=1).clamp_min(1.0)
        # Relative error: the same lambda_tv suits 500-d cut activations of size ~1 and 10-d
        # logits of size ~10. Per-image sums keep the images independent of each other.
        if self.error == "l1":
            scale = ((h.abs() * weight).sum(dim=1) / count).clamp_min(1e-6)
        else:
            scale = ((h.pow(2) * weight).sum(dim=1) / count).clamp_min(1e-6)
        for _ in range(self.steps):
            opt.zero_grad()
            x = torch.sigmoid(u)
            out = part(x).reshape(len(h), -1)  # rows: one per image, whatever the cut's rank
            if self.clip is not None:
                out = clip_rows(out, self.clip, self.clip_norm)
            resid = (out - h) * weight
            err = resid.abs() if self.error == "l1" else resid.pow(2)
            data = err.sum(dim=1) / count / scale
            loss = (data + self.lambda_tv * total_variation(x)).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return torch.sigmoid(u).numpy().astype(np.float32)


@torch.no_grad()
def _output_bound(part: nn.Module, shape: tuple[int, int, int], seed: int) -> float:
    """A generous bound on |f(x)| for x in [0, 1]: probe black, white and random inputs, x4."""
    gen = torch.Generator().manual_seed(seed)
    probe = torch.cat([torch.zeros(1, *shape), torch.ones(1, *shape),
                       torch.rand(62, *shape, generator=gen)])
    return 4.0 * max(float(part(probe).abs().max()), 1.0)
