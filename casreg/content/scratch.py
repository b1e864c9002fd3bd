"""Per-thread scratch buffers reused from chunk to chunk.

A push or pull codes and checks thousands of chunks of up to a few MiB on each worker
thread; a fresh chunk-sized buffer for each costs its pages' faults every time (about a
third of the check before write on a 2 GiB push). :func:`thread_buffer` lends the same
memory again instead.
"""

from __future__ import annotations

import threading

__all__ = ["thread_buffer", "KEPT_BYTES"]

#: Buffers larger than this are made fresh and not kept (a chunk is at most 4 MiB by default).
KEPT_BYTES = 16 << 20

_local = threading.local()


def thread_buffer(name: str, size: int) -> memoryview:
    """``size`` bytes of garbage, this thread's buffer ``name``: the same memory on the
    next call with that name from this thread, so a caller must be done with it by then
    (names are per use: ``"codec.check"``, ``"delta.residual"``, ...)."""
    if size > KEPT_BYTES:
        return memoryview(bytearray(size))
    buf: bytearray | None = _local.__dict__.get(name)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 1 << 20))
        setattr(_local, name, buf)
    return memoryview(buf)[:size]
