"""A convolutional inverse network: the stronger black-box decoder of the attack ladder.

Same threat model as :mod:`attack.inversion` (query the owner's oracle with auxiliary images,
fit activations -> image, apply it to intercepted activations); only the decoder changes. The
MLP decoder has to learn every pixel's relation to every other from scratch; transposed
convolutions build the image from local, translation-shared strokes, which is the prior that
lets the attack generalise from letters (or other auxiliary data) to digits.

Two decoders, picked by the shape of the activations:

- a flat cut (N, k), e.g. the 500-d cut of ``mlp`` or the (N, classes) output:
  :class:`ConvInverse`, Linear -> (c0, ceil(H/4), ceil(W/4)) -> two x2 transposed
  convolutions -> conv to C channels, cropped to (H, W);
- a spatial cut (N, C', H', W'), e.g. ``cnn`` at ``conv1``: :class:`SpatialInverse`, which
  keeps the feature map's geometry (a Linear would throw away that pixel (i, j) of the map
  sits above pixel (i, j) of the image): convolutions at cut resolution, x2 transposed
  convolutions until the map is at least (H, W), a bilinear resize to exactly (H, W), and a
  final conv to C channels + sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from attack.adam import Adam
from attack.base import check_input_shape
from attack.inversion import BlackBoxInversion, check_pairs
from protocol.errors import ConfigError, ShapeError

#: Channels of the decoder's three stages. The paper-style (128, 64, 32) costs ~7 s per epoch
#: of 6,000 pairs on one CPU core, too slow for a lab run; this width takes ~1.2 s. On 4,500
#: MNIST pairs through an untrained OwnerNet (20 epochs, 500 held out) it reaches SSIM 0.94
#: against the MLP decoder's 0.81.
DEFAULT_CHANNELS = (32, 16, 8)


def _check_channels(channels: tuple[int, ...]) -> tuple[int, int, int]:
    out = tuple(int(c) for c in channels)
    if len(out) != 3 or min(out) < 1:
        raise ConfigError(f"channels must be three positive counts, got {channels}")
    return out  # type: ignore[return-value]


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    # kernel 4, stride 2, padding 1 exactly doubles the side and, unlike kernel 2, lets
    # neighbouring output pixels share inputs (no blocky 2x2 artefacts).
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out),
            nn.ReLU()]


class _Decoder(nn.Module):
    """Shared tail: ``self.net`` ends in conv-to-C then Sigmoid; output cropped to (H, W)."""

    net: nn.Sequential
    out_shape: tuple[int, int, int]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        img = self.net(h)
        _, height, width = self.out_shape
        if img.shape[-2:] != (height, width):
            img = img[..., :height, :width]
        return img

    @torch.no_grad()
    def start_at(self, mean_pixel: float) -> None:
        """Bias the output towards ``mean_pixel`` so training starts from a dark page, not grey.

        With a sigmoid output at 0.5 everywhere the first few hundred steps are spent learning
        that MNIST is mostly black; on small auxiliary sets that is most of the budget.
        """
        p = min(max(mean_pixel, 1e-3), 1 - 1e-3)
        self.net[-2].bias.fill_(float(np.log(p / (1 - p))))


class ConvInverse(_Decoder):
    """k -> Linear -> (c0, ceil(H/4), ceil(W/4)) -> ConvT x2 -> ConvT x2 -> Conv + Sigmoid.

    For a (1, 28, 28) output this is layer for layer the decoder the lab always used; other
    sides are built at the next multiple of 4 and cropped.
    """

    def __init__(self, in_dim: int, out_shape: tuple[int, int, int],
                 channels: tuple[int, int, int] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        if in_dim < 1:
            raise ConfigError(f"ConvInverse needs in_dim >= 1, got {in_dim}")
        c0, c1, c2 = _check_channels(channels)
        shape = check_input_shape(out_shape, "ConvInverse")
        assert shape is not None
        self.in_dim, self.out_shape = in_dim, shape
        colours, height, width = shape
        top = (math.ceil(height / 4), math.ceil(width / 4))
        self.net = nn.Sequential(
            nn.Linear(in_dim, c0 * top[0] * top[1]),
            nn.ReLU(),
            nn.Unflatten(1, (c0, *top)),
            *_up(c0, c1),
            *_up(c1, c2),
            nn.Conv2d(c2, colours, 3, padding=1),
            nn.Sigmoid(),
        )


class SpatialInverse(_Decoder):
    """(C', H', W') feature map -> conv at cut resolution -> ConvT x2 ... -> resize -> conv."""

    def __init__(self, cut_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                 channels: tuple[int, int, int] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        cut = check_input_shape(cut_shape, "SpatialInverse cut")
        shape = check_input_shape(out_shape, "SpatialInverse")
        assert cut is not None and shape is not None
        chans = _check_channels(channels)
        self.in_shape, self.out_shape = cut, shape
        colours, height, width = shape
        # x2 steps to the power of two nearest the scale (conv1's 24x24 under 28x28: none,
        # pool1's 12x12: one, pool2's 4x4: three), then a resize to exactly (H, W).
        ratio = max(height / cut[1], width / cut[2])
        doublings = max(0, round(math.log2(ratio)))
        layers: list[nn.Module] = [nn.Conv2d(cut[0], chans[0], 3, padding=1),
                                   nn.BatchNorm2d(chans[0]), nn.ReLU()]
        width_now = chans[0]
        for step in range(doublings):
            nxt = chans[min(step + 1, 2)]
            layers += _up(width_now, nxt)
            width_now = nxt
        scale = 2 ** doublings
        layers += _resize((cut[1] * scale, cut[2] * scale), (height, width), width_now)
        # The full-resolution stages are the costly ones, so they run at the narrowest width.
        layers += [nn.Conv2d(width_now, chans[2], 3, padding=1), nn.BatchNorm2d(chans[2]),
                   nn.ReLU(), nn.Conv2d(chans[2], colours, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)


#: Largest side difference bridged by a learnt stride-1 (transposed) convolution.
MAX_LEARNT_RESIZE = 8


def _resize(size: tuple[int, int], target: tuple[int, int], width: int) -> list[nn.Module]:
    """Layers taking a (width, *size) map to (width, *target).

    A few pixels' difference is what a valid convolution takes off (conv1's 5x5: 28 -> 24),
    so a transposed convolution with that kernel puts them back with the geometry aligned
    (output pixel (i, j) sits over the input's window); a bilinear stretch would smear every
    stroke by up to two pixels. Larger or mixed differences are resized bilinearly.
    """
    grow = (target[0] - size[0], target[1] - size[1])
    if grow == (0, 0):
        return []
    if all(0 <= g <= MAX_LEARNT_RESIZE for g in grow):
        conv: nn.Module = nn.ConvTranspose2d(width, width, (grow[0] + 1, grow[1] + 1))
    elif all(-MAX_LEARNT_RESIZE <= g <= 0 for g in grow):
        conv = nn.Conv2d(width, width, (1 - grow[0], 1 - grow[1]))
    else:
        return [nn.Upsample(size=target, mode="bilinear", align_corners=False)]
    return [conv, nn.BatchNorm2d(width), nn.ReLU()]


def build_decoder(cut_shape: tuple[int, ...], out_shape: tuple[int, int, int],
                  channels: tuple[int, int, int] = DEFAULT_CHANNELS) -> _Decoder:
    """The decoder for activations of per-example shape ``cut_shape``: spatial if rank 3."""
    if len(cut_shape) == 3:
        return SpatialInverse(cut_shape, out_shape, channels)  # type: ignore[arg-type]
    return ConvInverse(math.prod(cut_shape), out_shape, channels)


def train_inverse(model: nn.Module, acts: torch.Tensor, images: torch.Tensor, epochs: int,
                  batch_size: int, lr: float, seed: int) -> nn.Module:
    """Minibatch Adam on the pixel MSE, shuffled by a seeded generator; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(acts), batch_size):
            idx = perm[start:start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot normalise a batch of one image
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(acts[idx]), images[idx])
            loss.backward()
            opt.step()
    return model.eval()


@dataclass
class ConvInversion(BlackBoxInversion):
    """:class:`BlackBoxInversion` with a convolutional decoder; same collect/fit/run/reconstruct.

    Inputs are divided by ``input_bound`` (the largest |activation| seen while fitting) before
    the decoder sees them, so one learning rate suits 500-d ReLU activations near 1 and 10-d
    logits near 20 alike.
    """

    THREAD_INVARIANT: ClassVar[bool] = False  # see Rung.THREAD_INVARIANT

    epochs: int = 20
    #: Higher rate and smaller batches than the MLP's 1e-3 / 128: the conv decoder needs more,
    #: larger steps to leave its starting blur, which matters most on small auxiliary sets
    #: (1,000 pairs x 5 epochs: SSIM 0.79 vs 0.27).
    batch_size: int = 64
    lr: float = 3e-3
    channels: tuple[int, int, int] = DEFAULT_CHANNELS
    model: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.query_batch < 1:
            raise ConfigError(
                "conv inversion needs epochs >= 1, batch_size >= 2, lr > 0, query_batch >= 1; "
                f"got epochs={self.epochs} batch_size={self.batch_size} lr={self.lr} "
                f"query_batch={self.query_batch}"
            )
        self.channels = _check_channels(self.channels)
        self.input_shape = check_input_shape(self.input_shape, "conv inversion")

    def fit(self, acts: np.ndarray, images: np.ndarray) -> nn.Module:
        x = check_pairs(acts, images, least=2)
        shape = self.adopt_shape(x)
        acts = np.asarray(acts, dtype=np.float32)
        self.input_bound = _bound_of(acts)
        # Seed the weights without touching the caller's global torch RNG stream.
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = build_decoder(acts.shape[1:], shape, self.channels)
        model.start_at(float(x.mean()))
        a = torch.from_numpy(self._prepare(acts))
        self.model = train_inverse(model, a, torch.from_numpy(x), self.epochs, self.batch_size,
                                   self.lr, self.seed)
        return self.model

    def _prepare(self, acts: np.ndarray) -> np.ndarray:
        """Clip and scale; a flat decoder gets (N, k) whatever the rank of a non-spatial cut."""
        safe = clip_acts(acts, self.input_bound)
        return safe if safe.ndim == 4 else safe.reshape(len(safe), -1)

    @torch.no_grad()
    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the inverse network before reconstructing")
        acts = np.asarray(acts)
        want = getattr(self.model, "in_shape", None)
        got = tuple(acts.shape[1:])
        flat_ok = want is None and acts.ndim >= 2 and math.prod(got) == self.model.in_dim
        if not (flat_ok or got == want):
            raise ShapeError(f"the decoder was fitted on activations "
                             f"{want or (self.model.in_dim,)}, got {acts.shape}")
        if len(acts) == 0:
            return self.empty()
        return self.model(torch.from_numpy(self._prepare(acts))).numpy()


def _bound_of(acts: np.ndarray) -> float:
    """Largest finite |activation|, floored so an all-zero batch cannot make us divide by 0."""
    finite = np.abs(acts[np.isfinite(acts)])
    return max(float(finite.max()) if finite.size else 0.0, 1e-6)


def clip_acts(acts: np.ndarray, bound: float) -> np.ndarray:
    """NaN -> 0, then clip to +-2*bound and scale by 1/bound, as the decoder was trained on.

    Garbage (ciphertext read as floats, say) must not drive the decoder to meaningless extremes;
    the factor 2 leaves room for genuine activations a little beyond the fitting set's maximum.
    """
    edge = 2.0 * bound
    safe = np.nan_to_num(np.asarray(acts, dtype=np.float32), nan=0.0, posinf=edge, neginf=-edge)
    return (np.clip(safe, -edge, edge) / bound).astype(np.float32)
