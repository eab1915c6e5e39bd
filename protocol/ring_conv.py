"""Exact 2-D convolutions mod 2^64: the im2col matrix of a (B, C, H, W) ring batch times a
(C * kh * kw, n) ring matrix, and the transposed product a convolution's weight gradient needs.

They are what convolution triples (protocol.beaver, kinds "conv" and "convgrad") multiply:
CrypTen's conv triples, where the mask of a convolution's input has the input's shape, so a
Beaver product opens the input's size rather than its im2col matrix's (kh * kw times larger).

``conv_matmul`` is ``ring.matmul(im2col(x), w)`` and ``conv_t_matmul`` is
``ring.matmul(im2col(x).T, dz)``, computed without the uint64 im2col matrix when this
process's ring kernel is a float64 limb kernel (protocol.ring_kernels): x is cut into limbs at
its own size, and each limb is convolved in float64 with the concatenated limbs of the other
operand that its shift keeps below 2^64 (one BLAS-backed ``torch.conv2d`` per limb of x, the
weight gradient as torch computes it: the batch as the summed axis, the stride as dilation).
About twice as fast here as splitting the kh kw times larger im2col matrix into limbs.
Exactness is the limb kernel's argument: every term is a product of two limbs, below 2^(2L),
all non-negative, so any sum of at most ``kernel.chunk`` of them is an exact float64 integer
whatever order it is added in; the summed axis is cut into groups that respect it (input
channels of kh kw terms each; whole images of OH OW terms each). Because that argument needs a
plain sum of products (no Winograd or FFT transforms, which subtract), the first call in each
process checks both paths against the im2col path on a random case and uses im2col for good
if either ever differs.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

from protocol import ring, ring_kernels
from protocol.errors import ShapeError

#: (kh, kw, sh, sw, ph, pw): kernel, stride and zero padding of a convolution.
Geometry = tuple[int, int, int, int, int, int]


def check_geometry(g: Geometry) -> None:
    if len(g) != 6 or min(g[:4]) < 1 or min(g[4:]) < 0:
        raise ShapeError(f"a convolution geometry is (kh, kw, sh, sw, ph, pw) with kernel and "
                         f"stride >= 1 and padding >= 0, got {g}")


def out_hw(in_shape: tuple[int, ...], g: Geometry) -> tuple[int, int]:
    """Output height and width of a convolution of geometry g over a (B, C, H, W) batch."""
    check_geometry(g)
    if len(in_shape) != 4:
        raise ShapeError(f"a convolution takes a (B, C, H, W) batch, got {in_shape}")
    kh, kw, sh, sw, ph, pw = g
    oh = (in_shape[2] + 2 * ph - kh) // sh + 1
    ow = (in_shape[3] + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"kernel {kh}x{kw} (padding {ph}, {pw}) does not fit {in_shape}")
    return oh, ow


def cols_shape(in_shape: tuple[int, ...], g: Geometry) -> tuple[int, int]:
    """Shape of im2col(x): (B * OH * OW, C * kh * kw)."""
    oh, ow = out_hw(in_shape, g)
    return in_shape[0] * oh * ow, in_shape[1] * g[0] * g[1]


def im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """(B * OH * OW, C * kh * kw): row (b, oh, ow) is the zero-padded window at (oh, ow),
    in (C, kh, kw) order (torch's weight order). Any dtype."""
    kh, kw, sh, sw, ph, pw = g
    b, c = x.shape[:2]
    oh, ow = out_hw(x.shape, g)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return np.ascontiguousarray(view.transpose(0, 2, 3, 1, 4, 5)).reshape(b * oh * ow,
                                                                         c * kh * kw)


def _check_operands(x: np.ndarray, w: np.ndarray, g: Geometry) -> None:
    if x.dtype != np.uint64 or w.dtype != np.uint64:
        raise ShapeError(f"ring convolutions take uint64 arrays, got {x.dtype} and {w.dtype}")
    k = cols_shape(x.shape, g)[1]
    if w.ndim != 2 or w.shape[0] != k:
        raise ShapeError(f"a convolution of {x.shape} with kernel {g[:2]} needs a ({k}, n) "
                         f"weight matrix, got {w.shape}")


def cols_matmul(x: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """im2col(x) @ w mod 2^64 by way of the uint64 im2col matrix (the reference path)."""
    _check_operands(x, w, g)
    return ring.matmul(im2col(x, g), w)


def _check_grad_operands(x: np.ndarray, dz: np.ndarray, g: Geometry) -> None:
    if x.dtype != np.uint64 or dz.dtype != np.uint64:
        raise ShapeError(f"ring convolutions take uint64 arrays, got {x.dtype} and {dz.dtype}")
    m, _ = cols_shape(x.shape, g)
    if dz.ndim != 2 or dz.shape[0] != m:
        raise ShapeError(f"a convolution's weight gradient over {x.shape} needs a ({m}, n) "
                         f"output gradient, got {dz.shape}")


def cols_t_matmul(x: np.ndarray, dz: np.ndarray, g: Geometry) -> np.ndarray:
    """im2col(x)^T @ dz mod 2^64 by way of the uint64 im2col matrix (the reference path)."""
    _check_grad_operands(x, dz, g)
    return ring.matmul(np.ascontiguousarray(im2col(x, g).T), dz)


def _limb_conv(kernel: ring_kernels.LimbKernel, x: np.ndarray, w: np.ndarray,
               g: Geometry) -> np.ndarray:
    kh, kw, sh, sw, ph, pw = g
    b, c = x.shape[:2]
    oh, ow = out_hw(x.shape, g)
    n = w.shape[1]
    group = kernel.chunk // (kh * kw)  # input channels per exact float64 sum
    # w (C kh kw, n) -> limbs shaped as torch conv weights (n, C, kh, kw)
    w_limbs = [limb.T.reshape(n, c, kh, kw) for limb in kernel.split(w)]
    out = np.zeros((b, n, oh, ow), np.uint64)
    for i, x_limb in enumerate(kernel.split(x)):
        shifts = [j for j in range(kernel.limbs) if kernel.bits * (i + j) < 64]
        weight = torch.cat([w_limbs[j] for j in shifts])
        total = np.zeros((b, len(shifts) * n, oh, ow), np.uint64)
        for lo in range(0, c, group):
            part = F.conv2d(x_limb[:, lo:lo + group], weight[:, lo:lo + group],
                            stride=(sh, sw), padding=(ph, pw))
            total += part.numpy().astype(np.uint64)  # exact non-negative integers < 2^53
        for q, j in enumerate(shifts):
            out += total[:, q * n:(q + 1) * n] << np.uint64(kernel.bits * (i + j))
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)).reshape(b * oh * ow, n)


