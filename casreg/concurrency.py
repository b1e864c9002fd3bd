"""Running many small I/O-bound calls at once, with bounded memory.

A remote store answers each read in a round trip; reading thousands of small objects one
after another would take thousands of round trips. These helpers run such calls on a
thread pool while keeping results in order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["bounded_map", "io_threads", "map_concurrently"]

T = TypeVar("T")
R = TypeVar("R")


def map_concurrently(fn: Callable[[T], R], items: Sequence[T], *, threads: int = 16) -> list[R]:
    """``[fn(i) for i in items]``, on a thread pool when there are more than a few."""
    if len(items) <= 4:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor  # only when needed: resolving imports this module

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``window``
    results pending: memory stays bounded however many items there are."""
    from concurrent.futures import ThreadPoolExecutor

    window = window or 2 * workers
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="casreg-io") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def io_threads(threads: int | None) -> int:
    """Threads for I/O-bound work: ``threads`` if given, else 4 per core up to 16."""
    return threads or min(16, 4 * (os.cpu_count() or 2))
