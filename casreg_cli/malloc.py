"""Keep big buffers in the process instead of returning them to the OS.

Push and pull move every byte through chunk-sized buffers (1-4 MiB: file blocks, zstd
output, decoded chunks). glibc serves allocations that size with fresh ``mmap`` pages
and unmaps them on free, so each chunk costs the kernel a page fault per 4 KiB to
zero-fill new memory: measured on a 512 MiB pull here, 85,000 faults and ~0.2 s of
system time out of 0.8 s. Serving them from the heap and keeping freed memory (bounded
by what is in flight at once, a few tens of MiB) cut that to 13,000 faults and the pull
to 0.7 s. ``casreg`` (the CLI) calls :func:`reuse_large_buffers` once at start;
programs embedding the library may call it too (it changes the whole process's malloc).

Freed memory is kept per malloc arena, and glibc gives each thread that allocates an
arena of its own (up to 8 per core): buffers decoded in 16 S3 fetch threads would each
keep their thread's peak. So a pull decodes runs into a few reused ``mmap`` buffers of
its own (casreg/content/pull.py ``_BufferPool``), never into per-thread ``bytes``.
"""

from __future__ import annotations

import sys

__all__ = ["reuse_large_buffers"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: allocations below this come from the heap
_TRIM_THRESHOLD = 512 << 20  # keep up to this much freed memory for reuse


def reuse_large_buffers() -> bool:
    """Tune glibc's malloc as described above; True if it was applied (glibc on Linux
    only; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to do
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
