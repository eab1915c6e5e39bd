"""Keep freed memory in the process instead of handing it back to the kernel after each use.

Ring arithmetic allocates megabytes of short-lived temporaries per product (a 500x500 operand's
float64 limbs are 6 MB, its outputs 2 MB each). glibc serves blocks above its mmap threshold
(128 KB, rising only as far as the sizes it has seen freed) with fresh ``mmap`` pages and
trims the heap's top once 2x that is free, so the same few megabytes are faulted in and
zeroed by the kernel again on every product: a 500x128 @ 128x500 ring product (numpy's BLAS)
took 18.9-20.5 ms that way against 12.8-13.4 ms with its memory kept, 4,642 page faults a
call against 122 (2-core AMD EPYC, 2026-12-02, two runs each). Raising both
thresholds keeps those pages in the process (its resident size stays at its peak, a few
hundred MB for a role). ``protocol.ring_kernels.chosen`` calls this once, before a process's
first ring product: share servers, the dealer, and the driver of an in-process run. Only
glibc is tuned; elsewhere this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import sys
import threading

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above half its heap size (32 MB on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top kept before trimming (beyond any role's working set).
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; True if it did."""
    global _kept
    with _lock:
        if _kept is None:
            _kept = _tune()
        return _kept


def _tune() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; musl has the symbol but ignores it (returns 0).
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
