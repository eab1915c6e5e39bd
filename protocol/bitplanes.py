"""Bit-planes: the bit-sliced layout the comparison circuit runs in (``protocol.mpc.relu``).

Each party transposes its own 64-bit values, locally, into 64 planes (plane = one bit of every
element, 64 elements to a word), in an order where every carry-tree level's low and high groups
are the two halves of the planes. The dealer reads a plane back into elements too: a bit
triple's random bit travels packed in one plane (``protocol.beaver``'s "bitmul").
"""

from __future__ import annotations

import numpy as np


def _reverse6(i: int) -> int:
    return int(f"{i:06b}"[::-1], 2)


#: Bit i of every element lands in plane PLANE_OF_BIT[i] (the 6-bit reversal of i): even bits
#: fill the first 32 planes and bit 2j + 1 sits 32 planes after bit 2j, so the carry tree's
#: groups (2j, 2j+1) pair up as the two halves, and the same holds again for the groups.
PLANE_OF_BIT = [_reverse6(i) for i in range(64)]
#: Element r of a column of 64 (``to_planes``) is bit REVERSED6[r] of its plane words.
REVERSED6 = np.array(PLANE_OF_BIT)
#: Low-half masks of the swaps at distance 1, 2, ..., 32 within a word.
_LOW_HALVES = [np.uint64(m) for m in (0x5555555555555555, 0x3333333333333333,
                                      0x0F0F0F0F0F0F0F0F, 0x00FF00FF00FF00FF,
                                      0x0000FFFF0000FFFF, 0x00000000FFFFFFFF)]


def to_planes(values: np.ndarray) -> np.ndarray:
    """64 bit-planes of uint64 ``values``: a (64, ceil(n/64)) array whose row PLANE_OF_BIT[i]
    holds bit i of every value (zeros pad n up to a multiple of 64).

    Value e is row ``e // W``, column ``e % W`` of a (64, W) word matrix (W = ceil(n/64), one
    copy into the zero-padded buffer); each word column is a 64x64 bit matrix, transposed by six
    delta swaps that each exchange one bit of the row index with one bit of the bit index:
    row bit 5-k with bit-index bit k, which puts bit i in row reverse6(i) and row r's bit
    at position reverse6(r) (``from_plane`` undoes that).
    """
    words = -(-values.size // 64)
    x = np.zeros(64 * words, np.uint64)
    x[:values.size] = values
    x = x.reshape(64, words)
    t = np.empty((32, words), np.uint64)
    for k in range(6):
        row_step, shift = 1 << (5 - k), np.uint64(1 << k)
        pairs = x.reshape(32 // row_step, 2, row_step, words)
        lo, hi = pairs[:, 0], pairs[:, 1]  # rows with row bit 5-k clear, and their partners
        tmp = t.reshape(lo.shape)
        # swap lo's bits at index bit k = 1 with hi's bits at index bit k = 0
        np.right_shift(lo, shift, out=tmp)
        tmp ^= hi
        tmp &= _LOW_HALVES[k]
        hi ^= tmp
        tmp <<= shift
        lo ^= tmp
    return x


def from_plane(plane: np.ndarray, n: int) -> np.ndarray:
    """The n bits of one plane (``to_planes``' layout) as 0/1 uint64s in element order."""
    bits = np.unpackbits(plane.view(np.uint8), bitorder="little").reshape(len(plane), 64)
    return bits[:, REVERSED6].T.reshape(-1)[:n].astype(np.uint64)
