"""How many torch threads one attack fit may take, and whether that can change its result.

A fit takes a node's idle cores (``fit_threads``) only if its bits do not depend on the thread
count: the rung must say so (``Rung.THREAD_INVARIANT``, checked in tests/test_fit_threads.py)
and the BLAS must add up a product's terms in the same order on any number of threads. MKL
does not by default on Intel CPUs: on a Xeon with AVX-512 (2026-12-02) a (64, 1000) @ (1000,
784) sgemm gave other bits on two threads than on one, on AMD's it did not. Its strict
reproducibility mode (``MKL_CBWR=AUTO,STRICT``, set by ``actors/__init__.py`` before anything
multiplies) makes the result independent of the thread count at no measured cost; where that
is not in effect (MKL was already running when the package was imported, a worker of a
cluster started elsewhere), ``threads_agree`` sees it and the fit keeps its thread count.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Products whose sums MKL splits by thread count when not strict (a small batch against
#: wide layers: the backward pass's input gradient of the dense inverse network).
_PROBE_SHAPES = ((64, 1000, 784), (128, 500, 1000), (188, 1000, 784))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def threads_agree(threads: int) -> bool:
    """Whether float32 products give the same bits on ``threads`` threads as on one, probed
    once per process and thread count on the shapes that differ when they do (~20 ms)."""
    if threads <= 1:
        return True
    generator = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator))
             for m, k, n in _PROBE_SHAPES]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [a @ b for a, b in pairs]
        torch.set_num_threads(threads)
        many = [a @ b for a, b in pairs]
    finally:
        torch.set_num_threads(before)
    return all(torch.equal(x, y) for x, y in zip(one, many, strict=True))


@contextmanager
def fit_threads(sharers: int | None) -> Iterator[int]:
    """torch's intra-op threads for one fit: this node's cores split between ``sharers`` fits,
    at least one; unchanged where ``sharers`` is None or where the BLAS's result would change
    with the thread count (``threads_agree``). ``fit_attack`` passes ``sharers`` only for
    rungs whose fitted bits do not depend on the thread count (``Rung.THREAD_INVARIANT``), so
    this only decides how fast they run: at the end of a secret-shared run its one fit used
    to run 15 s on one core of two while the other idled (roles otherwise keep one thread:
    many share few cores)."""
    before = torch.get_num_threads()
    threads = before if sharers is None else max(1, usable_cores() // max(1, sharers))
    if threads != before and not threads_agree(threads):
        threads = before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
