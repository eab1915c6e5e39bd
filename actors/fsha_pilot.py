"""Which FSHA a malicious server runs (``--fsha-pilot``), as one typed value parsed once.

Kept free of torch so the command line can name the choices before its heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import ConfigError

#: Where the pilot's weights start. "initial": the first part's initial weights, which every
#: role of the lab holds (they come with the network descriptor, as when a server hands the
#: client its part of the model); "fresh": weights of the attacker's own, the paper's setting.
#: The pilot's layers are the owner part's either way. On the lab's default network the
#: hijack is far faster from the initial weights (see the README's Results).
PILOT_STARTS = ("initial", "fresh")


@dataclass(frozen=True)
class PilotChoice:
    """Which FSHA the malicious server runs (``--fsha-pilot``): where its pilot encoder starts
    and whether it trains. Parsed once from the flag; the lab and the benches read this."""

    name: str
    start: str  # one of PILOT_STARTS
    trained: bool  # trained with the decoder (the authors' algorithm) or held still
    about: str

    @property
    def settings(self) -> dict[str, Any]:
        """What this choice changes in LAB_SETTINGS (None: the pilot trains at ``lr``)."""
        return {"pilot_lr": None, "warmup_pilot_lr": None} if self.trained else {}

    @property
    def method(self) -> str:
        """The attack's name in results: ``fsha``, or ``fsha/NAME`` for the authors' pilots."""
        return "fsha" if self.name == DEFAULT_PILOT else f"fsha/{self.name}"


DEFAULT_PILOT = "held"
PILOTS: dict[str, PilotChoice] = {c.name: c for c in (
    PilotChoice("held", "initial", False,
                "the first part's initial weights, held still (the lab's default, strongest "
                "on dense first parts)"),
    PilotChoice("trained", "initial", True,
                "the first part's initial weights, trained with the decoder (the authors' "
                "algorithm)"),
    PilotChoice("own", "fresh", True,
                "weights of the attacker's own, trained with the decoder (the paper exactly)"),
)}


def parse_pilot(text: str | PilotChoice) -> PilotChoice:
    if isinstance(text, PilotChoice):
        return text
    try:
        return PILOTS[text]
    except KeyError:
        raise ConfigError(f"--fsha-pilot must be one of {', '.join(PILOTS)}, "
                          f"got {text!r}") from None
