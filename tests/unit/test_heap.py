"""servers/mpc/heap.py: freed memory is kept for reuse (no page fault per reused page)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from ppml.servers.mpc import heap

# Two 16 MiB blocks made, written to on every page and dropped, 20 times: glibc left to
# itself hands the freed top of its heap back to the kernel each time (more than twice the
# last freed block), so every page faults again.
CYCLES = """
import resource, sys
from ppml.servers.mpc import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
def cycle() -> None:
    a, b = bytearray(16 << 20), bytearray(16 << 20)
    a[::4096] = b[::4096] = bytes(4096)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 20 * 2 * (16 << 20) // 4096

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout)


@glibc
def test_kept_memory_is_reused_without_page_faults() -> None:
    kept, left = _faults("keep"), _faults("leave")
    assert kept < PAGES // 100  # the pages of the first cycle are reused
    assert left > PAGES // 2  # what the setting prevents (glibc's default here)


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError):
        heap.keep_freed_memory(mmap_threshold=64 << 20)  # over glibc's cap
    with pytest.raises(ValueError):
        heap.keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError):
        heap.keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=1 << 20)
