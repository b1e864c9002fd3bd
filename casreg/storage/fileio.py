"""Writing bytes to a file descriptor in pieces the kernel's page cache handles cheaply.

Every write casreg makes to a local file (pack and object files, pulled files, the chunk
cache) goes through :func:`write_all`, which hands the kernel at most
:data:`WRITE_PIECE` bytes per call. One large write is no fewer bytes copied, and on the
VM casreg is developed on it is much slower. Measured there (2 GiB written from the same
eight 4 MiB buffers, 4 rounds each, 3 s apart; docs/benchmarks.md, "Write size"):
0.42-0.68 s in calls of 64-512 KiB, 1.7-2.8 s in calls of 1 MiB, 1.8-5.1 s in calls of
4 MiB; with the ``fsync`` after it, 1.2-1.4 s against 2.7-6.2 s. ``cp`` and ``zstd``
write 128 KiB at a time and were not slowed. Why, as read rather than measured: on Linux
6.16+ ext4 a write of 1 MiB or more gets page-cache folios of that size, taken from the
large free blocks a virtio-balloon with free-page reporting has given back to the host,
so each of their pages costs a host fault. Elsewhere 256 KiB calls should cost little
against larger ones (a few thousand system calls per GiB); that is not measured.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Sequence

__all__ = ["WRITE_PIECE", "write_all"]

#: Bytes per ``write``/``writev`` call, at most (module docstring).
WRITE_PIECE = 256 << 10
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview], piece: int = WRITE_PIECE) -> None:
    """Write every byte of ``parts``, in order, at ``fd``'s position: ``writev`` calls of at
    most ``piece`` bytes and ``IOV_MAX`` parts, resumed after a short write. A call that
    writes nothing raises ``OSError`` (``EIO``) instead of trying forever."""
    if piece <= 0:
        raise ValueError(f"piece must be positive, not {piece}")
    views = deque(memoryview(p).cast("B") for p in parts if len(p))
    while views:
        batch: list[memoryview] = []
        room = piece
        for view in views:
            if not room or len(batch) == _IOV_MAX:
                break
            batch.append(view[:room])
            room -= len(batch[-1])
        n = os.writev(fd, batch)
        if n <= 0:
            raise OSError(errno.EIO, "a write made no progress")
        while n:
            if n >= len(views[0]):
                n -= len(views.popleft())
            else:
                views[0], n = views[0][n:], 0
