"""protocol.heap: a tuned process serves large temporaries from its heap and keeps them."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from protocol import heap

# In a fresh process: mmapped bytes while a 16 MB array lives, before and after
# keep_freed_memory(), and the heap's free bytes once the second one is freed (glibc's
# mallinfo2: hblkhd = bytes in mmapped blocks, fordblks = free bytes kept in the heap).
PROBE = textwrap.dedent("""
    import ctypes
    import numpy as np
    from protocol import heap

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    info = ctypes.CDLL(None).mallinfo2
    info.restype = MallInfo2
    size = 16 << 20

    def mmapped_while_alive():
        before = info().hblkhd
        a = np.ones(size // 8)
        during = info().hblkhd - before
        del a
        return during

    default = mmapped_while_alive()
    kept = heap.keep_freed_memory()
    tuned = mmapped_while_alive()
    print(default, kept, tuned, info().fordblks)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="tunes glibc's malloc only (mallinfo2: glibc 2.33 and later)")
def test_a_tuned_process_keeps_large_temporaries_in_its_heap():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    default, kept, tuned, free_kept = int(out[0]), out[1] == "True", int(out[2]), int(out[3])
    size = 16 << 20
    assert default >= size  # glibc's default: a fresh mmap for it, unmapped when freed
    assert kept
    assert tuned == 0  # from the heap now,
    assert free_kept >= size  # and still there once freed: no fault-in next time


def test_keeping_memory_is_idempotent():
    assert heap.keep_freed_memory() == heap.keep_freed_memory()
