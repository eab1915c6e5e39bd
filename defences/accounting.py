"""Privacy over the whole run: one example's (epsilon, delta), composed over every release.

:class:`defences.noise.CutLayerNoise` reports a per-query epsilon: what one noised activation
row reveals about the one input it came from. An example's row is sent more than once, and
every release spends budget again. This module counts the releases and composes them.

**Which releases count** (the rule; :func:`example_releases`). A release is one clipped,
noised cut-layer row computed from the example and sent off the owner:

* training: one per epoch (every epoch passes over the owner's shard once, so each training
  example's activation is sent once per epoch) -> ``epochs``;
* inference: one per inference pass that includes the example (the lab infers the private test
  split once; it is disjoint from training, so a training example has 0 and a test example 1);
* oracle answers computed *on the example*: the deployed first part answers queries with
  whatever input the querier sends, so this counts only if the example itself is queried (in
  the lab the adversary queries with its own auxiliary images: 0).

The run's figure is that of its worst-off example: ``max(epochs + inference passes over
training data + oracle answers, test inference passes + oracle answers)``, which in the lab is
``max(epochs, 1)`` releases.

**How they compose.** Every release uses the same mechanism, sensitivity ``2 * clip``
(replace-one) in the mechanism's norm, and independent noise.

* Gaussian: Renyi DP, with opacus' maintained accountant (``RDPAccountant``), one step per
  release at ``noise_multiplier = sigma / sensitivity`` and ``sample_rate = 1`` (no subsampling:
  each release contains the example for sure), converted to (epsilon, delta) at the noise
  defence's delta. That is the reported figure; the exact composition (Gaussian DP, which the
  RDP bound must never undercut) is given beside it as ``tight``.
* Laplace: basic sequential composition, ``epsilon_total = k * epsilon`` with delta 0 (pure DP
  composes additively; Dwork & Roth, Theorem 3.16). Advanced composition (Dwork, Rothblum &
  Vadhan 2010; Dwork & Roth Theorem 3.20) is given beside it as an alternative that trades a
  delta for a smaller epsilon when k is large and epsilon small.

**What it does not cover.** Only the activation channel: the labels travel in the clear in
training, the server's gradients are post-processing of the noised rows and labels (covered),
but the first part's weights, trained without noise on the examples, are handed between owners
and known to a white-box adversary; nothing here bounds what they reveal. The per-query caveats
of :mod:`defences.noise` (seeded noise, floating-point sampling) apply to every release.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

from defences.noise import analytic_gaussian_epsilon
from protocol.errors import ConfigError

#: Above this epsilon the figure is reported as "no meaningful DP". An epsilon-DP guarantee
#: bounds how far any outcome can move an adversary's odds about one example: by a factor
#: e^epsilon. At 10 that factor is about 22,000, so a 1-in-1,000 prior guess can become a 96%
#: posterior: the bound rules out almost nothing. Ponomareva et al. ("How to DP-fy ML",
#: JAIR 2023) likewise class epsilon <= 1 as strong, <= 10 as the reasonable range for ML, and
#: anything above as offering no meaningful formal guarantee.
MEANINGFUL_EPSILON = 10.0
#: RDP orders: opacus' defaults, widened at both ends so neither a huge nor a tiny epsilon is
#: left loose by the grid (the optimum of a tiny noise multiplier sits just above 1).
ALPHAS = sorted({1.0 + x / 100.0 for x in range(1, 10)}
                | {1.0 + x / 10.0 for x in range(1, 100)} | set(range(12, 64))
                | {64, 80, 96, 128, 192, 256, 512, 1024})


class NoiseLike(Protocol):
    """What accounting needs of a noise defence (``defences.noise.CutLayerNoise`` has it)."""

    mechanism: str
    scale: float
    delta: float

    @property
    def sensitivity(self) -> float: ...


def example_releases(epochs: int, *, training: bool = True, inference_passes: int = 0,
                     oracle_answers: int = 0) -> int:
    """How many noised activation rows of one example leave the owner (the module's rule)."""
    for name, v in (("epochs", epochs), ("inference_passes", inference_passes),
                    ("oracle_answers", oracle_answers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"privacy accounting: {name} must be an integer >= 0, got {v!r}")
    return (epochs if training else 0) + inference_passes + oracle_answers


def laplace_basic(per_release_epsilon: float, releases: int) -> tuple[float, float]:
    """Sequential composition of pure-DP releases: ``(k * epsilon, 0)``."""
    return releases * per_release_epsilon, 0.0


def laplace_advanced(per_release_epsilon: float, releases: int,
                     delta_prime: float) -> tuple[float, float]:
    """Advanced composition of k epsilon-DP releases (delta 0 each): for any delta' > 0 the
    whole is ``(sqrt(2k ln(1/delta')) * eps + k * eps * (e^eps - 1), delta')``-DP."""
    if not 0 < delta_prime < 1:
        raise ConfigError(f"privacy accounting: delta' must be in (0, 1), got {delta_prime}")
    e, k = per_release_epsilon, releases
    if k == 0:
        return 0.0, 0.0
    # e^eps - 1 overflows for the huge per-query epsilons of weak noise: then it is inf anyway.
    growth = math.expm1(e) if e < 700 else math.inf
    return math.sqrt(2 * k * math.log(1 / delta_prime)) * e + k * e * growth, delta_prime


def gaussian_rdp(sigma: float, sensitivity: float, releases: int,
                 delta: float) -> tuple[float, float]:
    """``k`` Gaussian releases composed with opacus' RDP accountant: ``(epsilon, delta)``."""
    if releases == 0:
        return 0.0, 0.0
    from opacus.accountants import RDPAccountant  # 2 s to import: only when asked

    accountant = RDPAccountant()
    for _ in range(releases):
        accountant.step(noise_multiplier=sigma / sensitivity, sample_rate=1.0)
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": still valid
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta, alphas=ALPHAS)), delta


