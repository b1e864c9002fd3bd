"""What the ``casreg`` process does not import: numpy and pandas, unless casreg asks.

pyarrow imports numpy (with ``pyarrow.lib``) and pandas (on its first conversion of
Python values) when they are installed, and treats an ImportError as "not installed"; no
command needs them for that. Measured on a 512 MiB push here: pandas cost 0.3 to 0.5 s,
numpy 65 ms of start-up plus ~0.1 s of CPU that OpenBLAS's idle worker threads spend
spinning while casreg's own threads need both cores; under load, importing numpy took
0.35 s. So the CLI installs :class:`NumpyGate` first on ``sys.meta_path``:

- an import of numpy (or any of its modules) asked for by casreg's own code is let
  through: the ``planes`` codec (casreg/content/planes.py) codes and decodes tensor data
  with numpy where its C loops were not built, the delta codec and the float probe always,
  so a push or pull of a model's weights may load it, and nothing else does;
- the modules numpy imports while it loads are let through too;
- an import of numpy by anyone else (pyarrow), and of pandas by anyone, fails as if it
  were not installed.

:func:`allow_all` lifts the gate (``casreg import mlflow``: MLflow needs both).
"""

from __future__ import annotations

import sys
from types import FrameType

__all__ = ["NumpyGate", "install", "allow_all"]

_LET_IN = ("casreg.", "casreg_cli.", "numpy")  # importers numpy may be loaded for
_MACHINERY = ("importlib", "_frozen_importlib")


def _importer(frame: FrameType | None) -> str:
    """The module whose code asked for the import in progress: the first frame outside
    the import machinery (``""`` when there is none)."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not isinstance(name, str) or not name.startswith(_MACHINERY):
            return name if isinstance(name, str) else ""
        frame = frame.f_back
    return ""


class NumpyGate:
    """An import hook: numpy only for casreg's own code, pandas never (module docstring)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        top = name.partition(".")[0]
        if top == "pandas":
            raise ImportError(f"the casreg CLI does not load {name}")
        if top == "numpy" and not _importer(sys._getframe(1)).startswith(_LET_IN):
            raise ImportError(f"the casreg CLI does not load {name} for this")
        return None


def install() -> None:
    """Put the gate first on ``sys.meta_path`` (unless numpy or pandas is loaded already:
    then there is nothing left to save)."""
    if not any(m in sys.modules for m in ("numpy", "pandas")):
        sys.meta_path.insert(0, NumpyGate())


def allow_all() -> None:
    """Remove the gate: every later import behaves as in any Python process."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, NumpyGate)]
