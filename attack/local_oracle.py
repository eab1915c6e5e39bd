"""The oracle an adversary with the weights runs for itself: no queries, no budget.

A white-box adversary (the first part's weights known) has no need to ask the data owner's
oracle: it evaluates the first part on its own auxiliary images, with the owner's defences
applied as published (Kerckhoffs) but with *its own* random draws, since the owner's noise and
dropout streams are secret. Any black-box decoder can then be trained on those pairs, so a
query budget does not bind this adversary at all.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from attack.base import check_images
from defences.spec import PARAMETERS, Defences, build_defences, parse_defence

#: Added to the run's seed for the adversary's own noise and dropout draws: it must not share
#: the owner's stream (the owner's default seed is public, so a real owner should change it).
ADVERSARY_SEED_OFFSET = 7919


def local_answers(part: nn.Module, defences: tuple[str, ...] | list[str], aux: np.ndarray,
                  seed: int, batch: int = 500) -> np.ndarray:
    """What the owner's defended oracle would answer on ``aux`` (N, C, H, W): (N, *cut) float32.

    The defences see one flat row per image (per-image clipping norms, i.i.d. noise and
    dropout per coordinate do not care about the cut's rank), reshaped back afterwards.
    """
    aux = check_images(aux, "auxiliary images")
    specs = []
    for spec in (parse_defence(t) for t in defences):
        if "seed" in PARAMETERS[spec.name]:
            owners = spec.params.get("seed", 0)
            own = seed + ADVERSARY_SEED_OFFSET
            if own == owners:  # an owner who happened to pick ours: take the next one
                own += 1
            spec = dataclasses.replace(spec, params={**spec.params, "seed": own})
        specs.append(spec)
    shield = build_defences(specs)
    was_training = part.training
    part.eval()
    try:
        with torch.no_grad():
            out = [_defended(shield, part(torch.from_numpy(aux[i:i + batch])))
                   for i in range(0, len(aux), batch)]
    finally:
        part.train(was_training)
    if not out:
        with torch.no_grad():
            cut = part(torch.zeros(1, *aux.shape[1:])).shape[1:]
        return np.zeros((0, *cut), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def _defended(shield: Defences, h: torch.Tensor) -> torch.Tensor:
    return shield.apply(h.reshape(len(h), -1)).reshape(h.shape)
