"""The package version, read from the installed package's metadata (``importlib.metadata``).

pyproject.toml's ``[project] version`` is the one place it is written; ``casreg
--version``, ``casreg.__version__``, the ``casreg_version`` every push records, the hooks'
User-Agent and the web page all read it from here. It is read on first use, not at
import (reading metadata scans ``sys.path``: commands that never show it never pay).
"""

from __future__ import annotations

import functools
import os
import sys

__all__ = ["package_version"]  # and __version__, through __getattr__

#: What :func:`package_version` says when casreg runs from a source tree that was never
#: installed (no metadata to read).
UNKNOWN = "0+unknown"
_DIST = "casreg"
_PREFIX, _SUFFIX = _DIST + "-", ".dist-info"  # casreg-0.1.0.dist-info


@functools.cache
def package_version() -> str:
    """The installed distribution's version (``UNKNOWN`` if casreg is not installed):
    the ``Version`` of the first ``casreg-*.dist-info/METADATA`` on ``sys.path``, as
    ``importlib.metadata.version("casreg")`` finds it, which is asked only when there is
    none (an egg, a zip, a custom finder). Every push records the version, and importing
    ``importlib.metadata`` and scanning with it cost 15-30 ms of each command's start-up."""
    found = _dist_info_version()
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DIST)
    except PackageNotFoundError:
        return UNKNOWN


def _dist_info_version() -> str | None:
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # not a directory (a zip), or gone
            continue
        for name in names:
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and "-" not in name[len(_PREFIX):-len(_SUFFIX)]:
                try:
                    with open(os.path.join(entry or ".", name, "METADATA"), encoding="utf-8") as fh:
                        for line in fh:
                            if line.startswith("Version:"):
                                return line.partition(":")[2].strip()
                            if not line.strip():  # the headers end at the first empty line
                                break
                except OSError:
                    pass
                return None  # a dist-info without a readable version: let importlib.metadata decide
    return None


def __getattr__(name: str) -> str:  # PEP 562: ``from casreg._version import __version__`` reads it lazily
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
