"""Cut-layer noise: clip each example's activation, then add Laplace or Gaussian noise.

The data owner applies this to the cut-layer activations ``h`` (N, *cut_shape), e.g. (N, 500)
after a linear layer or (N, 8, 24, 24) after a convolution, before they go on the wire, so the
server (and anyone reading the wire) only ever sees a noised, norm-bounded copy.

Privacy accounting is per query and per input example. Clipping bounds each example's whole
activation (all its non-batch elements, flattened) to norm ``clip`` (L1 for Laplace, L2 for
Gaussian), so replacing one input changes its activation by at most ``sensitivity = 2 * clip``
in that norm and leaves the other examples alone:

* Laplace (scale b per element): pure DP with ``epsilon = sensitivity / b``, ``delta = 0``.
* Gaussian (sigma per element): ``epsilon`` from the analytic Gaussian mechanism of
  Balle & Wang (ICML 2018, Theorem 8), which is exact and valid for every epsilon. The classic
  Dwork & Roth bound (Theorem A.1), ``sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon``,
  is offered for comparison only: it is proven only for epsilon < 1 and is loose even there.

The guarantee does not depend on the cut's shape: it holds for the flattened activation.

Caveats worth knowing in a lab: the guarantee is per query (repeated queries compose), the
default seed makes noise reproducible rather than secret, and floating-point noise sampling is
known to leak in theory (Mironov, CCS 2012); none of that is mitigated here.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from defences.base import OwnerDefence, Param, check_seed, defence_generator
from protocol.errors import ConfigError, ShapeError

MECHANISMS = ("laplace", "gaussian")

_FLAG = "--defence noise"


def laplace_epsilon(scale: float, sensitivity: float) -> float:
    """Epsilon of the Laplace mechanism with per-coordinate scale ``scale`` (delta = 0)."""
    return sensitivity / scale


def classic_gaussian_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    """Epsilon from the classic bound ``sigma = sqrt(2 ln(1.25/delta)) * sensitivity / eps``.

    Dwork & Roth prove this only for epsilon < 1; a larger result is not a valid guarantee
    (use :func:`analytic_gaussian_epsilon`, which is).
    """
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / sigma


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """The smallest delta for which the Gaussian mechanism is (epsilon, delta)-DP.

    Balle & Wang 2018, Theorem 8: ``Phi(D/(2s) - e*s/D) - exp(e) * Phi(-D/(2s) - e*s/D)``.
    The second term is computed in log space so a large epsilon neither overflows ``exp`` nor
    underflows ``Phi`` before the two are multiplied.
    """
    from scipy import special  # here, not at import: every role process imports defences

    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = float(special.ndtr(a - b))
    second = math.exp(epsilon + float(special.log_ndtr(-a - b)))
    return first - second


def analytic_gaussian_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    """Smallest epsilon with ``gaussian_delta(epsilon) <= delta`` (bisection; tight).

    ``gaussian_delta`` is decreasing in epsilon (it is a hockey-stick divergence), so doubling
    finds a bracket and bisection closes it. The upper end is returned: it always satisfies the
    condition, so rounding errs on the side of a larger (safer) epsilon.
    """
    if gaussian_delta(0.0, sigma, sensitivity) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, sigma, sensitivity) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:  # only reachable with a degenerate sigma; refuse rather than loop
            raise ConfigError(f"{_FLAG}: scale {sigma} is too small to give a finite epsilon")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, sigma, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def _positive(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{_FLAG}: {key} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{_FLAG}: {key} must be a finite number > 0, got {value}")
    return float(value)


def clip_rows(h: torch.Tensor, clip: float, norm: int) -> torch.Tensor:
    """Scale each example ``h[i]`` down (never up) so its L``norm`` norm is at most ``clip``.

    ``h`` is (N, ...): the norm is over all of an example's elements, flattened, whatever the
    cut's shape. Differentiable: the owner trains through it. The floor on the norm keeps an
    all-zero example from dividing by zero; the clamp at 1 then leaves it unchanged.
    """
    if h.dim() < 2:
        raise ShapeError(f"clipping expects a batch (N, *example_shape), got {tuple(h.shape)}")
    norms = torch.linalg.vector_norm(h.flatten(1), ord=norm, dim=1)
    factor = (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    return h * factor.view(-1, *([1] * (h.dim() - 1)))


class CutLayerNoise(OwnerDefence, torch.nn.Module):
    """Clip each example's cut activation, then add i.i.d. Laplace or Gaussian noise.

    A module (not just a function) so it composes with the owner's model, but it ignores
    ``train()``/``eval()``: the server sees activations at inference too, so noise stays on.
    """

    name: ClassVar[str] = "noise"
    params: ClassVar[dict[str, Param]] = {
        "mechanism": Param("choice", required=True, choices=MECHANISMS),
        "scale": Param("float", required=True),
        "clip": Param("float", required=True),
        "delta": Param("float"),
        "seed": Param("int"),
    }
    # Last: what goes on the wire is exactly the mechanism's output, so its epsilon holds
    # whatever ran before it (and no later step rescales the noise).
    order: ClassVar[int] = 90
    random: ClassVar[bool] = True

    def __init__(
        self,
        mechanism: str,
        scale: float,
        clip: float,
        delta: float = 1e-5,
        seed: int = 0,
        *,
        stream: int | str = 0,
    ) -> None:
        super().__init__()
        if mechanism not in MECHANISMS:
            raise ConfigError(
                f"{_FLAG}: mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}"
            )
        self.mechanism = mechanism
        self.scale = _positive("scale", scale)
        self.clip = _positive("clip", clip)
        # delta only matters for Gaussian noise; Laplace is pure DP and reports delta = 0.
        self.delta = _positive("delta", delta)
        if self.delta >= 1:
            raise ConfigError(f"{_FLAG}: delta must be < 1, got {delta}")
        self.seed = check_seed(_FLAG, seed)
        self.stream = stream
        # This owner's own stream; samples move to h's device.
        self.generator = defence_generator(seed, stream, self.name)

    @property
    def norm(self) -> int:
        """The norm clipping bounds: the one whose sensitivity the mechanism is calibrated to."""
        return 1 if self.mechanism == "laplace" else 2

    @property
    def sensitivity(self) -> float:
        """How far one replaced input can move its (clipped) activation: ``2 * clip``."""
        return 2.0 * self.clip

    def epsilon(self) -> tuple[float, float]:
        """Per-query ``(epsilon, delta)`` for one input that ``scale`` and ``clip`` imply."""
        if self.mechanism == "laplace":
            return laplace_epsilon(self.scale, self.sensitivity), 0.0
        return analytic_gaussian_epsilon(self.scale, self.sensitivity, self.delta), self.delta

    def sample(self, shape: torch.Size) -> torch.Tensor:
        """Draw noise of ``shape`` (float64, CPU) from this module's generator."""
        if self.mechanism == "gaussian":
            return torch.randn(shape, generator=self.generator, dtype=torch.float64) * self.scale
        # Laplace(b) is b * (E1 - E2) for independent unit exponentials; -log(1 - U) with U in
        # [0, 1) is always finite, unlike the inverse CDF at U = 0.
        u = torch.rand((2, *shape), generator=self.generator, dtype=torch.float64)
        e = -torch.log1p(-u)
        return (e[0] - e[1]) * self.scale

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """Clip each example of ``h`` (N, *cut_shape) and add fresh noise of its shape."""
        if h.dim() < 2 or not h.is_floating_point():
            raise ShapeError(
                f"{_FLAG}: expects floating activations of shape (batch, *cut_shape), "
                f"got {tuple(h.shape)} {h.dtype}"
            )
        clipped = clip_rows(h, self.clip, self.norm)
        with torch.no_grad():
            noise = self.sample(h.shape).to(device=h.device, dtype=h.dtype)
        # The noise is a constant to autograd: gradients flow through the clipped part only.
        return clipped + noise

    forward = transform

    def extra_repr(self) -> str:
        return f"mechanism={self.mechanism}, scale={self.scale}, clip={self.clip}"