def _limb_conv_t(kernel: ring_kernels.LimbKernel, x: np.ndarray, dz: np.ndarray,
                 g: Geometry) -> np.ndarray:
    """im2col(x)^T @ dz by limbs: torch's weight-gradient convolution (the batch as the
    summed channel axis, the stride as dilation), cut into groups of whole images whose
    OH * OW terms each add up to at most ``kernel.chunk``."""
    kh, kw, sh, sw, ph, pw = g
    b, c = x.shape[:2]
    oh, ow = out_hw(x.shape, g)
    n = dz.shape[1]
    group = kernel.chunk // (oh * ow)  # images per exact float64 sum
    dz_limbs = [limb.reshape(b, oh, ow, n).permute(3, 0, 1, 2) for limb in kernel.split(dz)]
    out = np.zeros((c, n, kh, kw), np.uint64)
    for i, x_limb in enumerate(kernel.split(x)):
        shifts = [j for j in range(kernel.limbs) if kernel.bits * (i + j) < 64]
        weight = torch.cat([dz_limbs[j] for j in shifts])  # (len(shifts) n, B, OH, OW)
        total = np.zeros((c, len(shifts) * n, kh, kw), np.uint64)
        for lo in range(0, b, group):
            part = F.conv2d(x_limb[lo:lo + group].transpose(0, 1),
                            weight[:, lo:lo + group], padding=(ph, pw), dilation=(sh, sw))
            total += part[:, :, :kh, :kw].numpy().astype(np.uint64)  # exact, as _limb_conv
        for q, j in enumerate(shifts):
            out += total[:, q * n:(q + 1) * n] << np.uint64(kernel.bits * (i + j))
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)).reshape(c * kh * kw, n)


_lock = threading.Lock()
_conv_ok: bool | None = None


def _conv_path_ok(kernel: ring_kernels.LimbKernel) -> bool:
    """Once per process: do both float64 conv paths equal the im2col path (see the module)?"""
    global _conv_ok
    with _lock:
        if _conv_ok is None:
            rng = np.random.default_rng(0)
            x = rng.integers(0, 2**64, (3, 3, 7, 6), dtype=np.uint64)
            w = rng.integers(0, 2**64, (3 * 9, 4), dtype=np.uint64)
            g = (3, 3, 2, 1, 1, 0)
            cols = im2col(x, g)
            dz = rng.integers(0, 2**64, (cols.shape[0], 4), dtype=np.uint64)
            _conv_ok = bool(
                np.array_equal(_limb_conv(kernel, x, w, g), ring_kernels.int64_matmul(cols, w))
                and np.array_equal(_limb_conv_t(kernel, x, dz, g),
                                   ring_kernels.int64_matmul(np.ascontiguousarray(cols.T), dz)))
        return _conv_ok


def _float_kernel(terms: int) -> ring_kernels.LimbKernel | None:
    """This process's ring kernel if the float64 conv paths apply (``terms``: the fewest
    terms one output needs summed at once), else None (use the im2col path)."""
    kernel = ring_kernels.KERNELS[ring.kernel_name()]
    if (isinstance(kernel, ring_kernels.LimbKernel) and kernel.dtype == torch.float64
            and terms <= kernel.chunk and _conv_path_ok(kernel)):
        return kernel
    return None


def conv_matmul(x: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """im2col(x) @ w mod 2^64, (B * OH * OW, n): the exact ring convolution (see the module)."""
    _check_operands(x, w, g)
    kernel = _float_kernel(g[0] * g[1])
    return ring.matmul(im2col(x, g), w) if kernel is None else _limb_conv(kernel, x, w, g)


def conv_t_matmul(x: np.ndarray, dz: np.ndarray, g: Geometry) -> np.ndarray:
    """im2col(x)^T @ dz mod 2^64, (C * kh * kw, n): the exact weight-gradient convolution."""
    _check_grad_operands(x, dz, g)
    kernel = _float_kernel(int(np.prod(out_hw(x.shape, g))))
    return cols_t_matmul(x, dz, g) if kernel is None else _limb_conv_t(kernel, x, dz, g)
