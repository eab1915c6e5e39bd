"""UnSplit (Erdoğan, Küpçü & Çiçek, WPES 2022): inversion with neither data nor weights nor queries.

The adversary holds only the intercepted cut-layer activations H (N, *cut) and the first part's
*architecture* (public in split learning: the server must know what shape it is sent). It
optimises candidate inputs X and a clone g of the first part together, alternating

    input steps:  min_X  Σ_i  mse(g(x_i), h_i) + λ_tv TV(x_i) + λ_l2 mean(x_i²),  x_i in [0, 1]
    clone steps:  min_g  Σ_i  mse(g(x_i), h_i)

with Adam (amsgrad) on both, as the authors do (TV 0.1, L2 1; their TV is the mean squared
neighbour difference, their L2 the mean square). The clone starts from a fresh draw of the
architecture's own initialisation under the rung's seed: whatever weights the factory's module
carries are thrown away, so the rung cannot be handed the owner's weights by mistake.

Where we depart from the authors, and why:

- They invert one image at a time with 1,000 rounds of 100 + 100 steps at lr 1e-3 (200,000
  steps per image). Here all the candidates of a batch share one clone (it is *one* first part
  that made them all) and are optimised together; ``epochs`` rounds of ``input_steps`` +
  ``clone_steps`` at larger steps (0.05 on pixels, 0.01 on the clone) fit the 2-core budget:
  20 rounds invert 500 digits at He et al.'s conv1 cut in under a minute (SSIM 0.91 on a
  briefly trained LeNet; with the clone's lr at 1e-3 or 3e-2 instead of 1e-2 a trial run lost
  0.10). A clone step sees a
  random ``clone_batch`` of the candidates: the clone has few weights, a few hundred images pin
  them down, and the step costs a fifth.
- Inputs are clamped to [0, 1] after every step (the authors leave them free).
- The L2 prior and the clone trade scale: g(εx) with weights scaled by 1/ε fits as well and
  costs less L2, so the candidates fade while their shapes sharpen. ``stretch`` min-max
  normalises each reconstruction at the end (the authors do this for their CIFAR images): the
  prior that an image uses its full range, which digits and most photographs do.

What it cannot do: invert a *dense* first layer (the ``mlp`` network's 784→500). A dense layer
is equivariant to any permutation of the pixels, and for N ≤ 784 candidates any inputs at all
are fitted exactly by some clone; the TV and L2 priors are all that is left to choose among
them, and they do not pick the digits: the clone fits the activations to a few per cent while
the candidates stay noise (SSIM ~0.01). Arxiv 2412.11689 ("Just a Simple Transformation is
Enough for Data Protection in Vertical Federated Learning") argues the same: without a prior on
the data a dense client layer cannot be inverted, and MLP clients resist UnSplit. Convolutions
tie each output to a small neighbourhood of pixels, and that is what the attack exploits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attack.base import Rung, check_input_shape
from protocol.errors import ConfigError, ShapeError

#: Added to the rung's seed for the clone's draw. The lab builds the network under the run's
#: seed and hands the rung that same seed, so an unshifted draw would reproduce the owner's
#: initial weights exactly (a leak of the public seed, not an attack on the activations).
CLONE_SEED_OFFSET = 104_729

#: How far past the typical activation a value may be before it is garbage (ciphertext read as
#: floats, NaN): clipped there so the clone never chases 1e38.
GARBAGE_FACTOR = 100.0


def mean_square_tv(x: torch.Tensor) -> torch.Tensor:
    """The authors' TV of each image of (N, C, H, W): mean squared vertical plus horizontal
    neighbour differences, (N,)."""
    if x.dim() != 4:
        raise ShapeError(f"TV needs (N, C, H, W) images, got {tuple(x.shape)}")
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


def fresh_clone(architecture: Callable[[], nn.Module], seed: int) -> nn.Module:
    """A copy of ``architecture()`` with every weight drawn anew, under ``seed`` shifted by
    :data:`CLONE_SEED_OFFSET` (never the seed the network itself was built under).

    Layers with ``reset_parameters`` (every torch layer that has weights) redraw theirs as
    torch initialises them; a custom layer without one gets uniform ±1/sqrt(fan-in) weights
    and zero 1-d parameters. Buffers (batch-norm statistics) are reset too.
    """
    made = architecture()
    if not isinstance(made, nn.Module):
        raise ConfigError(f"the UnSplit architecture factory must return a torch module, got "
                          f"{type(made).__name__}")
    clone = copy.deepcopy(made)  # never touch a module the caller may still use
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + CLONE_SEED_OFFSET)
        for module in clone.modules():
            own = list(module.parameters(recurse=False))
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            elif own:
                with torch.no_grad():
                    for p in own:
                        if p.dim() >= 2:
                            bound = 1.0 / float(np.sqrt(p[0].numel()))
                            p.uniform_(-bound, bound)
                        else:
                            p.zero_()
    return clone.eval()


@dataclass
class UnSplitInversion(Rung):
    """Alternate candidate inputs and a clone of the first part until the clone's outputs of
    the candidates match the intercepted activations."""

    #: Builds a module of the first part's architecture; its weights are ignored (redrawn).
    architecture: Callable[[], nn.Module] | None = None
    #: The images' (C, H, W): required, the first part's input.
    input_shape: tuple[int, int, int] | None = None
    #: Rounds of alternation (the lab's ``--attack-epochs``).
    epochs: int = 20
    input_steps: int = 10
    clone_steps: int = 10
    input_lr: float = 0.05
    clone_lr: float = 0.01
    lambda_tv: float = 0.1
    lambda_l2: float = 1.0
    #: Starting intensity of every pixel (the authors fill 0.5).
    init: float = 0.5
    #: Candidates optimised together (one input step costs one pass over all of them).
    batch_size: int = 500
    #: Candidates each clone step fits on, drawn afresh per step.
    clone_batch: int = 100
    stretch: bool = True
    seed: int = 0
    #: After ``reconstruct``: the clone's squared error on its candidates relative to the mean
    #: square of the activations (near 0: the clone explains what was intercepted).
    fit_error: float = field(default=float("nan"), init=False, repr=False)

    def __post_init__(self) -> None:
        self.input_shape = check_input_shape(self.input_shape, "UnSplit")
        if self.input_shape is None:
            raise ConfigError("UnSplit needs input_shape=(C, H, W), the first part's input")
        counts = (self.epochs, self.input_steps, self.clone_steps, self.batch_size,
                  self.clone_batch)
        if min(counts) < 1 or self.input_lr <= 0 or self.clone_lr <= 0:
            raise ConfigError(
                "UnSplit needs epochs, input_steps, clone_steps, batch_size, clone_batch >= 1 "
                f"and positive learning rates; got epochs={self.epochs} input_steps="
                f"{self.input_steps} clone_steps={self.clone_steps} batch_size="
                f"{self.batch_size} clone_batch={self.clone_batch} input_lr={self.input_lr} "
                f"clone_lr={self.clone_lr}")
        if self.lambda_tv < 0 or self.lambda_l2 < 0:
            raise ConfigError(f"UnSplit prior weights must be >= 0, got lambda_tv="
                              f"{self.lambda_tv} lambda_l2={self.lambda_l2}")
        if not 0.0 <= self.init <= 1.0:
            raise ConfigError(f"UnSplit init intensity must lie in [0, 1], got {self.init}")

    @property
    def shape(self) -> tuple[int, int, int]:
        assert self.input_shape is not None  # __post_init__ refuses None
        return self.input_shape

    def run(self, oracle: object, aux: np.ndarray) -> None:
        """No queries and no auxiliary data: that is the point of the attack."""
        del oracle, aux

    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        """Invert ``acts`` (N, *cut): float32 (N, C, H, W) in [0, 1]."""
        if self.architecture is None:
            raise RuntimeError("UnSplit needs the first part's architecture: pass "
                               "architecture=<factory of the first part>")
        acts = np.asarray(acts)
        if acts.ndim < 2:
            raise ShapeError(f"activations must be (N, *cut_shape), got {acts.shape}")
        if len(acts) == 0:
            return self.empty()
        clone = fresh_clone(self.architecture, self.seed)
        with torch.no_grad():
            cut = tuple(clone(torch.zeros(1, *self.shape)).shape[1:])
        if tuple(acts.shape[1:]) != cut:
            raise ShapeError(f"UnSplit's architecture emits {cut} from {self.shape} images, "
                             f"the activations are {tuple(acts.shape[1:])}")
        h = torch.from_numpy(_safe(acts))
        opt = torch.optim.Adam(clone.parameters(), lr=self.clone_lr, amsgrad=True)
        gen = torch.Generator().manual_seed(self.seed)
        # One clone for every batch, carried over: later batches start from a clone that has
        # already learnt the first part from the earlier ones.
        out, errors = [], []
        for i in range(0, len(h), self.batch_size):
            images, error = self._invert(clone, opt, h[i:i + self.batch_size], gen)
            out.append(images)
            errors.append(error)
        power = float(h.pow(2).mean())
        self.fit_error = float(torch.cat(errors).mean()) / max(power, 1e-12)
        return np.concatenate(out)

    def _invert(self, clone: nn.Module, clone_opt: torch.optim.Optimizer, h: torch.Tensor,
                gen: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """(images in [0, 1], the clone's final per-candidate error) for one batch."""
        x = torch.full((len(h), *self.shape), float(self.init)).requires_grad_()
        input_opt = torch.optim.Adam([x], lr=self.input_lr, amsgrad=True)
        weights = list(clone.parameters())
        for _ in range(self.epochs):
            for p in weights:  # input steps: d loss / d x only
                p.requires_grad_(False)
            for _ in range(self.input_steps):
                input_opt.zero_grad()
                loss = (_fit_error(clone, x, h) + self.lambda_tv * mean_square_tv(x)
                        + self.lambda_l2 * x.pow(2).mean(dim=(1, 2, 3))).sum()
                loss.backward()
                input_opt.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
            for p in weights:
                p.requires_grad_(True)
            fixed = x.detach()
            for _ in range(self.clone_steps):
                pick = torch.randperm(len(h), generator=gen)[:self.clone_batch]
                clone_opt.zero_grad()
                _fit_error(clone, fixed[pick], h[pick]).mean().backward()
                clone_opt.step()
        with torch.no_grad():
            error = _fit_error(clone, x, h)
        images = np.nan_to_num(x.detach().numpy().astype(np.float32), nan=0.0)
        images = np.clip(images, 0.0, 1.0)
        return (_stretch(images) if self.stretch else images), error


def _fit_error(clone: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-candidate mean squared error between the clone's output and the activation, (N,)."""
    return (clone(x) - h).reshape(len(h), -1).pow(2).mean(dim=1)


def _safe(acts: np.ndarray) -> np.ndarray:
    """Activations as finite float32, garbage clipped at GARBAGE_FACTOR x their typical size."""
    with np.errstate(invalid="ignore"):  # signalling NaNs in junk bytes warn on the cast
        flat = np.asarray(acts, dtype=np.float64)
    finite = np.abs(flat[np.isfinite(flat)])
    typical = float(np.median(finite[finite > 0])) if np.any(finite > 0) else 1.0
    bound = GARBAGE_FACTOR * max(typical, 1e-6)
    flat = np.nan_to_num(flat, nan=0.0, posinf=bound, neginf=-bound)
    return np.clip(flat, -bound, bound).astype(np.float32)


def _stretch(images: np.ndarray) -> np.ndarray:
    """Min-max normalise each image (N, C, H, W) to [0, 1]; a flat image stays as it is."""
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - lo
    return np.where(span > 1e-6, (images - lo) / np.maximum(span, 1e-6), images).astype(
        np.float32)
