"""The codecs' optional C loops in tests: fixtures that run a test module twice, with the
loops (where the install built them) and with numpy's whole-array operations that stand in
for them where it did not, and the check that they are built wherever they can be."""

from __future__ import annotations

import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from casreg.content import delta, planes


def both_paths(codec: ModuleType, what: str) -> Callable[..., Any]:
    """An autouse, module-scoped fixture giving ``"c"`` (skipped, visibly, where ``codec``'s
    loops were not built) or ``"numpy"``, with ``codec._loops`` set to match meanwhile."""
    built = codec._loops

    @pytest.fixture(params=["c", "numpy"], scope="module", autouse=True)
    def loops(request: pytest.FixtureRequest) -> Iterator[str]:
        if request.param == "c" and built is None:
            pytest.skip(f"{what} not built here (no C compiler at install): numpy's ran")
        codec._loops = built if request.param == "c" else None
        try:
            yield request.param
        finally:
            codec._loops = built

    return loops


planes_loops = both_paths(planes, "the PLANES codec's C loops are")
delta_loops = both_paths(delta, "the DELTA codec's C loop is")


def assert_built(loops: ModuleType | None, source: str) -> None:
    """With a C compiler and Python's headers at install (as on CI), the extension of
    ``source`` is built: a C file that stopped compiling would otherwise pass unnoticed on
    numpy."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not headers.exists() or shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) or no Python headers ({headers}): the numpy path is the one used")
    assert loops is not None, f"{source} was not built although it could be: reinstall (make venv)"
