"""``--defence NAME:key=value,...``: parse, validate and combine the owner's defences.

The flag is repeatable; each occurrence names one defence from the registry
(:data:`defences.registry.DEFENCES`). Values are typed by the defence's parameter table, not
guessed, and every mistake is a one-line :class:`ConfigError` that names the flag, the key and
what would be accepted. A flag is parsed once into a :class:`DefenceSpec`, which is what
travels; :func:`build_defences` turns specs into one owner's :class:`Defences`.

    --defence noise:mechanism=laplace,scale=0.5,clip=5
    --defence nopeek:weight=0.5 --defence dropout:rate=0.2,seed=7
    --defence query-budget:limit=1000
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from defences.base import (
    Observation,
    OwnerContext,
    OwnerDefence,
    Param,
    QueryGate,
    ServerCheck,
    Verdict,
    check_stream,
)
from defences.dropout import CutLayerDropout
from defences.noise import CutLayerNoise
from defences.nopeek import NoPeek
from defences.registry import DEFENCES, PARAMETERS, defence_class
from protocol.errors import ConfigError

__all__ = ["DEFENCES", "PARAMETERS", "DefenceSpec", "Defences", "build_defences", "parse_defence"]

_FLAG = "--defence"


@dataclass(frozen=True)
class DefenceSpec:
    """One parsed ``--defence``: its name and typed parameters (only the keys given).

    ``kind`` is the class it was parsed against. It travels with the spec (pickled by
    reference), so a process where that class was never registered can still build it;
    a hand-made spec without one is looked up in the registry when built.
    """

    name: str
    # Not hashed (a dict cannot be); equal specs still hash equal because names are equal.
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    kind: type[OwnerDefence] | None = field(default=None, compare=False, repr=False)

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

    def defence_class(self) -> type[OwnerDefence]:
        """The class this spec builds."""
        return self.kind if self.kind is not None else defence_class(self.name, _FLAG)


def _accepted(cls: type[OwnerDefence]) -> str:
    return ", ".join(sorted(cls.params))


def _typed(name: str, key: str, text: str, param: Param) -> Any:
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
    cls = defence_class(name, _FLAG)
    schema = cls.params
    params: dict[str, Any] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ConfigError(
                f"{_FLAG} {name}: expected key=value, got {item.strip()!r}; "
                f"accepted keys: {_accepted(cls)}"
            )
        if key not in schema:
            raise ConfigError(
                f"{_FLAG} {name}: unknown key {key!r}; accepted keys: {_accepted(cls)}"
            )
        if key in params:
            raise ConfigError(f"{_FLAG} {name}: key {key!r} given twice")
        params[key] = _typed(name, key, value, schema[key])
    for key, param in schema.items():
        if param.required and key not in params:
            raise ConfigError(
                f"{_FLAG} {name}: missing key {key!r}; accepted keys: {_accepted(cls)}"
            )
    return DefenceSpec(name, params, cls)


@dataclass(frozen=True)
class Defences:
    """One owner's defences, composed; each member an :class:`~defences.base.OwnerDefence`.

    ``members`` are in transform order (ascending ``order``, then name). With the built-ins
    that is dropout, then clipping and noise, so what goes on the wire is exactly the noise
    mechanism's output and its epsilon holds whatever dropout did (noise last also keeps the
    noise from being rescaled by the dropout mask).
    """

    members: tuple[OwnerDefence, ...] = ()
    specs: tuple[DefenceSpec, ...] = ()

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """Transform cut activations (N, *cut_shape) before they are sent (training and
        inference): every member's ``transform``, in order."""
        for member in self.members:
            h = member.transform(h)
        return h

    def penalty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Extra owner loss: the members' penalties on inputs and *clean* activations, summed.

        The clean ``h`` (before :meth:`apply`) is the one the owner's weights shape; noise
        would only add variance to the gradient. Zero when no member has a penalty.
        """
        total: torch.Tensor | None = None
        for member in self.members:
            term = member.penalty(x, h)
            if term is not None:
                total = term if total is None else total + term
        return h.new_zeros(()) if total is None else total

    def epsilon(self) -> tuple[float, float] | None:
        """Per-query ``(epsilon, delta)``, or ``None`` when no member guarantees one.

        A member's guarantee holds for whatever reaches it (the noise defence clips first), and
        everything after it is post-processing, so every member's pair holds for what is sent:
        the one with the smallest epsilon is reported.
        """
        pairs = [e for e in (member.epsilon() for member in self.members) if e is not None]
        return min(pairs) if pairs else None

    # --- detectors (defences.base.ServerCheck): the owner checks its server ----------------
    @property
    def checks(self) -> tuple[ServerCheck, ...]:
        return tuple(m for m in self.members if isinstance(m, ServerCheck))

    def bind(self, context: OwnerContext) -> None:
        """Tell every detector about its owner (once, when the owner is built)."""
        others = tuple(m for m in self.members if not isinstance(m, ServerCheck))
        context = replace(context, others=others)
        for check in self.checks:
            check.bind(context)

    def fake_labels(self, step: int, y: torch.Tensor) -> torch.Tensor | None:
        """The first detector's probe labels for this batch, or ``None`` (a regular batch)."""
        for check in self.checks:
            fake = check.fake_labels(step, y)
            if fake is not None:
                return fake
        return None

    def observe(self, obs: Observation) -> Verdict | None:
        """Every detector sees the step; the first verdict, or ``None``."""
        verdict = None
        for check in self.checks:
            found = check.observe_gradient(obs)
            verdict = verdict or found
        return verdict

    def check_state(self) -> dict[str, np.ndarray]:
        """Every member's :meth:`~defences.base.OwnerDefence.state` (a detector's evidence, a
        random defence's generators), keys prefixed with its name (``splitguard.batches``,
        ``noise.generator``): at most one member of each kind, so the keys are unique (and
        a detector's are what they were before other defences had state)."""
        return {f"{member.name}.{key}": value for member in self.members
                for key, value in member.state().items()}

    def load_check_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Put every member back where :meth:`check_state` saw it. A detector always loads (a
        checkpoint without its state is refused); another member only if the checkpoint holds
        state of it (one written before defences had state leaves it as it is)."""
        for member in self.members:
            prefix = f"{member.name}."
            mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if isinstance(member, ServerCheck) or mine:
                member.load_state(mine)

    @property
    def stateful(self) -> bool:
        """Does any member carry state across a rollback (a detector, a generator)?"""
        return bool(self.checks) or any(member.state() for member in self.members)

    def gradient(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """U-shaped: the gradient w.r.t. the middle's output as sent back, after every
        member's ``gradient`` hook (label defences), in order."""
        for member in self.members:
            g = member.gradient(g, y)
        return g

    @property
    def label_defences(self) -> list[str]:
        """Names of the members that perturb the returned gradient (u-shaped only)."""
        return [m.name for m in self.members if m.label_defence]

    def get(self, name: str) -> OwnerDefence | None:
        """The member named ``name``, or ``None``."""
        return next((m for m in self.members if m.name == name), None)

    def __contains__(self, name: object) -> bool:
        return any(m.name == name for m in self.members)

    def __iter__(self) -> Iterator[OwnerDefence]:
        return iter(self.members)

    # The built-ins by name, for callers that adapt to them (the white-box attack reads the
    # noise's clip and mechanism and the dropout rate).
    @property
    def noise(self) -> CutLayerNoise | None:
        member = self.get("noise")
        return member if isinstance(member, CutLayerNoise) else None

    @property
    def dropout(self) -> CutLayerDropout | None:
        member = self.get("dropout")
        return member if isinstance(member, CutLayerDropout) else None

    @property
    def nopeek(self) -> NoPeek | None:
        member = self.get("nopeek")
        return member if isinstance(member, NoPeek) else None

    @property
    def budget(self) -> QueryGate | None:
        """The query gate (``query-budget`` or a registered one), or ``None``: at most one."""
        return next((m for m in self.members if isinstance(m, QueryGate)), None)

    def __bool__(self) -> bool:
        return bool(self.members)

    def describe(self) -> str:
        """One line for logs: the flags in canonical form, and epsilon when one holds."""
        if not self:
            return "no defences"
        text = " ".join(f"{_FLAG} {spec}" for spec in self.specs)
        eps = self.epsilon()
        if eps is not None:
            text += f" (per-query epsilon={eps[0]:.4g}, delta={eps[1]:.3g})"
        return text


