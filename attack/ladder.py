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
}

#: Attacks that need the first part's weights instead of an oracle and auxiliary data.
WHITE_BOX = frozenset({"whitebox"})

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


def make_attack(name: str, **params: Any) -> Attack:
    """Build attack ``name`` with ``params``; unknown names or parameters raise ConfigError."""
    cls = _lookup(name)
    allowed = attack_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"attack {name!r} takes no parameter {', '.join(unknown)}: "
            f"choose from {', '.join(allowed)}"
        )
    return cls(**params)


def _lookup(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name]