def gaussian_tight(sigma: float, sensitivity: float, releases: int,
                   delta: float) -> tuple[float, float]:
    """The exact composition of ``k`` Gaussian releases, as a cross-check of the accountant.

    k Gaussian mechanisms of sensitivity D and noise sigma are together exactly one Gaussian
    mechanism of sensitivity ``sqrt(k) * D`` (Gaussian DP composes in quadrature: Dong, Roth &
    Su 2019, Corollary 3.3), whose epsilon the analytic Gaussian mechanism gives exactly.
    """
    if releases == 0:
        return 0.0, 0.0
    return analytic_gaussian_epsilon(sigma, math.sqrt(releases) * sensitivity, delta), delta


def per_release(noise: NoiseLike) -> tuple[float, float]:
    """One release's (epsilon, delta): the per-query figure ``CutLayerNoise.epsilon`` gives."""
    if noise.mechanism == "gaussian":
        return analytic_gaussian_epsilon(noise.scale, noise.sensitivity, noise.delta), noise.delta
    return noise.sensitivity / noise.scale, 0.0


def compose(noise: NoiseLike, releases: int) -> tuple[float, float]:
    """The (epsilon, delta) of ``releases`` releases through ``noise`` (the stated rules)."""
    if noise.mechanism == "gaussian":
        return gaussian_rdp(noise.scale, noise.sensitivity, releases, noise.delta)
    if noise.mechanism == "laplace":
        return laplace_basic(noise.sensitivity / noise.scale, releases)
    raise ConfigError(f"privacy accounting: unknown mechanism {noise.mechanism!r}")


def meaningful(epsilon: float, delta: float, n_examples: int | None = None) -> bool:
    """Whether ``(epsilon, delta)`` is a meaningful guarantee: epsilon at most
    :data:`MEANINGFUL_EPSILON`, and (given the data size) delta below ``1 / n``: a delta of
    ``1 / n`` already allows publishing one whole example at random."""
    if not epsilon <= MEANINGFUL_EPSILON:  # also catches NaN
        return False
    return n_examples is None or delta < 1.0 / n_examples


def verdict(epsilon: float, delta: float, n_examples: int | None = None) -> str:
    """One plain sentence saying what the figure means."""
    figure = f"epsilon={epsilon:.4g}, delta={delta:.3g}"
    if meaningful(epsilon, delta, n_examples):
        return f"{figure}: a meaningful DP guarantee (epsilon <= {MEANINGFUL_EPSILON:g})"
    if n_examples is not None and delta >= 1.0 / n_examples:
        return f"{figure}: no meaningful DP (delta >= 1/{n_examples})"
    return (f"{figure}: no meaningful DP (epsilon > {MEANINGFUL_EPSILON:g}: one example can "
            f"move an adversary's odds by a factor e^{epsilon:.4g})")


def run_epsilon(noise: NoiseLike | None, epochs: int, *, test_inference_passes: int = 1,
                train_inference_passes: int = 0, oracle_answers: int = 0,
                n_examples: int | None = None) -> dict[str, Any] | None:
    """The ``epsilon_run`` block of a run: the worst-off example's composed guarantee.

    ``None`` without a noise defence (no DP claim at all). Keys: ``epsilon``, ``delta``,
    ``releases`` (of the worst-off example), ``meaningful``, ``verdict``, ``mechanism``,
    ``rule``, ``per_release`` (the per-query figure), and ``advanced`` (Laplace: the alternative
    composition) or ``tight`` (Gaussian: the exact composition, a cross-check).
    """
    if noise is None:
        return None
    releases = max(
        example_releases(epochs, inference_passes=train_inference_passes,
                         oracle_answers=oracle_answers),
        example_releases(0, training=False, inference_passes=test_inference_passes,
                         oracle_answers=oracle_answers))
    eps, delta = compose(noise, releases)
    out: dict[str, Any] = {
        "epsilon": eps, "delta": delta, "releases": releases,
        "meaningful": meaningful(eps, delta, n_examples),
        "verdict": verdict(eps, delta, n_examples), "mechanism": noise.mechanism,
        "per_release": dict(zip(("epsilon", "delta"), per_release(noise), strict=True)),
    }
    if noise.mechanism == "laplace":
        out["rule"] = "basic composition: k * epsilon, delta 0"
        adv = laplace_advanced(noise.sensitivity / noise.scale, releases, noise.delta)
        out["advanced"] = {"epsilon": adv[0], "delta": adv[1]}
    else:
        out["rule"] = "RDP (opacus RDPAccountant), sample rate 1, one step per release"
        tight = gaussian_tight(noise.scale, noise.sensitivity, releases, noise.delta)
        out["tight"] = {"epsilon": tight[0], "delta": tight[1]}
    return out
