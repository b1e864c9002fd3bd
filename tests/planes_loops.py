"""A fixture that runs a test module twice: with the PLANES codec's C loops
(casreg/content/_planes_c.c, where the install built them) and with numpy's whole-array
operations that stand in for them where it did not (casreg/content/planes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from casreg.content import planes

BUILT = planes._loops


@pytest.fixture(params=["c", "numpy"], scope="module", autouse=True)
def planes_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    """``"c"`` (skipped, visibly, where the extension was not built) or ``"numpy"``."""
    if request.param == "c" and BUILT is None:
        pytest.skip("the PLANES codec's C loops are not built here (no C compiler at install): numpy's ran")
    planes._loops = BUILT if request.param == "c" else None
    try:
        yield request.param
    finally:
        planes._loops = BUILT
