"""Keeping the resident set honest during layer-by-layer work."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the OS.

    After a big block is freed, glibc raises its mmap threshold (up to 32 MiB), so later
    multi-MB tensors come from the heap, whose freed memory stays in the process: each layer
    leaves a little more behind. A fixed 1 MiB threshold maps every large tensor on its own
    and unmaps it on free. Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 20))
