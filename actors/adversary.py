"""The black-box inversion attack as a role can run it: query the oracle, invert what it holds.

Any role that holds cut-layer activations of owners' private inputs — the eavesdropper (what it
tapped), the compute server (what it decrypted) — mixes this in and implements
``intercepted_activations``. Querying goes over the wire like any customer's query would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from actors.model import CUT_DIM, INPUT_DIM
from actors.role import check_batch
from attack.inversion import BlackBoxInversion
from protocol.frame import MessageKind


@dataclass(frozen=True)
class Intercepted:
    """Inference activations an adversary holds for one owner, in the owner's sending order."""

    owner: str
    seqs: list[int]
    acts: np.ndarray  # (N, 500) float32


@dataclass(frozen=True)
class Reconstruction:
    owner: str
    images: np.ndarray  # (N, 784) in [0, 1]
    queries_used: int


def stack(owner: str, items: list[tuple[int, np.ndarray]]) -> Intercepted:
    items = sorted(items, key=lambda item: item[0])
    acts = [a.reshape(-1, CUT_DIM) for _, a in items]
    return Intercepted(owner, [s for s, _ in items],
                       np.concatenate(acts) if acts else np.zeros((0, CUT_DIM), np.float32))


class InversionAttacker(ABC):
    """Mixin for a ``Role``: the attack, given what the role intercepted."""

    @abstractmethod
    def intercepted_activations(self, owner: str) -> Intercepted:
        """What this adversary holds of ``owner``'s inference activations."""

    def query_oracle(self, owner: str, x: np.ndarray) -> np.ndarray:
        check_batch(x, INPUT_DIM, "oracle query")
        replies = self.request(owner, [(MessageKind.QUERY, x.astype(np.float32))])
        return self.expect(replies, MessageKind.QUERY_RESULT, owner).tensor

    def attack(self, owners: list[str], aux: np.ndarray, epochs: int,
               seed: int) -> list[Reconstruction]:
        """Train one inverse network through the first owner's oracle; invert every owner."""
        inversion = BlackBoxInversion(epochs=epochs, seed=seed)
        inversion.run(lambda x: self.query_oracle(owners[0], x), aux)
        self.network.flush()
        return [
            Reconstruction(owner, inversion.reconstruct(self.intercepted_activations(owner).acts),
                           inversion.queries_used)
            for owner in owners
        ]
