"""Every number the lab reports about one set of reconstructions, from one scoring pass.

A run reports each adversary's reconstructions several ways: over all private images
(``AttackMetrics``), per owner (the same metrics on each owner's images), re-identification
(pixel and validator-feature ranks) and the excess over the label-only baseline. Scored one by
one, the same images went through SSIM three times and the judge four (the originals' features
once per result as well). A :class:`ScoreCard` keeps each image's values, so a subset's metrics
are means over its rows: the numbers each separate call gave (SSIM and validator accuracy to
the bit; MSE as the mean of per-image means, equal images so equal up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from attack import metrics, validator
from attack.reident import reidentify
from protocol.errors import ShapeError


@dataclass(frozen=True)
class ScoreCard:
    """Per-image scores of N reconstructions against their originals."""

    mse: np.ndarray  # (N,) mean squared error per image
    psnr: np.ndarray  # (N,) dB
    ssim: np.ndarray  # (N,)
    correct: np.ndarray  # (N,) bool: the judge reads the true label
    features: np.ndarray  # (N, d) the judge's features of each reconstruction

    @classmethod
    def of(cls, recon: np.ndarray, originals: np.ndarray, labels: np.ndarray,
           judge: nn.Module, reading: validator.Reading | None = None) -> ScoreCard:
        """``reading``: the judge's reading of ``recon`` if the caller has it (a guess of few
        distinct images reads each once: ``validator.read_distinct``)."""
        mse, psnr, ssim = metrics.each(recon, originals)
        labels = np.asarray(labels)
        if labels.shape != (len(ssim),):
            raise ShapeError(f"{len(ssim)} reconstructions need {len(ssim)} labels, got "
                             f"{labels.shape}")
        reading = validator.read(judge, recon) if reading is None else reading
        if reading.labels.shape != labels.shape:
            raise ShapeError(f"a reading of {len(reading.labels)} images for {len(labels)}")
        return cls(mse=mse, psnr=psnr, ssim=ssim,
                   correct=reading.labels == labels, features=reading.features)

    def metrics(self, rows: slice = slice(None)) -> metrics.AttackMetrics:
        """MSE, PSNR, SSIM and validator accuracy over ``rows`` (all, or one owner's)."""
        return metrics.AttackMetrics(
            mse=float(np.mean(self.mse[rows])), psnr=float(np.mean(self.psnr[rows])),
            ssim=float(np.mean(self.ssim[rows])),
            validator_accuracy=float(np.mean(self.correct[rows])))

    def scores(self, recon: np.ndarray, originals: np.ndarray,
               original_features: np.ndarray) -> dict[str, Any]:
        """``attack.baselines.score_all``'s dict: the metrics and the ``reid`` block, with
        the judge's features of the originals computed once by the caller."""
        return {**self.metrics().to_dict(),
                "reid": reidentify(recon, originals,
                                   features=(self.features, original_features))}
