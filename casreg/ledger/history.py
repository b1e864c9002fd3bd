"""A model's history of events: the ledger's event segments, plus the moves that only
an alias pointer holds yet.

Each pointer holds the complete event of its last move, appended to the ledger right
after the swap (:mod:`casreg.ledger.pointers`); a crash between the two leaves that move
in the pointer only. Reading history merges the two, so it never misses the current state
of an alias.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from casreg.errors import NotFoundError
from casreg.keys import REGISTRY_EVENTS
from casreg.ledger.events import implied_events
from casreg.ledger.pointers import read_pointer_events
from casreg.ledger.segments import events_table
from casreg.records import AliasEvent
from casreg.storage import ObjectStore

__all__ = ["read_all_events", "read_events"]


def _rows_to_events(rows: Iterable[dict[str, Any]]) -> list[AliasEvent]:
    return [AliasEvent.from_dict(r) for r in rows]


def read_events(store: ObjectStore, name: str, *, pointers: bool | Sequence[AliasEvent] = True,
                registry_wide: bool = False) -> list[AliasEvent]:
    """Every event of model ``name``, oldest first (ties broken by id). ``pointers``: also
    the moves held by the model's pointers whose ledger append a crash may have cut off
    (each pointer holds its last move), so history never misses the current state; a
    caller that has just read them (:func:`~casreg.ledger.pointers.read_pointer_events`) passes
    them instead. ``registry_wide``: interleave the registry's own events (policy changes)."""
    if pointers is True:  # the usual call: kept while the ledger of ``name`` is unchanged
        from blake3 import blake3

        from casreg.keys import EVENTS, HEAD_KEY, POINTERS
        from casreg.ledger.cache import cached_under
        from casreg.ledger.head import MAX_HEAD_BYTES
        from casreg.storage import ByteRange

        try:  # bounded as read_head reads it: only its digest is kept
            head = blake3(store.read(HEAD_KEY, ByteRange(0, MAX_HEAD_BYTES + 1))).hexdigest()
        except NotFoundError:
            head = "-"
        prefixes = (f"{EVENTS}/{name}", f"{POINTERS}/{name}") + ((f"{EVENTS}/{REGISTRY_EVENTS}",)
                                                                  if registry_wide else ())
        return list(cached_under(store, prefixes, f"events of {name} ({registry_wide}) under HEAD {head}",
                                 lambda: _read_events(store, name, True, registry_wide)))
    return _read_events(store, name, pointers, registry_wide)


def _read_events(store: ObjectStore, name: str, pointers: bool | Sequence[AliasEvent],
                 registry_wide: bool) -> list[AliasEvent]:
    events = _rows_to_events(events_table(store, name=name).to_pylist())
    if registry_wide:
        events += _rows_to_events(events_table(store, name=REGISTRY_EVENTS).to_pylist())
    if pointers is True:
        pointers = read_pointer_events(store, name)
    if pointers:
        seen = {e.event_id for e in events}
        for e in pointers:
            if e.event_id not in seen:
                events.append(e)
                events.extend(implied_events(e))
    events.sort(key=lambda e: (e.time, e.event_id))
    return events


def read_all_events(store: ObjectStore, kinds: Collection[str]) -> list[AliasEvent]:
    """The events of kinds ``kinds`` of every model, oldest first (ties broken by id), from
    one read of the whole event table (rows of other kinds are dropped before they are
    decoded), plus, as :func:`read_events` adds them, the moves only a pointer holds yet and
    what they imply: for a listing of every model, instead of one read per model."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = events_table(store, sort=False)
    table = table.filter(pc.is_in(table["kind"], value_set=pa.array(sorted(kinds), pa.string())))
    events = _rows_to_events(table.to_pylist())
    seen = {e.event_id for e in events}
    for e in read_pointer_events(store, None):
        if e.event_id not in seen:
            events.extend(x for x in (e, *implied_events(e)) if x.kind in kinds)
    events.sort(key=lambda e: (e.time, e.event_id))
    return events
