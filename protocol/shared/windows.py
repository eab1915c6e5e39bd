"""Sliding windows over (B, C, H, W) ring arrays and their adjoint (scatter-add back).

Convolution (im2col), max and average pooling all read windows; their backward passes add
each window's gradient back onto the input positions it came from. Zero padding is exact on
shares: zero is a sharing of zero.
"""

from __future__ import annotations

import numpy as np

Pair = tuple[int, int]


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def windows(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """A (B, C, OH, OW, kh, kw) view of the windows of x (zero-padded first)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, ::sh, ::sw]


def unwindows(g: np.ndarray, in_shape: tuple[int, ...], stride: Pair,
              padding: Pair) -> np.ndarray:
    """The adjoint of ``windows``: add each (B, C, OH, OW, kh, kw) entry back to its input
    position (mod 2^64), then drop the padding."""
    b, c, h, w = in_shape
    (sh, sw), (ph, pw) = stride, padding
    _, _, oh, ow, kh, kw = g.shape
    out = np.zeros((b, c, h + 2 * ph, w + 2 * pw), np.uint64)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += g[..., i, j]
    return out[:, :, ph:ph + h, pw:pw + w]
