"""The validator: an independently trained MNIST classifier that reads reconstructions.

Validator accuracy (Titcombe et al. 2021) is the share of reconstructions whose digit a
classifier that never saw them still recognises; 10% is chance. It is a convolutional network,
deliberately unlike the target MLP, trained from its own seed on the owner's training split,
so it measures what a person looking at the reconstruction would read off it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from protocol.errors import ShapeError


class ValidatorCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
                                  nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 28, 28)))


def train_validator(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 4, batch_size: int = 64
) -> ValidatorCNN:
    """Train on (N, 784) images in [0, 1]; about 10 s for 4,000 digits on one core."""
    if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
        raise ShapeError(f"validator needs (N, 784) images and N labels, got {x.shape}, {y.shape}")
    torch.manual_seed(seed + 7919)  # its own stream: independent of the target model's init
    gen = torch.Generator().manual_seed(seed + 7919)
    model = ValidatorCNN()
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


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0:
        raise ShapeError("no images to classify")
    pred = model(torch.from_numpy(np.clip(x, 0, 1).astype(np.float32))).argmax(1).numpy()
    return float((pred == y).mean())
