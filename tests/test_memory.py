"""casreg_cli/malloc.py: the malloc tuning the CLI applies at start."""

from __future__ import annotations

import platform
import sys

import pytest

from casreg_cli.malloc import reuse_large_buffers


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt tuning exists for glibc on Linux only")
def test_tuning_applies_on_glibc() -> None:
    assert reuse_large_buffers() is True
    assert reuse_large_buffers() is True  # idempotent


def test_large_buffers_are_reused_after_tuning(tune: bool = True) -> None:
    """After tuning, freeing and allocating chunk-sized buffers again does not fault in
    fresh pages each time (the point of the tuning; docs in casreg_cli/malloc.py)."""
    import resource

    def use() -> None:  # a push's worth of chunk buffers in flight at once, then freed
        bufs = [bytearray((1 + i % 4) << 20) for i in range(12)]
        for b in bufs:
            b[::4096] = b"\x01" * len(range(0, len(b), 4096))  # touch every page, as filling a chunk does
        del bufs

    if tune:
        reuse_large_buffers()
    use()  # warm the heap
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        use()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mallopt tuning exists for glibc on Linux only")
    pages = 8 * sum((1 + i % 4) << 20 for i in range(12)) // 4096
    assert faults < pages // 10, (faults, pages)  # untuned glibc faults in every page of every round
