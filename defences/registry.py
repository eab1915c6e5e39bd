"""The defences ``--defence NAME`` can name: the built-ins, plus any registered at run time.

Adding a built-in is one new module with an :class:`~defences.base.OwnerDefence` subclass and
one entry in :data:`_BUILT_IN` below. Code outside the package (a test, a user's plug-in) calls
:func:`register_defence` instead, e.g. as a class decorator, and :func:`unregister_defence` to
take it back out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from defences.base import OwnerDefence, Param
from defences.dropout import CutLayerDropout
from defences.labels import GradientNoise, MarvellNoise, MaxNormNoise
from defences.noise import CutLayerNoise
from defences.nopeek import NoPeek
from defences.query_budget import QueryBudget
from defences.splitguard import SplitGuard
from defences.splitout import SplitOut
from protocol.errors import ConfigError

_BUILT_IN: tuple[type[OwnerDefence], ...] = (CutLayerNoise, NoPeek, CutLayerDropout, QueryBudget,
                                             SplitGuard, SplitOut, MaxNormNoise, GradientNoise,
                                             MarvellNoise)

#: ``--defence`` name -> the class built from its parameters.
DEFENCES: dict[str, type[OwnerDefence]] = {cls.name: cls for cls in _BUILT_IN}

# A name must survive the flag's own syntax (NAME:key=value,...) and the canonical text.
_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_RESERVED_KEYS = ("stream",)  # passed by build_defences, never by the user


class _ParameterTable(Mapping[str, Mapping[str, Param]]):
    """Read-only view: defence name -> its parameter table, always current with the registry."""

    def __getitem__(self, name: str) -> Mapping[str, Param]:
        return DEFENCES[name].params

    def __iter__(self) -> Iterator[str]:
        return iter(DEFENCES)

    def __len__(self) -> int:
        return len(DEFENCES)


#: Accepted keys per defence (``PARAMETERS[name][key]`` is a :class:`~defences.base.Param`).
PARAMETERS: Mapping[str, Mapping[str, Param]] = _ParameterTable()


def _check(cls: type) -> None:
    what = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, OwnerDefence)):
        raise ConfigError(f"defence {what} must subclass defences.base.OwnerDefence")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"defence {what} needs a lower-case name like 'my-noise', got {name!r}")
    params = getattr(cls, "params", None)
    if not isinstance(params, Mapping) or not all(
        isinstance(k, str) and isinstance(p, Param) for k, p in params.items()
    ):
        raise ConfigError(f"defence {name}: params must map each key to a defences.base.Param")
    for key in params:
        if not _NAME.fullmatch(key) or key in _RESERVED_KEYS:
            raise ConfigError(f"defence {name}: parameter name {key!r} is not allowed")
    if cls.random and getattr(params.get("seed"), "kind", None) != "int":
        raise ConfigError(f"defence {name} draws randomness, so it needs an int parameter 'seed'")


def register_defence(cls: type[OwnerDefence]) -> type[OwnerDefence]:
    """Make ``cls`` available to ``--defence cls.name``; returns ``cls`` (a class decorator)."""
    _check(cls)
    if DEFENCES.get(cls.name, cls) is not cls:
        raise ConfigError(f"a defence named {cls.name!r} is already registered")
    DEFENCES[cls.name] = cls
    return cls


def unregister_defence(name: str) -> None:
    """Take a defence added by :func:`register_defence` back out (built-ins stay)."""
    if any(cls.name == name for cls in _BUILT_IN):
        raise ConfigError(f"built-in defence {name!r} cannot be unregistered")
    DEFENCES.pop(name, None)


def defence_class(name: str, flag: str = "--defence") -> type[OwnerDefence]:
    """The registered class for ``name``, or a one-line :class:`ConfigError` with the choices."""
    try:
        return DEFENCES[name]
    except KeyError:
        raise ConfigError(
            f"{flag}: unknown defence {name!r}; choices: {', '.join(sorted(DEFENCES))}"
        ) from None
