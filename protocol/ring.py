"""Arithmetic in Z_2^64: fixed-point encoding, additive 2-party shares, exact ring products.

As CrypTen's ``ArithmeticSharedTensor``: a real value ``v`` is encoded as ``round(v * 2^f)``
in the ring (two's complement), split into two uniformly random shares that sum to it mod
2^64, and revealed by adding the shares. numpy's uint64 arithmetic wraps mod 2^64 by itself.

Truncation after a product (which carries 2f fractional bits) is the local, non-interactive
SecureML rule (Mohassel & Zhang 2017): party 0 shifts its share, party 1 shifts the negation of
its share and negates back. **Error bound**: if the true product ``x`` satisfies |x| < 2^l (in
ring units), the result is within 1 unit (2^-f) of x / 2^f with probability at least
1 - 2^(l + 1 - 64); otherwise it is off by about 2^(64 - f). With f = 16 and a product whose
real value is below 2^7, l = 39 and that chance is at most 2^-24 per element.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import ring_kernels
from protocol.errors import ShapeError

RING_BITS = 64
DEFAULT_FRAC_BITS = 16
#: Largest magnitude an encoding may take (2^62): leaves headroom so sums do not wrap.
MAX_ENCODED = 2**62

Shape = tuple[int, ...]


class SecureRandom:
    """A cryptographically secure PRG: the AES-256-CTR keystream under a 32-byte seed.

    With no seed it draws one from ``os.urandom``; with a seed two parties (or the dealer and a
    party) regenerate the same stream, so correlated randomness travels as 32 bytes.
    """

    SEED_BYTES = 32

    def __init__(self, seed: bytes | None = None) -> None:
        seed = os.urandom(self.SEED_BYTES) if seed is None else seed
        if len(seed) != self.SEED_BYTES:
            raise ValueError(f"seed must be {self.SEED_BYTES} bytes")
        self._stream = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()

    def uint64(self, shape: Shape) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        out = np.empty(n, dtype="<u8")  # the keystream is written straight into the array
        view = memoryview(out.view(np.uint8))
        # In pieces of the shared zero block: a fresh zero buffer as large as a 500x500 mask
        # cost more than encrypting it (calloc's new pages). CTR's stream runs on across calls.
        for start in range(0, len(view), len(_ZEROS)):
            piece = view[start:start + len(_ZEROS)]
            self._stream.update_into(_ZEROS[:len(piece)], piece)
        return out.reshape(shape)

    def __repr__(self) -> str:
        return "SecureRandom(<seeded>)"


#: Zero bytes, the plaintext whose AES-CTR encryption is the keystream (reused, read-only).
_ZEROS = memoryview(bytes(1 << 20))


def encode(x: np.ndarray | torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Real values -> ring elements (uint64) with ``frac_bits`` fractional bits."""
    x = np.asarray(x.detach() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ShapeError("cannot encode NaN/inf into the ring")
    scaled = np.rint(x * float(2**frac_bits))
    if scaled.size and np.abs(scaled).max() >= MAX_ENCODED:
        raise ShapeError(f"value too large for fixed point with {frac_bits} fractional bits")
    return scaled.astype(np.int64).view(np.uint64)


def decode(r: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Ring elements -> float64 (two's complement, ``frac_bits`` fractional bits)."""
    return np.asarray(r, dtype=np.uint64).view(np.int64).astype(np.float64) / float(2**frac_bits)


def share(x: np.ndarray, rng: SecureRandom | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ring elements into two additive shares; each alone is uniformly random."""
    s0 = (rng or SecureRandom()).uint64(x.shape)
    return s0, x - s0


def reveal(s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    return s0 + s1


def truncate(s: np.ndarray, party: int, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Divide a shared value by 2^frac_bits, locally (see the module's error bound)."""
    if party == 0:
        return (s.view(np.int64) >> frac_bits).view(np.uint64)
    neg = (np.uint64(0) - s).view(np.int64)
    return (np.uint64(0) - (neg >> frac_bits).view(np.uint64))


def wrap_error(frac_bits: int = DEFAULT_FRAC_BITS) -> float:
    """The real-valued error one failed truncation adds to its result: 2^(64 - 2f).

    A product carries 2f fractional bits; when the two shares of it straddle the ring's wrap
    point (probability |x| / 2^64 for a product x in ring units, i.e. |x_real| * 2^(2f - 64)),
    the locally truncated result is off by 2^(64 - f) ring units. With f = 16 that is 2^32 in
    real terms: one such element in a weight, its momentum or an activation ruins the model."""
    return float(2.0 ** (RING_BITS - 2 * frac_bits))


#: No trained classifier's logit, nor any cut-layer gradient, comes near this; a wrap's trace
#: always does where it is detectable at all (see ``wrap_suspect_bound``).
WRAP_SUSPECT_FLOOR = 256.0


def wrap_suspect_bound(frac_bits: int = DEFAULT_FRAC_BITS) -> float:
    """Magnitude of a revealed value (logit, cut-layer gradient) that only a truncation wrap
    in the shared computation explains: 2^-20 of the wrap's error, and at least 256.

    A wrap reaches the owner either at once (an activation off by ``wrap_error``) or through a
    weight, bias or momentum element off by ``wrap_error`` times the servers' lr / B
    (2^-9.3 at lr 0.1, B 64) times an activation feeding it: with f = 16, 6.7e6 times that
    activation, against logits below ~25 and gradients below ~1 in the lab's runs, so the
    bound (4,096 at f = 16) leaves orders of magnitude on both sides. With f >= 22 a wrap's
    trace can be smaller than a large logit, and the check may miss it."""
    return max(wrap_error(frac_bits) * 2.0 ** -20, WRAP_SUSPECT_FLOOR)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact product mod 2^64 of two uint64 matrices, by the fastest exact kernel here.

    The kernels (torch int64, limb decompositions over float64/float32 BLAS) and how one is
    chosen are in protocol.ring_kernels; tests/test_ring.py checks each against Python ints.
    """
    return ring_kernels.KERNELS[kernel_name()](a, b)


def kernel_name() -> str:
    """The ring-product kernel this process uses (calibrated on first use, then cached)."""
    return ring_kernels.chosen()[0]
