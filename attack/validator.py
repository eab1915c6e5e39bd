"""The validator: an independently trained classifier that reads reconstructions.

Validator accuracy (Titcombe et al. 2021) is the share of reconstructions whose class a
classifier that never saw them still recognises; 1 / classes is chance. It is a convolutional
network, deliberately unlike the target, trained from its own seed on the owner's training
split, so it measures what a person looking at the reconstruction would read off it.

For MNIST-format data ((1, 28, 28), 10 classes) it is the CNN the lab always used; for any
other shape or class count an adaptive variant pools the feature map to a fixed 4x4 before the
head. :func:`embed` gives the penultimate layer's features (re-identification in the
validator's feature space).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attack import adam
from protocol.errors import ConfigError, ShapeError

#: A directory in this environment variable keeps trained validators between runs (tests, a
#: sweep repeated by hand); unset, every run trains its own. See :func:`train_validator_cached`.
CACHE_ENV = "SPLITWIRE_VALIDATOR_CACHE"

#: The shape and class count the original validator CNN was designed for (MNIST).
MNIST_FORMAT = ((1, 28, 28), 10)
#: Side of the adaptive validator's pooled feature map, and its hidden width.
POOLED = 4
HIDDEN = 128


class ValidatorCNN(nn.Module):
    """The MNIST validator: two 5x5 conv + pool stages, 1568 -> 128 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        (colours, height, width), classes = MNIST_FORMAT
        self.shape = (colours, height, width)
        self.features = nn.Sequential(
            nn.Conv2d(colours, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4),
                                                          HIDDEN), nn.ReLU(),
                                  nn.Linear(HIDDEN, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.shape)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 128) features of the penultimate layer."""
        return self.head[:-1](self.features(x.view(-1, *self.shape)))

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) from one pass: ``forward`` and ``embed`` in one."""
        features = self.embed(x)
        return self.head[-1](features), features


class AdaptiveValidator(ValidatorCNN):
    """Any (C, H, W) and class count: ceil-mode pooling, then an adaptive pool to 4x4."""

    def __init__(self, input_shape: tuple[int, int, int], classes: int) -> None:
        nn.Module.__init__(self)
        colours = input_shape[0]
        self.shape = tuple(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(colours, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(POOLED),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * POOLED * POOLED, HIDDEN),
                                  nn.ReLU(), nn.Linear(HIDDEN, classes))


def build_validator(input_shape: tuple[int, int, int], classes: int) -> ValidatorCNN:
    """The MNIST CNN for MNIST-format data, the adaptive one for anything else."""
    if (tuple(input_shape), classes) == MNIST_FORMAT:
        return ValidatorCNN()
    return AdaptiveValidator(input_shape, classes)


