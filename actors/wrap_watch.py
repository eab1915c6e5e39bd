"""The secret-shared owner's check for fixed-point truncation wraps, and the run's report.

The servers truncate every product locally (protocol.ring.truncate, SecureML's rule). That
fails now and then, at random: with probability about |x_real| * 2^(2f - 64) per element of a
product, the result comes out off by ``ring.wrap_error(f)`` (2^32 at f = 16). Nobody but the
owner ever sees a revealed value, so the owner is the one who can notice: a logit or a
cut-layer gradient beyond ``ring.wrap_suspect_bound(f)`` has no explanation but a wrap in the
shared second part, which is corrupt from then on (its weights or momentum carry the error).
Values that grow (a malicious server 0's offsets push the owner's activations from ~1 to
~10^3 within 100 steps) make wraps likelier, and past 2^(63 - 2f) products overflow outright;
either way the same check sees it. The run goes on (what an attacker rebuilds does not depend
on the servers' model), but ``results.json`` says so (``mpc.fixed_point``) and the lab prints
one line, instead of a target accuracy at chance that nobody can explain.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import ring


@dataclass
class WrapWatch:
    """One owner's record of revealed values beyond the bound."""

    frac_bits: int
    flagged: int = 0  # revealed arrays (logits or cut-layer gradients) beyond the bound
    first: dict[str, Any] | None = None  # the first one: step (None: inference), what, peak

    @property
    def bound(self) -> float:
        return ring.wrap_suspect_bound(self.frac_bits)

    def check(self, values: np.ndarray, what: str, step: int | None) -> bool:
        """Record ``values`` if they are beyond the bound; True if they are."""
        peak = float(np.abs(values).max()) if np.size(values) else 0.0
        if peak < self.bound:
            return False
        self.flagged += 1
        if self.first is None:
            self.first = {"step": step, "what": what, "max_abs": peak}
        return True

    def report(self, owner: str) -> dict[str, Any]:
        return {"owner": owner, "flagged": self.flagged, "first": self.first}


def merge(frac_bits: int, owners: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``results.json`` ``mpc.fixed_point``: the bound, the wrap's size, and per owner what
    was flagged; ``wrap_suspected`` is the one flag to read."""
    flagged = {o: {"flagged": r["flagged"], "first": r["first"]} for o, r in owners.items()
               if r["flagged"]}
    return {"wrap_suspected": bool(flagged), "bound": ring.wrap_suspect_bound(frac_bits),
            "wrap_error": ring.wrap_error(frac_bits), "frac_bits": frac_bits,
            "owners": flagged}


def warn(report: dict[str, Any]) -> None:
    """One line per owner that saw a wrap's trace (stderr, as the detectors' verdicts)."""
    for owner, r in report["owners"].items():
        first = r["first"]
        when = "in inference" if first["step"] is None else f"at training step {first['step']}"
        sys.stderr.write(
            f"{owner}: revealed {first['what']} reached {first['max_abs']:.3g} {when} (bound "
            f"{report['bound']:g}): a fixed-point truncation wrap in the shared server part "
            f"(each adds {report['wrap_error']:.3g}; they grow likelier as values grow, and "
            f"values this large overflow products too); the shared second part is corrupt "
            f"from there and the target accuracy is not meaningful ({r['flagged']} revealed "
            f"arrays flagged)\n")
