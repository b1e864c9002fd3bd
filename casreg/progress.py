"""Progress reporting without a UI dependency: the core calls a :class:`Progress`, the
CLI renders it (a bar on a terminal, nothing with ``--quiet``)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress", "NullProgress"]


class Progress(Protocol):
    def start(self, label: str, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Reports nothing; the default for library calls."""

    def start(self, label: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass
