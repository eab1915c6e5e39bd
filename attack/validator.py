"""The validator: an independently trained classifier that reads reconstructions.

Validator accuracy (Titcombe et al. 2021) is the share of reconstructions whose class a
classifier that never saw them still recognises; 1 / classes is chance. It is a convolutional
network, deliberately unlike the target, trained from its own seed on the owner's training
split, so it measures what a person looking at the reconstruction would read off it.

For MNIST-format data ((1, 28, 28), 10 classes) it is the CNN the lab always used; for any
other shape or class count an adaptive variant pools the feature map to a fixed 4x4 before the
head. :func:`embed` gives the penultimate layer's features (re-identification in the
validator's feature space).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from protocol.errors import ShapeError

#: The shape and class count the original validator CNN was designed for (MNIST).
MNIST_FORMAT = ((1, 28, 28), 10)
#: Side of the adaptive validator's pooled feature map, and its hidden width.
POOLED = 4
HIDDEN = 128


class ValidatorCNN(nn.Module):
    """The MNIST validator: two 5x5 conv + pool stages, 1568 -> 128 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        (colours, height, width), classes = MNIST_FORMAT
        self.shape = (colours, height, width)
        self.features = nn.Sequential(
            nn.Conv2d(colours, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4),
                                                          HIDDEN), nn.ReLU(),
                                  nn.Linear(HIDDEN, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.shape)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 128) features of the penultimate layer."""
        return self.head[:-1](self.features(x.view(-1, *self.shape)))


class AdaptiveValidator(ValidatorCNN):
    """Any (C, H, W) and class count: ceil-mode pooling, then an adaptive pool to 4x4."""

    def __init__(self, input_shape: tuple[int, int, int], classes: int) -> None:
        nn.Module.__init__(self)
        colours = input_shape[0]
        self.shape = tuple(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(colours, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(POOLED),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * POOLED * POOLED, HIDDEN),
                                  nn.ReLU(), nn.Linear(HIDDEN, classes))


def build_validator(input_shape: tuple[int, int, int], classes: int) -> ValidatorCNN:
    """The MNIST CNN for MNIST-format data, the adaptive one for anything else."""
    if (tuple(input_shape), classes) == MNIST_FORMAT:
        return ValidatorCNN()
    return AdaptiveValidator(input_shape, classes)


def train_validator(
    x: np.ndarray, y: np.ndarray, classes: int, *, seed: int = 0, epochs: int = 4,
    batch_size: int = 64,
) -> ValidatorCNN:
    """Train on (N, C, H, W) images in [0, 1], labels in [0, classes); ~10 s for 4,000 digits."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or y.shape != (len(x),) or len(x) == 0:
        raise ShapeError(f"validator needs (N, C, H, W) images and N labels, got {x.shape}, "
                         f"{y.shape}")
    if classes < 2 or y.min() < 0 or y.max() >= classes:
        raise ShapeError(f"validator labels must lie in [0, {classes}), got {y.min()}..{y.max()}")
    torch.manual_seed(seed + 7919)  # its own stream: independent of the target model's init
    gen = torch.Generator().manual_seed(seed + 7919)
    model = build_validator(x.shape[1:], classes)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _checked(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    arr = np.asarray(x)
    if arr.ndim != 4 or len(arr) == 0:
        raise ShapeError(f"the validator reads (N, C, H, W) images, N >= 1; got {arr.shape}")
    return torch.from_numpy(np.clip(arr, 0, 1).astype(np.float32))


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` (N, C, H, W) that ``model`` labels as ``y``."""
    pred = model(_checked(model, x)).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())


@torch.no_grad()
def embed(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """(N, d) float32 penultimate-layer features of ``x`` (N, C, H, W), in batches of 500
    (a classifier without an ``embed`` method gives its outputs instead)."""
    t = _checked(model, x)
    features = getattr(model, "embed", model)
    parts = [features(t[i:i + 500]) for i in range(0, len(t), 500)]
    return torch.cat(parts).numpy().astype(np.float32)
