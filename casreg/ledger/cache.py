"""What readers of the ledger may keep between calls, and when it is still valid.

- **Compacted files** are immutable and named by HEAD with their size and BLAKE3: once
  read and checked, their decoded rows are kept (a few files, least recently used first
  out) and served for any HEAD that lists them, whichever store asks (the BLAKE3 names
  the bytes). Rows of one model come from an index built once per file.
- **Listings** are kept per store and prefix with the store's
  :meth:`~casreg.storage.ObjectStore.listing_token`; a listing is reused only while the
  token is unchanged, and never where the store cannot give one (``None``): those list
  every time, as before.

Nothing here changes what a reader sees: only when it has to read it again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = ["cached_list", "cached_under", "compacted_rows", "clear"]

#: Decoded compacted files kept (a HEAD lists O(log rows) files per table).
MAX_FILES = 12
#: Listings kept (one per store and prefix asked for).
MAX_LISTINGS = 4096

_lock = threading.Lock()
_files: OrderedDict[tuple[str, int, str, str], _Rows] = OrderedDict()
_listings: OrderedDict[tuple[str, str, str], tuple[Hashable, list[str]]] = OrderedDict()
_derived: OrderedDict[tuple[str, str, str, str], tuple[Hashable, object]] = OrderedDict()
_checked: dict[tuple[str, str, str], tuple[Hashable, str]] = {}
T = TypeVar("T")


class _Rows:
    """One compacted file's rows (in the full schema of its table) and, per model, the
    runs of rows that hold it."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._runs: dict[str, list[tuple[int, int]]] | None = None

    def runs(self) -> dict[str, list[tuple[int, int]]]:
        if self._runs is None:
            runs: dict[str, list[tuple[int, int]]] = {}
            prev, start = None, 0
            names = self.table.column("name").to_pylist()
            for i, n in enumerate(names):
                if n != prev:
                    if prev is not None:
                        runs.setdefault(prev, []).append((start, i))
                    prev, start = n, i
            if prev is not None:
                runs.setdefault(prev, []).append((start, len(names)))
            self._runs = runs
        return self._runs

    def of(self, name: str | None) -> pa.Table:
        import pyarrow as pa

        if name is None:
            return self.table
        parts = [self.table.slice(a, b - a) for a, b in self.runs().get(name, [])]
        return pa.concat_tables(parts) if parts else self.table.schema.empty_table()


class Compacted(Protocol):
    """A compacted file as HEAD lists it (:class:`casreg.ledger.head.CompactedFile`)."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def blake3(self) -> str: ...


def compacted_rows(store: ObjectStore, f: Compacted, schema: pa.Schema, read: Callable[[], bytes],
                   decode: Callable[[bytes], pa.Table], name: str | None = None) -> pa.Table:
    """The rows of compacted file ``f`` (of model ``name`` only, if given) in ``schema``
    (the full schema of its table), as ``read()`` (:func:`~casreg.ledger.head.read_compacted`)
    reads and checks them and ``decode(data)`` decodes and checks every row of them
    (raising what they raise: a file that does not decode as HEAD says is unavailable,
    so readers use the segments). The file is read and checked again unless
    the store's listing token of its directory is the one it had when this store's copy
    was last checked (deleting or replacing the file moves it); the decoded rows are
    kept by content (key, size, BLAKE3), so a re-check does not decode again."""
    key = (f.key, f.size, f.blake3, str(schema))
    where = f.key.rsplit("/", 1)[0]
    token = store.listing_token(where)
    checked = (type(store).__name__, store.url, f.key)
    with _lock:
        rows = _files.get(key)
        if rows is not None:
            _files.move_to_end(key)
        fresh = token is not None and _checked.get(checked) == (token, f.blake3)
    if fresh and rows is not None:
        return rows.of(name)
    data = read()
    if rows is None:
        rows = _Rows(decode(data))
    with _lock:
        _files[key] = rows
        while len(_files) > MAX_FILES:
            _files.popitem(last=False)
        if token is not None:
            _checked[checked] = (token, f.blake3)
            while len(_checked) > MAX_LISTINGS:
                _checked.pop(next(iter(_checked)))
    return rows.of(name)


def cached_list(store: ObjectStore, prefix: str) -> list[str]:
    """``list(store.list(prefix))``, reused while the store's listing token for
    ``prefix`` is unchanged (a store without tokens lists every time)."""
    token = store.listing_token(prefix)
    if token is None:
        return list(store.list(prefix))
    key = (type(store).__name__, store.url, prefix)
    with _lock:
        hit = _listings.get(key)
        if hit is not None and hit[0] == token:
            _listings.move_to_end(key)
            return hit[1]
    keys = list(store.list(prefix))
    if store.listing_token(prefix) == token:  # nothing changed while listing
        with _lock:
            _listings[key] = (token, keys)
            while len(_listings) > MAX_LISTINGS:
                _listings.popitem(last=False)
    return keys


def cached_under(store: ObjectStore, prefix: str | tuple[str, ...], what: str, derive: Callable[[], T]) -> T:
    """``derive()``, a value made from the objects under ``prefix`` (one or several: their
    keys and the bytes of each: casreg publishes and swaps objects by linking or renaming
    them into place, which moves the token), reused while the store's listing tokens for
    them are unchanged; ``what`` names the value (and anything else it depends on).
    Callers must not mutate it."""
    prefixes = (prefix,) if isinstance(prefix, str) else prefix
    token = _tokens(store, prefixes)
    if token is None:
        return derive()
    key = (type(store).__name__, store.url, "|".join(prefixes), what)
    with _lock:
        hit = _derived.get(key)
        if hit is not None and hit[0] == token:
            _derived.move_to_end(key)
            return cast(T, hit[1])
    value = derive()
    if _tokens(store, prefixes) == token:
        with _lock:
            _derived[key] = (token, value)
            while len(_derived) > MAX_LISTINGS:
                _derived.popitem(last=False)
    return value


_covered: OrderedDict[tuple[object, ...], frozenset[str]] = OrderedDict()


def covered_keys(files: Sequence[Compacted] | None, compacted: pa.Table) -> frozenset[str]:
    """The event segment keys ``compacted`` (the rows HEAD's compacted events ``files``
    hold, of every model or one) covers; kept per set of files (by BLAKE3) and rows."""
    from casreg.ledger.schema import SEGMENT_COLUMN

    if files is None:
        return frozenset(compacted.column(SEGMENT_COLUMN).to_pylist())
    key = (tuple(f.blake3 for f in files), compacted.num_rows,
           compacted.column("name")[0].as_py() if compacted.num_rows else None)
    with _lock:
        hit = _covered.get(key)
    if hit is not None:
        return hit
    keys = frozenset(compacted.column(SEGMENT_COLUMN).to_pylist())
    with _lock:
        _covered[key] = keys
        while len(_covered) > MAX_FILES:
            _covered.popitem(last=False)
    return keys


def _tokens(store: ObjectStore, prefixes: tuple[str, ...]) -> tuple[Hashable, ...] | None:
    tokens = tuple(store.listing_token(p) for p in prefixes)
    return None if any(t is None for t in tokens) else tokens


def clear() -> None:
    """Forget everything kept (tests; a long-lived process that wants memory back)."""
    with _lock:
        _files.clear()
        _listings.clear()
        _derived.clear()
        _checked.clear()
        _covered.clear()
