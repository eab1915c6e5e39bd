"""The attack ladder (He, Zhang & Lee, ACSAC 2019): one registry, from weakest access upwards.

Every rung implements :class:`attack.base.Rung`: it turns intercepted activations
(N, *cut_shape) into images (N, C, H, W) in [0, 1] with ``attack.reconstruct(acts)``; they
differ in what the adversary needs first (declared in the registry, :mod:`attack.base`):

``mlp``       black-box, the MLP inverse network (:class:`attack.inversion.BlackBoxInversion`).
``conv``      black-box, the convolutional decoder (:class:`attack.conv.ConvInversion`); for a
              spatial cut (N, C', H', W') it decodes the feature map directly.
              Both need query access and auxiliary images:
              ``attack.run(oracle, aux)`` (or ``attack.fit(attack.collect(oracle, aux), aux)``)
              before ``reconstruct``; they take the image shape from the auxiliary images.
``whitebox``  white-box rMLE (:class:`attack.whitebox.WhiteBoxInversion`): needs the weights
              and the image shape, ``make_attack("whitebox", part=module,
              input_shape=(C, H, W))``; no oracle, no auxiliary data, no training.
``whitebox-conv``  the convolutional decoder trained on the adversary's *own* outputs of the
              known first part (weights, defences as published, its own noise draws): the
              black-box decoder without queries, so a query budget does not bind it
              (:func:`attack.local_oracle.local_answers`).
``unsplit``   UnSplit (:class:`attack.unsplit.UnSplitInversion`, Erdoğan et al. 2022): only the
              intercepted activations and the first part's *architecture*,
              ``make_attack("unsplit", architecture=factory, input_shape=(C, H, W))``; no
              oracle, no auxiliary data, no weights (it redraws whatever the factory's modules
              carry). It fits a clone of the first part and the inputs together.
``output``    black-box, the MLP inverse network at the *output* intercept point: it inverts
              the (N, classes) softmax the server answers the owner's private inference with,
              trained through the owner's public prediction API (the whole model) instead of
              its first-part oracle. For the output point the white-box ``part`` must be the
              whole network (owner then server).

A new rung is one module with a :class:`attack.base.Rung` subclass plus one
:func:`register_rung` line (here for built-ins, or anywhere before the lab runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attack.base import (
    RUNG_CLASSES,
    Rung,
    register_rung,
    rung_info,
    rung_params,
    unregister_rung,
)
from attack.conv import ConvInversion
from attack.inversion import BlackBoxInversion
from attack.unsplit import UnSplitInversion
from attack.whitebox import WhiteBoxInversion
from protocol.errors import ConfigError

__all__ = ["ATTACKS", "Attack", "attack_params", "intercept_point", "make_adapted_attack",
           "make_attack", "needs_architecture", "needs_weights", "register_rung",
           "trains_locally", "unregister_rung"]

Attack = Rung

# The built-in rungs, weakest access first.
register_rung("mlp", BlackBoxInversion)
register_rung("conv", ConvInversion)
register_rung("whitebox", WhiteBoxInversion, needs_weights=True)
register_rung("whitebox-conv", ConvInversion, needs_weights=True, trains_locally=True)
register_rung("output", BlackBoxInversion, intercept="output")
# Added later, so registered last (earlier names keep their order): UnSplit has the least
# access of all, the layers of the first part and nothing else.
register_rung("unsplit", UnSplitInversion, needs_architecture=True)

#: name -> rung class of every registered rung (a live view: later registrations show up).
ATTACKS = RUNG_CLASSES


def attack_params(name: str) -> tuple[str, ...]:
    """The keyword parameters :func:`make_attack` accepts for ``name``."""
    return rung_params(rung_info(name).cls)


def needs_weights(name: str) -> bool:
    """True for white-box attacks (pass ``part=``), False for black-box ones (oracle + aux)."""
    return rung_info(name).needs_weights


def needs_architecture(name: str) -> bool:
    """True for rungs built with ``architecture=`` (the first part's layers, not its weights)
    that need neither an oracle nor auxiliary data (UnSplit)."""
    return rung_info(name).needs_architecture


def trains_locally(name: str) -> bool:
    """True for white-box rungs that fit a decoder on the adversary's own first-part outputs."""
    return rung_info(name).trains_locally


def intercept_point(name: str) -> str:
    """Where attack ``name`` intercepts: "cut" (the cut layer) or "output" (the softmax)."""
    return rung_info(name).intercept


def make_attack(name: str, **params: Any) -> Rung:
    """Build attack ``name`` with ``params``; unknown names or parameters raise ConfigError."""
    return _checked(name, params)(**params)


def _checked(name: str, params: dict[str, Any]) -> type[Rung]:
    """The class of attack ``name``, once every key of ``params`` is one it accepts."""
    cls = rung_info(name).cls
    allowed = attack_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"attack {name!r} takes no parameter {', '.join(unknown)}: "
            f"choose from {', '.join(allowed)}"
        )
    return cls


def make_adapted_attack(name: str, defences: Sequence[str] = (), **params: Any) -> Rung:
    """Attack ``name`` as an adversary who knows the owner's defences (not their random draws).

    Each rung decides what knowing them changes (:meth:`attack.base.Rung.knowing`): the
    black-box rungs nothing, they train on the defended oracle's answers; the white-box rMLE
    models them explicitly; ``whitebox-conv`` meets them in its own run of the defended part.
    """
    return _checked(name, params).knowing(tuple(defences), **params)
