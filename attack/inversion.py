"""Black-box model inversion (He, Zhang & Lee, ACSAC 2019, section 4.2 "inverse network").

The adversary cannot see the first part's weights, but it can query it: it sends its own
auxiliary images through the data owner's public oracle, learns an inverse network
f^-1: activations -> image on those (activation, image) pairs with an MSE loss, and then
applies it to activations it intercepted. Everything here is plain torch, no Ray, no wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: The oracle: inputs (B, 784) in [0, 1] -> the first part's outputs (B, 500).
Oracle = Callable[[np.ndarray], np.ndarray]


class InverseNet(nn.Module):
    """The inverse network of the OpenMined / He et al. demo: 500 -> 1000 -> 784."""

    def __init__(self, in_dim: int = 500, hidden: int = 1000, out_dim: int = 784) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.Sigmoid()
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


@dataclass
class BlackBoxInversion:
    """Query the oracle with auxiliary data, fit the inverse network, reconstruct."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    query_batch: int = 500
    seed: int = 0
    model: InverseNet | None = None
    queries_used: int = 0
    #: Largest activation seen while fitting: inputs are clipped to a margin around it, so
    #: garbage (ciphertext read as floats, say) cannot drive the network to meaningless extremes.
    input_bound: float = 1.0

    def collect(self, oracle: Oracle, aux: np.ndarray) -> np.ndarray:
        """Ask the oracle for the first part's output on every auxiliary image."""
        outs = [oracle(aux[i:i + self.query_batch]) for i in range(0, len(aux), self.query_batch)]
        self.queries_used += len(aux)
        return np.concatenate(outs).astype(np.float32)

    def fit(self, acts: np.ndarray, images: np.ndarray) -> InverseNet:
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = InverseNet(acts.shape[1], 1000, images.shape[1])
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        a, x = torch.from_numpy(acts), torch.from_numpy(images.astype(np.float32))
        self.input_bound = float(np.abs(acts).max()) if acts.size else 1.0
        for _ in range(self.epochs):
            perm = torch.randperm(len(a), generator=gen)
            for start in range(0, len(a), self.batch_size):
                idx = perm[start:start + self.batch_size]
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(a[idx]), x[idx])
                loss.backward()
                opt.step()
        self.model = model.eval()
        return self.model

    def run(self, oracle: Oracle, aux: np.ndarray) -> InverseNet:
        return self.fit(self.collect(oracle, aux), aux)

    @torch.no_grad()
    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the inverse network before reconstructing")
        if len(acts) == 0:
            return np.zeros((0, self.model.net[-2].out_features), np.float32)
        bound = 2.0 * self.input_bound
        safe = np.clip(np.nan_to_num(acts.astype(np.float32), nan=0.0, posinf=bound,
                                     neginf=-bound), -bound, bound)
        return self.model(torch.from_numpy(safe)).numpy()
