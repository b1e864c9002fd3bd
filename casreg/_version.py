"""The package version, read from the installed package's metadata (``importlib.metadata``).

pyproject.toml's ``[project] version`` is the one place it is written; ``casreg
--version``, ``casreg.__version__``, the ``casreg_version`` every push records, the hooks'
User-Agent and the web page all read it from here. It is read on first use, not at
import (reading metadata scans ``sys.path``: commands that never show it never pay).
"""

from __future__ import annotations

import functools

__all__ = ["package_version"]  # and __version__, through __getattr__

#: What :func:`package_version` says when casreg runs from a source tree that was never
#: installed (no metadata to read).
UNKNOWN = "0+unknown"


@functools.cache
def package_version() -> str:
    """The installed distribution's version (``UNKNOWN`` if casreg is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("casreg")
    except PackageNotFoundError:
        return UNKNOWN


def __getattr__(name: str) -> str:  # PEP 562: ``from casreg._version import __version__`` reads it lazily
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