def train_validator(
    x: np.ndarray, y: np.ndarray, classes: int, *, seed: int = 0, epochs: int = 4,
    batch_size: int = 64,
) -> ValidatorCNN:
    """Train on (N, C, H, W) images in [0, 1], labels in [0, classes); ~10 s for 4,000 digits."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or y.shape != (len(x),) or len(x) == 0:
        raise ShapeError(f"validator needs (N, C, H, W) images and N labels, got {x.shape}, "
                         f"{y.shape}")
    if classes < 2 or y.min() < 0 or y.max() >= classes:
        raise ShapeError(f"validator labels must lie in [0, {classes}), got {y.min()}..{y.max()}")
    torch.manual_seed(seed + 7919)  # its own stream: independent of the target model's init
    gen = torch.Generator().manual_seed(seed + 7919)
    model = build_validator(x.shape[1:], classes)  # type: ignore[arg-type]
    opt = adam.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def train_validator_cached(
    x: np.ndarray, y: np.ndarray, classes: int, *, seed: int = 0, epochs: int = 4,
    batch_size: int = 64, cache_dir: str | os.PathLike[str] | None = None,
) -> ValidatorCNN:
    """:func:`train_validator`, or the same network read back from ``cache_dir`` (default:
    ``$SPLITWIRE_VALIDATOR_CACHE``; neither: no cache).

    Training is deterministic per input, so a file keyed on everything it depends on (the
    images and labels, classes, seed, epochs, batch size, this module's source and torch's
    version) holds exactly the network training would give. The file is a state dict in npz
    (read with ``allow_pickle=False``) plus torch's global RNG state as training left it,
    restored on a hit (training reseeds the global RNG, so a run goes on bit for bit either
    way). An unreadable file is retrained and replaced; writes are atomic (rename).
    """
    directory = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    if not directory:
        return train_validator(x, y, classes, seed=seed, epochs=epochs, batch_size=batch_size)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    path = Path(directory) / f"validator-{_cache_key(x, y, classes, seed, epochs, batch_size)}.npz"
    model = build_validator(x.shape[1:], classes) if x.ndim == 4 else None
    if model is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                model.load_state_dict({k.removeprefix("state/"): torch.from_numpy(saved[k])
                                       for k in saved.files if k.startswith("state/")})
                rng = torch.from_numpy(saved["rng"].copy())
            torch.set_rng_state(rng)
            return model.eval()
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile):
            pass  # damaged or from another layout: train again and overwrite it
    model = train_validator(x, y, classes, seed=seed, epochs=epochs, batch_size=batch_size)
    arrays = {f"state/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, rng=torch.get_rng_state().numpy(), **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{CACHE_ENV}={directory}: cannot keep the validator there "
                          f"({exc.strerror or exc})") from None
    return model


def _cache_key(x: np.ndarray, y: np.ndarray, classes: int, seed: int, epochs: int,
               batch_size: int) -> str:
    h = hashlib.sha256()
    for part in (x.shape, x.dtype.str, y.shape, y.dtype.str, classes, seed, epochs, batch_size,
                 torch.__version__):
        h.update(repr(part).encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    h.update(Path(__file__).read_bytes())  # a change to the validator or its training,
    h.update(Path(adam.__file__).read_bytes())  # or to the optimiser that trains it
    return h.hexdigest()[:32]


def _checked(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    arr = np.asarray(x)
    if arr.ndim != 4 or len(arr) == 0:
        raise ShapeError(f"the validator reads (N, C, H, W) images, N >= 1; got {arr.shape}")
    return torch.from_numpy(np.clip(arr, 0, 1).astype(np.float32))


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` (N, C, H, W) that ``model`` labels as ``y``."""
    pred = model(_checked(model, x)).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())


@dataclass(frozen=True)
class Reading:
    """What the judge makes of N images: its labels and its (N, d) features."""

    labels: np.ndarray  # (N,) int64 argmax
    features: np.ndarray  # (N, d) float32: the penultimate layer (a plain classifier: logits)


@torch.no_grad()
def read(model: nn.Module, x: np.ndarray) -> Reading:
    """:func:`accuracy`'s labels and :func:`embed`'s features of ``x`` from one pass, in
    batches of 500 (a scorecard needs both; two passes cost the judge twice)."""
    t = _checked(model, x)
    parts = [_read_batch(model, t[i:i + 500]) for i in range(0, len(t), 500)]
    logits = torch.cat([p[0] for p in parts])
    features = torch.cat([p[1] for p in parts]).numpy().astype(np.float32)
    return Reading(logits.argmax(1).numpy(), features)


def _read_batch(model: nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features): the validator's one pass, or a classifier's ``embed`` beside its
    outputs, or its outputs as both."""
    if hasattr(model, "read"):
        return model.read(t)
    out = model(t)
    return out, (model.embed(t) if hasattr(model, "embed") else out)


def read_distinct(model: nn.Module, distinct: np.ndarray, index: np.ndarray) -> Reading:
    """The reading of ``distinct[index]`` from one pass over ``distinct`` alone (a baseline
    guess repeats a few images: the class means, the mean image)."""
    once = read(model, distinct)
    return Reading(once.labels[index], once.features[index])


def embed(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """(N, d) float32 penultimate-layer features of ``x`` (N, C, H, W), in batches of 500
    (a classifier without an ``embed`` method gives its outputs instead): :func:`read`'s."""
    return read(model, x).features
