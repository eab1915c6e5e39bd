"""The SplitNN of the black-box inversion attack (He, Zhang & Lee 2019; OpenMined's demo).

The data owner runs ``OwnerNet`` (Linear 784->500 + ReLU: the cut layer is its output); the
compute server runs ``ServerNet`` (Linear 500->500 + ReLU + Linear 500->10) and holds the labels.
``SplitNN`` composes the two so tests can check that the split computes the unsplit network.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_DIM = 784
CUT_DIM = 500
HIDDEN_DIM = 500
N_CLASSES = 10


class OwnerNet(nn.Module):
    """First part, held by the data owner."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        # ``device`` lets torch.nn.utils.skip_init build it without a random initialisation
        # that would be overwritten at once (owners load handed-over weights every turn).
        self.fc = nn.Linear(INPUT_DIM, CUT_DIM, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class ServerNet(nn.Module):
    """Second part, held by the compute server."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(CUT_DIM, HIDDEN_DIM)
        self.fc2 = nn.Linear(HIDDEN_DIM, N_CLASSES)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(h)))


class SplitNN(nn.Module):
    """Both parts in one process: the reference the split run must equal."""

    def __init__(self, owner: OwnerNet | None = None, server: ServerNet | None = None) -> None:
        super().__init__()
        self.owner = owner or OwnerNet()
        self.server = server or ServerNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.owner(x))


def seeded_parts(seed: int) -> tuple[OwnerNet, ServerNet]:
    """Both parts initialised from one seed, so every protocol starts from the same weights."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        owner, server = OwnerNet(), ServerNet()
    finally:
        torch.random.set_rng_state(gen_state)
    return owner, server
