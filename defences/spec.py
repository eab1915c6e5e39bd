"""``--defence NAME:key=value,...``: parse, validate and combine the owner's defences.

The flag is repeatable; each occurrence names one defence from :data:`DEFENCES` (a registry
mapping names to classes, so adding a defence means one entry here and one in
:data:`PARAMETERS`). Values are typed by the parameter table, not guessed, and every mistake
is a one-line :class:`ConfigError` that names the flag, the key and what would be accepted.

    --defence noise:mechanism=laplace,scale=0.5,clip=5
    --defence nopeek:weight=0.5 --defence dropout:rate=0.2,seed=7
    --defence query-budget:limit=1000
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from defences.dropout import CutLayerDropout
from defences.noise import MECHANISMS, CutLayerNoise
from defences.nopeek import NoPeek
from defences.query_budget import QueryBudget
from protocol.errors import ConfigError

_FLAG = "--defence"
#: Registry names that are not Python identifiers -> the ``Defences`` field that holds them.
_FIELD = {"query-budget": "budget"}

#: Registry: ``--defence`` name -> class built from its parameters.
DEFENCES: dict[str, type] = {
    "noise": CutLayerNoise,
    "nopeek": NoPeek,
    "dropout": CutLayerDropout,
    "query-budget": QueryBudget,
}


@dataclass(frozen=True)
class _Param:
    """How one ``key=value`` is typed; ranges beyond "finite, >= 0" are the class's to check."""

    kind: str  # "float", "int" or "choice"
    required: bool = False
    choices: tuple[str, ...] = ()


#: Accepted keys per defence. Optional keys take the class's defaults when absent.
PARAMETERS: dict[str, dict[str, _Param]] = {
    "noise": {
        "mechanism": _Param("choice", required=True, choices=MECHANISMS),
        "scale": _Param("float", required=True),
        "clip": _Param("float", required=True),
        "delta": _Param("float"),
        "seed": _Param("int"),
    },
    "nopeek": {"weight": _Param("float", required=True)},
    "dropout": {"rate": _Param("float", required=True), "seed": _Param("int")},
    "query-budget": {"limit": _Param("int", required=True)},
}


@dataclass(frozen=True)
class DefenceSpec:
    """One parsed ``--defence``: its name and typed parameters (only the keys given)."""

    name: str
    # Not hashed (a dict cannot be); equal specs still hash equal because names are equal.
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        """The canonical flag text; ``parse_defence(str(spec)) == spec``."""
        if not self.params:
            return self.name
        # repr keeps floats exact (0.1 stays 0.1, 1e-05 parses back to the same double).
        items = ",".join(
            f"{key}={value if isinstance(value, str) else repr(value)}"
            for key, value in self.params.items()
        )
        return f"{self.name}:{items}"


def _accepted(name: str) -> str:
    return ", ".join(sorted(PARAMETERS[name]))


def _typed(name: str, key: str, text: str, param: _Param) -> Any:
    where = f"{_FLAG} {name}: {key}"
    if param.kind == "choice":
        if text not in param.choices:
            raise ConfigError(f"{where} must be one of {', '.join(param.choices)}, got {text!r}")
        return text
    if param.kind == "int":
        try:
            value: Any = int(text)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {text!r}") from None
    else:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {text!r}")
    if value < 0:
        raise ConfigError(f"{where} must not be negative, got {text!r}")
    return value


def parse_defence(text: str) -> DefenceSpec:
    """Parse one ``--defence`` value, e.g. ``"noise:mechanism=laplace,scale=0.5,clip=5"``."""
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in DEFENCES:
        raise ConfigError(
            f"{_FLAG}: unknown defence {name!r}; choices: {', '.join(sorted(DEFENCES))}"
        )
    schema = PARAMETERS[name]
    params: dict[str, Any] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ConfigError(
                f"{_FLAG} {name}: expected key=value, got {item.strip()!r}; "
                f"accepted keys: {_accepted(name)}"
            )
        if key not in schema:
            raise ConfigError(
                f"{_FLAG} {name}: unknown key {key!r}; accepted keys: {_accepted(name)}"
            )
        if key in params:
            raise ConfigError(f"{_FLAG} {name}: key {key!r} given twice")
        params[key] = _typed(name, key, value, schema[key])
    for key, param in schema.items():
        if param.required and key not in params:
            raise ConfigError(
                f"{_FLAG} {name}: missing key {key!r}; accepted keys: {_accepted(name)}"
            )
    return DefenceSpec(name, params)


@dataclass
class Defences:
    """The owner's combined defences; any of them may be absent (``None``).

    Order on the way out is dropout, then clipping and noise, so what goes on the wire is
    exactly the noise mechanism's output and its epsilon holds whatever dropout did (noise last
    also keeps the noise from being rescaled by the dropout mask).
    """

    noise: CutLayerNoise | None = None
    nopeek: NoPeek | None = None
    dropout: CutLayerDropout | None = None
    budget: QueryBudget | None = None
    specs: tuple[DefenceSpec, ...] = ()

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """Transform cut-layer activations before they are sent (training and inference)."""
        if self.dropout is not None:
            h = self.dropout(h)
        if self.noise is not None:
            h = self.noise(h)
        return h

    def penalty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Extra owner loss: NoPeek on inputs and the *clean* activations, else zero.

        The clean ``h`` (before :meth:`apply`) is the one the owner's weights shape; noise
        would only add variance to the gradient.
        """
        if self.nopeek is None:
            return h.new_zeros(())
        return self.nopeek.loss(x, h)

    def epsilon(self) -> tuple[float, float] | None:
        """Per-query ``(epsilon, delta)`` from the noise defence, or ``None`` without one."""
        return None if self.noise is None else self.noise.epsilon()

    def __bool__(self) -> bool:
        return any(d is not None for d in (self.noise, self.nopeek, self.dropout, self.budget))

    def describe(self) -> str:
        """One line for logs: the flags in canonical form, and epsilon when noise is on."""
        if not self:
            return "no defences"
        text = " ".join(f"{_FLAG} {spec}" for spec in self.specs)
        eps = self.epsilon()
        if eps is not None:
            text += f" (per-query epsilon={eps[0]:.4g}, delta={eps[1]:.3g})"
        return text


def build_defences(specs: Iterable[DefenceSpec]) -> Defences:
    """Instantiate parsed specs; at most one of each kind."""
    built: dict[str, Any] = {}
    kept: list[DefenceSpec] = []
    for spec in specs:
        if spec.name not in DEFENCES:
            raise ConfigError(
                f"{_FLAG}: unknown defence {spec.name!r}; choices: {', '.join(sorted(DEFENCES))}"
            )
        if _FIELD.get(spec.name, spec.name) in built:
            raise ConfigError(f"{_FLAG} {spec.name} given twice; at most one of each kind")
        try:
            built[_FIELD.get(spec.name, spec.name)] = DEFENCES[spec.name](**spec.params)
        except TypeError as exc:  # a hand-built spec with a key the class does not take
            raise ConfigError(
                f"{_FLAG} {spec.name}: {exc}; accepted keys: {_accepted(spec.name)}"
            ) from None
        kept.append(spec)
    return Defences(specs=tuple(kept), **built)
