"""The one interface every rung of the attack ladder implements, and the registry of rungs.

A rung turns intercepted tensors into images. What it needs first is declared when it is
registered (:func:`register_rung`), not discovered from its class:

- black-box rungs (``needs_weights=False``) query an oracle with auxiliary images:
  ``rung.run(oracle, aux)``, or ``rung.fit(rung.collect(oracle, aux), aux)`` with answers
  the caller already holds;
- white-box rungs (``needs_weights=True``) are built with the known module, ``part=``;
  those with ``trains_locally=True`` then ``fit`` on the adversary's own outputs of it
  (:func:`attack.local_oracle.local_answers`), the others need no fitting at all;
- architecture-only rungs (``needs_architecture=True``, UnSplit) are built with
  ``architecture=``, a factory of modules shaped like the first part whose weights they must
  redraw: no oracle, no auxiliary data, no weights.

Then ``rung.reconstruct(acts)`` maps (N, *cut_shape) activations (or (N, classes) outputs at
the "output" intercept point) to float32 images (N, C, H, W) in [0, 1].

Shapes: the cut shape always comes from the activations. The image shape (C, H, W) is the
``input_shape`` keyword; a black-box rung may leave it ``None`` and takes it from the auxiliary
images in ``fit`` (a given one must match them), a white-box rung needs it up front because it
never sees an image.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np

from protocol.errors import ConfigError, ShapeError

#: The oracle: images (B, C, H, W) in [0, 1] -> what the adversary gets back, (B, *cut_shape).
Oracle = Callable[[np.ndarray], np.ndarray]

Intercept = Literal["cut", "output"]
INTERCEPTS: tuple[str, ...] = ("cut", "output")


class Rung(ABC):
    """A model-inversion attack: ``fit``/``run`` (if it trains), then ``reconstruct``.

    Subclasses are usually dataclasses; their init fields are the rung's parameters
    (:func:`attack.ladder.attack_params`) except the fitted state listed in ``STATE``.
    """

    #: Attributes that are results of fitting, not settings a caller may pass.
    STATE: frozenset[str] = frozenset({"model", "queries_used", "input_bound"})
    #: Its fit gives the same bits on any number of torch threads, so a fit may take a
    #: node's idle cores (``actors.fit_cores.fit_threads``); tests/test_fit_threads.py checks
    #: every rung that says so. The conv decoder's does not (its convolutions' gradients add
    #: up in another order on two threads), so it keeps one.
    THREAD_INVARIANT: ClassVar[bool] = False

    #: Images (N, C, H, W) this rung emits: set at construction or by ``fit``.
    input_shape: tuple[int, int, int] | None = None
    #: How many oracle queries fitting spent (0 for white-box rungs).
    queries_used: int = 0
    query_batch: int = 500

    @classmethod
    def knowing(cls, defences: Sequence[str], **params: Any) -> Rung:
        """This rung as an adversary who knows the owner's defence specs (not their draws).

        The default ignores them: a black-box rung trains on the defended oracle's answers and
        so learns the noise or dropout it will face. White-box rungs override this.
        """
        del defences
        return cls(**params)

    def collect(self, oracle: Oracle, aux: np.ndarray) -> np.ndarray:
        """Ask the oracle for its answer on every auxiliary image: (N, *answer_shape) float32."""
        aux = check_images(aux, "auxiliary images")
        outs = [oracle(aux[i:i + self.query_batch]) for i in range(0, len(aux), self.query_batch)]
        self.queries_used += len(aux)
        if not outs:
            raise ShapeError("no auxiliary images to query the oracle with")
        return np.concatenate(outs).astype(np.float32)

    def fit(self, acts: np.ndarray, images: np.ndarray) -> object:
        """Train on (activation, image) pairs; rungs that do not train keep this no-op."""
        del acts, images
        return None

    def run(self, oracle: Oracle, aux: np.ndarray) -> object:
        """Query the oracle with ``aux`` and fit on its answers."""
        return self.fit(self.collect(oracle, aux), aux)

    @abstractmethod
    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        """(N, *cut_shape) activations -> float32 images (N, C, H, W) in [0, 1]."""

    def adopt_shape(self, images: np.ndarray) -> tuple[int, int, int]:
        """Check ``images`` against ``input_shape`` (taking it from them if unset)."""
        shape = tuple(int(s) for s in images.shape[1:])
        if self.input_shape is not None and tuple(self.input_shape) != shape:
            raise ShapeError(f"{type(self).__name__} was built for images {tuple(self.input_shape)}"
                             f", got auxiliary images {shape}")
        self.input_shape = shape  # type: ignore[assignment]
        return shape  # type: ignore[return-value]

    def empty(self) -> np.ndarray:
        """The reconstruction of no activations: (0, C, H, W)."""
        if self.input_shape is None:
            raise RuntimeError(f"{type(self).__name__} does not know its image shape yet: fit it")
        return np.zeros((0, *self.input_shape), np.float32)


def check_images(x: np.ndarray, what: str = "images") -> np.ndarray:
    """``x`` as float32 (N, C, H, W), or ShapeError."""
    arr = np.asarray(x)
    if arr.ndim != 4 or min(arr.shape[1:], default=0) < 1:
        raise ShapeError(f"{what} must be (N, C, H, W), got {arr.shape}")
    return arr.astype(np.float32, copy=False)


def check_input_shape(shape: Sequence[int] | None, who: str) -> tuple[int, int, int] | None:
    """``shape`` as a (C, H, W) tuple of positive ints (None stays None), or ConfigError."""
    if shape is None:
        return None
    out = tuple(int(s) for s in shape)
    if len(out) != 3 or min(out) < 1:
        raise ConfigError(f"{who} input_shape must be (C, H, W) with positive sizes, got {shape}")
    return out  # type: ignore[return-value]


# --- the registry ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RungInfo:
    """What the lab must know about a rung before it builds one."""

    name: str
    cls: type[Rung]
    intercept: Intercept = "cut"
    needs_weights: bool = False
    trains_locally: bool = False
    needs_architecture: bool = False


_RUNGS: dict[str, RungInfo] = {}
_CLASSES: dict[str, type[Rung]] = {}
#: A live, read-only view: name -> class of every registered rung, in registration order.
RUNG_CLASSES = MappingProxyType(_CLASSES)


def register_rung(name: str, cls: type[Rung], *, intercept: Intercept = "cut",
                  needs_weights: bool = False, trains_locally: bool = False,
                  needs_architecture: bool = False, replace: bool = False) -> RungInfo:
    """Make rung ``name`` available to :func:`attack.ladder.make_attack` and the CLI.

    ``trains_locally`` only makes sense with ``needs_weights``: the rung fits a decoder on its
    own run of the known first part. ``needs_architecture`` is the other access: the layers
    without their weights (it excludes ``needs_weights``). Registering a taken name raises
    unless ``replace``.
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"a rung needs a non-empty name, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Rung)):
        raise ConfigError(f"rung {name!r} must be a subclass of attack.base.Rung, got {cls!r}")
    if intercept not in INTERCEPTS:
        raise ConfigError(f"rung {name!r}: intercept must be one of {', '.join(INTERCEPTS)}, "
                          f"got {intercept!r}")
    if trains_locally and not needs_weights:
        raise ConfigError(f"rung {name!r}: trains_locally needs needs_weights=True")
    if needs_architecture and needs_weights:
        raise ConfigError(f"rung {name!r}: needs_architecture is the weight-free access, it "
                          "cannot be combined with needs_weights")
    if name in _RUNGS and not replace:
        raise ConfigError(f"attack rung {name!r} is already registered")
    info = RungInfo(name, cls, intercept, needs_weights, trains_locally, needs_architecture)
    _RUNGS[name] = info
    _CLASSES[name] = cls
    return info


def unregister_rung(name: str) -> None:
    """Remove rung ``name`` (a test's toy rung, say); unknown names raise ConfigError."""
    rung_info(name)
    del _RUNGS[name]
    del _CLASSES[name]


def rung_info(name: str) -> RungInfo:
    if name not in _RUNGS:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(_RUNGS)}")
    return _RUNGS[name]


def rung_params(cls: type[Rung]) -> tuple[str, ...]:
    """The keyword parameters ``cls`` accepts: init fields of a dataclass, else __init__'s."""
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        sig = inspect.signature(cls.__init__)
        names = [p.name for p in list(sig.parameters.values())[1:]
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return tuple(n for n in names if n not in cls.STATE)
