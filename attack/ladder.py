"""The attack ladder (He, Zhang & Lee, ACSAC 2019): one registry, from weakest access upwards.

Every attack turns intercepted activations (N, k) into images (N, 784) in [0, 1] with
``attack.reconstruct(acts)``; they differ in what the adversary needs first:

``mlp``       black-box, the MLP inverse network (:class:`attack.inversion.BlackBoxInversion`).
``conv``      black-box, the convolutional decoder (:class:`attack.conv.ConvInversion`).
              Both need query access and auxiliary images:
              ``attack.run(oracle, aux)`` (or ``attack.fit(attack.collect(oracle, aux), aux)``)
              before ``reconstruct``.
``whitebox``  white-box rMLE (:class:`attack.whitebox.WhiteBoxInversion`): needs the weights,
              i.e. ``make_attack("whitebox", part=module)``; no oracle, no auxiliary data,
              no training.
``whitebox-conv``  the convolutional decoder trained on the adversary's *own* outputs of the
              known first part (weights, defences as published, its own noise draws): the
              black-box decoder without queries, so a query budget does not bind it
              (:func:`attack.local_oracle.local_answers`).
``output``    black-box, the MLP inverse network at the *output* intercept point: it inverts
              the softmax the server answers the owner's private inference with, trained
              through the owner's public prediction API (the whole model) instead of its
              first-part oracle.

The intercept point is just ``k``: 500 at the cut layer, 10 at the output (logits or softmax).
For the output point the white-box ``part`` must be the whole network (owner then server).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from attack.conv import ConvInversion
from attack.inversion import BlackBoxInversion
from attack.whitebox import WhiteBoxInversion
from protocol.errors import ConfigError

Attack = BlackBoxInversion | WhiteBoxInversion

ATTACKS: dict[str, type[Attack]] = {
    "mlp": BlackBoxInversion,
    "conv": ConvInversion,
    "whitebox": WhiteBoxInversion,
    "whitebox-conv": ConvInversion,
    "output": BlackBoxInversion,
}

#: Attacks at the model's output (softmax) instead of the cut layer.
OUTPUT_POINT = frozenset({"output"})

#: Attacks that need the first part's weights instead of an oracle.
WHITE_BOX = frozenset({"whitebox", "whitebox-conv"})

#: White-box attacks that train a decoder on auxiliary data run through the known weights.
TRAINS_LOCALLY = frozenset({"whitebox-conv"})

#: Dataclass fields that are results of fitting, not settings a caller may pass.
_STATE = frozenset({"model", "queries_used", "input_bound"})


def attack_params(name: str) -> tuple[str, ...]:
    """The keyword parameters :func:`make_attack` accepts for ``name``."""
    cls = _lookup(name)
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _STATE)


def needs_weights(name: str) -> bool:
    """True for white-box attacks (pass ``part=``), False for black-box ones (oracle + aux)."""
    _lookup(name)
    return name in WHITE_BOX


def trains_locally(name: str) -> bool:
    """True for white-box rungs that fit a decoder on the adversary's own first-part outputs."""
    _lookup(name)
    return name in TRAINS_LOCALLY


def intercept_point(name: str) -> str:
    """Where attack ``name`` intercepts: "cut" (the cut layer) or "output" (the softmax)."""
    _lookup(name)
    return "output" if name in OUTPUT_POINT else "cut"


def make_attack(name: str, **params: Any) -> Attack:
    """Build attack ``name`` with ``params``; unknown names or parameters raise ConfigError."""
    return _checked(name, params)(**params)


def _checked(name: str, params: dict[str, Any]) -> type[Attack]:
    """The class of attack ``name``, once every key of ``params`` is one it accepts."""
    cls = _lookup(name)
    allowed = attack_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"attack {name!r} takes no parameter {', '.join(unknown)}: "
            f"choose from {', '.join(allowed)}"
        )
    return cls


def make_adapted_attack(name: str, defences: tuple[str, ...] | list[str] = (),
                        **params: Any) -> Attack:
    """Attack ``name`` as an adversary who knows the owner's defences (not their random draws).

    The black-box rungs need nothing: they train on the defended oracle's answers, so they
    learn the noise and dropout they will face. The white-box rung models them explicitly.
    """
    if needs_weights(name) and not trains_locally(name):
        _checked(name, params)  # the same checks on the parameters as any attack
        return WhiteBoxInversion.knowing(tuple(defences), **params)
    return make_attack(name, **params)


def _lookup(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name]
