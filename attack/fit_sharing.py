"""One fit for adversaries that would train on the same bytes.

Fitting an inverse network is a deterministic function of the rung, its settings (seed
included) and the (activation, image) pairs it trains on. In a run of every protocol several
adversaries train on identical pairs: under plaintext the eavesdropper and the curious server
query the same oracle with the same auxiliary images, and the encrypted run trains the same
first part bit for bit, so its adversaries' oracle answers are the plaintext run's. Each of
them fitting its own copy spends minutes of CPU on numbers that are equal to the last bit.

:func:`fit_digest` names a fit by everything that goes into it; :class:`FitLedger` keeps, per
digest, the fitted rung and who fitted it. An adversary still makes every query of its own
(budgets, wire counts and captures are unchanged) and reconstructs from what it holds; only the
training step is shared, and only between byte-identical inputs. Ray-free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attack.base import Rung, rung_params

__all__ = ["FitLedger", "fit_digest"]


def _settings(rung: Rung) -> str:
    """The rung's class and init settings (not its fitted state), as stable text."""
    cls = type(rung)
    names = rung_params(cls)
    values = {n: getattr(rung, n, None) for n in names}
    return f"{cls.__module__}.{cls.__qualname__}:{sorted(values.items())!r}"


def _absorb(h: Any, array: np.ndarray) -> None:
    arr = np.ascontiguousarray(array)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))


def fit_digest(rung: Rung, acts: np.ndarray, images: np.ndarray) -> str:
    """Hex digest of the fit ``rung.fit(acts, images)`` would run: equal digests, equal fits."""
    h = hashlib.blake2b(digest_size=20)
    h.update(_settings(rung).encode())
    _absorb(h, acts)
    _absorb(h, images)
    return h.hexdigest()


@dataclass
class FitLedger:
    """Fitted rungs by digest, with who fitted each (kept for one lab run, all protocols)."""

    #: False: every adversary fits its own (to check that sharing changes nothing).
    share: bool = True
    fits: dict[str, Rung] = field(default_factory=dict)
    fitted_by: dict[str, str] = field(default_factory=dict)

    def key(self, digest: str | None, who: str) -> str | None:
        """The ledger's key for ``who``'s fit: its digest, or one of its own if not sharing."""
        if digest is None or self.share:
            return digest
        return f"{digest}/{who}"

    def __contains__(self, digest: object) -> bool:
        return digest in self.fits

    def add(self, digest: str, rung: Rung, who: str) -> None:
        self.fits[digest] = rung
        self.fitted_by.setdefault(digest, who)

    def get(self, digest: str | None) -> Rung | None:
        return None if digest is None else self.fits.get(digest)

    def report(self, digest: str | None, who: str) -> dict[str, Any] | None:
        """results.json's ``fit``: the digest and who ran it (``who`` itself, or another)."""
        if digest is None:
            return None
        by = self.fitted_by.get(digest, who)
        return {"digest": digest.split("/")[0], "fitted_by": by, "shared": by != who}

