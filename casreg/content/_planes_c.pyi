"""The PLANES codec's split and join loops in C (_planes_c.c; optional: see planes.py)."""

from collections.abc import Sequence

# (any object exporting a C-contiguous buffer: bytes, bytearray, memoryview, a numpy array)

def split(src: object, planes: Sequence[object], /) -> None:
    """The ``n`` elements of ``src`` (``len(planes)`` = 2 or 4 bytes each), each rotated left
    by one bit, byte ``i`` to ``planes[i]`` (each ``n`` writable bytes)."""

def join(planes: Sequence[object], dst: object, /) -> None:
    """The inverse of :func:`split`: the elements whose rotated bytes ``planes`` hold, into
    ``dst`` (``len(planes) * n`` writable bytes)."""

def same(a: object, b: object, /) -> bool:
    """Whether ``a`` and ``b`` hold the same bytes (``memcmp``, without the GIL)."""

def distinct(buf: object, /) -> tuple[int, int, int, int]:
    """The number of distinct byte values at each offset modulo 4 of ``buf``."""
