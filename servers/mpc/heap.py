"""Keep freed memory for reuse in a process that makes and drops large buffers all the time.

The dealer makes fast-engine bundles (15 MB per party for 64 images of
SecureML Network A, and as many intermediate arrays while generating them)
and drops each one once it is sent; a server receives and drops them as fast.
glibc's malloc, left to itself, maps a fresh region for each large block (or
hands the top of its heap back to the kernel once it frees more than a few
times the last large block): every page of the next bundle is then a page
fault and a zeroed page, kernel time on every image.

:func:`keep_freed_memory` sets two ``mallopt`` parameters once, at start-up:
blocks up to ``mmap_threshold`` come from the heap, and the heap keeps up to
``trim_threshold`` bytes of free memory at its top, so the next bundle reuses
pages already mapped. Larger blocks (a large model's bundles) are still
mapped on their own and returned when freed. It changes nothing a process
computes or sends, only where its buffers live; the cost is resident memory:
up to ``trim_threshold`` of freed memory per malloc arena is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
DEFAULT_TRIM_BYTES = 256 << 20  # the dealer's stock of bundles (MAX_STOCK_BYTES)


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = DEFAULT_TRIM_BYTES
) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``; False where that is not
    possible (not glibc, or a value glibc refuses), and nothing changes then."""
    if not 0 < mmap_threshold <= MMAP_THRESHOLD_MAX or trim_threshold < mmap_threshold:
        raise ValueError("need 0 < mmap_threshold <= 32 MiB <= trim_threshold")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("not glibc: freed memory is managed by the platform's malloc")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: a trim threshold alone turns off glibc's own raising of the
    # mmap threshold and leaves every block over 128 KiB mapped afresh (worse than nothing)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
