"""``casreg compact``: merge the ledger's one-row segments into a few compacted files, and
the pack indexes into one index bundle."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from casreg_cli.common import Cli, app, command


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


@command(app, example='casreg compact --full')
def compact(
    cli: Cli,
    full: Annotated[bool, typer.Option("--full", help="Merge everything into one file per table.")] = False,
    grace: Annotated[float, typer.Option(min=0, help="Keep superseded compacted files younger than this many "
                                                    "minutes (a concurrent compaction may still need them).")] = 60,
    bundle_at: Annotated[int, typer.Option(min=0, help="Bundle the pack indexes into one object when at least this "
                                                       "many are not bundled yet (0: never).")] = 1000,
) -> None:
    """Compact the ledger: safe while others push, move aliases or compact; the
    per-version segments are kept (they allocate the version numbers). Then bundle the
    pack indexes, so that a push reads a few large ranges instead of an object per pack."""
    out = cli.out
    registry = cli.registry()
    res = registry.compact(full=full, grace=timedelta(minutes=grace))
    bundle = registry.bundle_indexes(at_least=bundle_at) if bundle_at else None
    if out.as_json:
        out.json({**res.to_dict(), "index_bundle": None if bundle is None else bundle.to_dict()})
        return
    if res.changed:
        out.line(f"compacted {_n(res.versions_added, 'new version record')} and {_n(res.events_added, 'new event')}; "
                 f"the compacted ledger holds {_n(res.versions_total, 'version')} and {_n(res.events_total, 'event')} "
                 f"(generation {res.generation}, {res.seconds:.2f} s)")
    elif res.generation:
        out.line(f"nothing to compact: the compacted ledger already holds every segment "
                 f"({_n(res.versions_total, 'version')}, {_n(res.events_total, 'event')})")
    else:
        out.line("nothing to compact: the ledger is empty")
    if res.removed:
        out.line(f"removed {_n(len(res.removed), 'superseded compacted file')}")
    if bundle is not None and bundle.key is not None:
        out.line(f"bundled {_n(bundle.packs, 'pack index')} ({bundle.size:,} bytes) into {bundle.key}"
                 + (f"; removed {_n(len(bundle.removed), 'older bundle')}" if bundle.removed else ""))