def _build_one(spec: DefenceSpec, stream: int | str) -> OwnerDefence:
    cls = spec.defence_class()
    kwargs = dict(spec.params)
    if cls.random:
        kwargs["stream"] = stream
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a hand-built spec with a key the class does not take
        raise ConfigError(f"{_FLAG} {spec.name}: {exc}; accepted keys: {_accepted(cls)}") from None


def build_defences(specs: Iterable[DefenceSpec], stream: int | str = 0) -> Defences:
    """One owner's defences from parsed specs; at most one of each kind, one query gate.

    ``stream`` names the owner (its index, or its name): each random defence draws from a
    generator derived from (its ``seed``, ``stream``), so owners built from the same specs draw
    different noise and dropout masks, and a run stays reproducible per seed. Stream ``0`` (the
    default) draws what a generator seeded with ``seed`` alone draws: a one-owner run's numbers
    are those of the single-stream design.
    """
    stream = check_stream(stream)
    built: list[OwnerDefence] = []
    kept: list[DefenceSpec] = []
    for spec in specs:
        if any(spec.name == s.name for s in kept):
            raise ConfigError(f"{_FLAG} {spec.name} given twice; at most one of each kind")
        member = _build_one(spec, stream)
        if isinstance(member, QueryGate) and any(isinstance(m, QueryGate) for m in built):
            raise ConfigError(f"{_FLAG} {spec.name}: at most one query gate per owner")
        built.append(member)
        kept.append(spec)
    built.sort(key=lambda m: (m.order, m.name))
    return Defences(members=tuple(built), specs=tuple(kept))
