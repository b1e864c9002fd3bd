"""The DELTA codec's loop in C (_delta_c.c; optional: see delta.py)."""

def apply(out: object, base: object, op: int, width: int, head: int, inverse: bool, /) -> None:
    """``out`` (writable, ``n`` bytes) from a chunk into its residual against ``base`` (``n``
    bytes), in place, or back with ``inverse``: op 0 XORs every byte; op 1 subtracts the
    ``width``-byte little-endian elements from byte ``head`` on (sign-magnitude residual) and
    XORs the bytes outside them (docs/FORMAT.md §4.2)."""
