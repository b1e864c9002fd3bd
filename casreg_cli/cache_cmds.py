"""``casreg cache info|prune|clear``: the local chunk cache (docs/cache.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from casreg_cli.common import Cli, app, command
from casreg_cli.output import human_bytes

if TYPE_CHECKING:
    from casreg.content.cache import ChunkCache

cache_app = typer.Typer(help="The local chunk cache of remote registries (docs/cache.md).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

DirOpt = Annotated[
    Optional[str],
    typer.Option("--dir", envvar="CASREG_CACHE_DIR", show_envvar=True,
                 help="Cache directory (default $XDG_CACHE_HOME/casreg, else ~/.cache/casreg)."),
]


def _cache(directory: str | None, max_size: str | None = None) -> ChunkCache:
    from casreg.content.cache import ChunkCache

    return ChunkCache(directory or None, max_size=max_size)


def _n(count: int, noun: str) -> str:
    plural = {"entry": "entries", "pack index": "pack indexes"}.get(noun, noun + "s")
    return f"{count:,} {noun if count == 1 else plural}"


@command(cache_app, "info", registry=False, example='casreg cache info')
def info(cli: Cli, directory: DirOpt = None) -> None:
    """Where the cache is, how many chunks and bytes it holds, and its size bound."""
    out = cli.out
    res = _cache(directory).info()
    if out.as_json:
        out.json(res.to_dict())
        return
    out.line(f"cache     {res.path}")
    out.line(f"entries   {res.entries:,} chunks, {human_bytes(res.bytes)}")
    out.line(f"indexes   {_n(res.indexes, 'pack index')} of the registries pushed to, {human_bytes(res.index_bytes)}")
    if res.bundles:
        out.line(f"bundles   {_n(res.bundles, 'index bundle')}, {human_bytes(res.bundle_bytes)}")
    out.line(f"max size  {human_bytes(res.max_size)} (CASREG_CACHE_MAX_SIZE)")
    used = {"auto": "remote registries (s3://)", "on": "every registry", "off": "no registry"}[res.mode]
    out.line(f"used by   {used} (CASREG_CACHE={res.mode})")


@command(cache_app, "prune", registry=False, example='casreg cache prune --max-size 10GiB')
def prune(
    cli: Cli,
    max_size: Annotated[Optional[str], typer.Option(
        "--max-size",
        help="Keep at most this much, e.g. 10GB or 500MiB (default: CASREG_CACHE_MAX_SIZE or 20GiB).")] = None,
    directory: DirOpt = None,
) -> None:
    """Delete least recently used entries (chunks, pack indexes, index bundles) until the cache fits in --max-size."""
    out = cli.out
    res = _cache(directory).prune(max_size)
    if out.as_json:
        out.json(res.to_dict())
        return
    out.line(f"removed {_n(res.removed_entries, 'entry')} ({human_bytes(res.removed_bytes)}); "
             f"{_n(res.entries, 'entry')} ({human_bytes(res.bytes)}) remain, limit {human_bytes(res.max_size)}")


@command(cache_app, "clear", registry=False, example='casreg cache clear')
def clear(cli: Cli, directory: DirOpt = None) -> None:
    """Delete every cached chunk, pack index and index bundle (they are fetched again when next needed)."""
    out = cli.out
    res = _cache(directory).clear()
    if out.as_json:
        out.json(res.to_dict())
        return
    out.line(f"removed {_n(res.removed_entries, 'entry')} ({human_bytes(res.removed_bytes)})")
