"""``casreg verify`` and ``casreg gc``: check the store, and reclaim what no version uses."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from casreg.errors import IntegrityError, InvalidInputError
from casreg.records import JsonValue
from casreg_cli.common import Cli, SignKeyOpt, app, command
from casreg_cli.output import Output, human_bytes

LIST_LIMIT = 20


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith(('x', 's')) else 's'}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@command(app, example='casreg verify fraud-detector@production')
def verify(
    cli: Cli,
    ref: Annotated[Optional[str], typer.Argument(
        help="Verify only this version (default: the whole registry).")] = None,
    read_data: Annotated[bool, typer.Option(
        "--read-data", help="Also read every distinct file whole and check its file digest "
                            "(each file once, however many versions hold it).")] = False,
) -> None:
    """Re-read and re-hash everything reachable (or one version); report bad or missing objects.

    Exit status 0 when everything verifies, 6 otherwise (one line per bad object on stderr)."""
    out = cli.out
    report = cli.registry().verify(ref, progress=out.progress(), read_data=read_data)
    if out.as_json:
        out.json(report.to_dict())
    else:
        for w in report.warnings:
            out.warn(w)
        for p in report.problems:
            out.warn(p.line(), prefix="casreg: ")
        what = f"{ref} ({report.digest})" if ref else report.url
        scope = (f"{_plural(report.manifests, 'manifest')}, {_plural(report.chunks, 'chunk')} in "
                 f"{_plural(report.packs, 'pack')}" + (f", {_plural(report.indexes, 'index')}" if ref is None else "")
                 + (f", {_plural(report.files_hashed, 'file')} hashed ({human_bytes(report.bytes_hashed)})"
                    if report.read_data else "")
                 + f", {human_bytes(report.bytes_read)} read")
        if report.ok:
            extra = ""
            if ref is None and (report.unreferenced_packs or report.unreferenced_manifests):
                extra = (f"; {report.unreferenced_packs} pack(s) and {report.unreferenced_manifests} manifest(s) "
                         "no version references (casreg gc reclaims them)")
            deleted = f" ({report.deleted_versions} deleted)" if report.deleted_versions else ""
            out.line(f"verified {what}: {_plural(report.versions, 'version')}{deleted}, {scope}: all good{extra}")
        for n in report.notes:  # what was not checked, and why: part of the result, not a warning
            out.line(f"note: {n}")
    if not report.ok:  # the CLI prints it as the last line, "casreg: error: ...", and exits 6
        raise IntegrityError(f"verify found {_plural(len(report.problems), 'bad or missing object')} in "
                             f"{ref or report.url}")


@command(app, example='casreg gc --dry-run')
def gc(
    cli: Cli,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", help="Report what would be condemned and deleted; change nothing.")] = False,
    grace: Annotated[str, typer.Option(
        metavar="DURATION", help="Only condemn objects older than this (e.g. 24h, 90m, 2d).")] = "24h",
    delay: Annotated[str, typer.Option(
        metavar="DURATION", help="Delete condemned objects only this long after they were "
                                 "condemned; must exceed any push's check-to-commit time.")] = "1h",
    retain: Annotated[bool, typer.Option(
        "--retain", help="First apply the policy's retention rules ([retention]): delete the versions they do "
                         "not keep (docs/retention.md).")] = False,
    key: SignKeyOpt = None,
) -> None:
    """Reclaim objects no version references: condemn unreachable objects older than
    --grace, and delete those condemned at least --delay ago that are still unreachable
    (safe while others push; see docs/gc.md)."""
    from casreg.maintenance.gc import parse_duration

    out = cli.out
    durations = []
    for flag, text in (("--grace", grace), ("--delay", delay)):
        try:
            durations.append(parse_duration(text))
        except ValueError as err:
            raise typer.BadParameter(str(err).removeprefix("invalid duration "), param_hint=flag) from None
    g, d = durations
    if key is not None and not retain:
        raise InvalidInputError("--key signs the delete events of --retain: it needs --retain")
    report = cli.registry().gc(dry_run=dry_run, grace=g, delay=d, retain=retain, key=key)
    if out.as_json:
        out.json(report.to_dict())
        return
    for w in report.warnings:
        out.warn(w)
    if retain:
        _retained(out, report.retention, dry_run)
    verb = "would delete" if dry_run else "deleted"
    out.line(f"{verb} {_plural(len(report.deleted), 'object')} ({human_bytes(report.deleted_bytes)})"
             + (f" from {_plural(len(report.swept_records), 'condemnation record')}" if report.swept_records else "")
             + (f"; kept {len(report.spared)} condemned object(s) that are in use again" if report.spared else ""))
    if report.condemned:
        verb = "would condemn" if dry_run else "condemned"
        when = (f": deleted by a gc run after {report.pending[-1].sweep_after.isoformat(timespec='seconds')}"
                if report.record else "")
        out.line(f"{verb} {_plural(len(report.condemned), 'unreferenced object')} older than "
                 f"{_duration(report.grace_seconds)} "
                 f"({human_bytes(report.condemned_bytes)}){when}")
    else:
        out.line(f"nothing new to condemn (no unreferenced object is older than {_duration(report.grace_seconds)})")
    if report.superseded_bundles:
        out.line(f"{'would remove' if dry_run else 'removed'} "
                 f"{_plural(len(report.superseded_bundles), 'superseded index bundle')}")
    waiting = [p for p in report.pending if p.key != report.record]
    if waiting:
        out.line(f"{_plural(len(waiting), 'earlier condemnation')} not yet due "
                 f"({sum(p.objects for p in waiting)} object(s), {human_bytes(sum(p.bytes for p in waiting))}; "
                 f"the first after {min(p.sweep_after for p in waiting).isoformat(timespec='seconds')})")
    if report.repack_bytes:
        out.line(f"reclaimable by repacking: {human_bytes(report.repack_bytes)} of unreferenced chunks in "
                 f"{_plural(report.repack_packs, 'pack')} still in use (not repacked by gc)")
    for o in report.deleted[:LIST_LIMIT]:
        out.line(f"  {'would delete' if dry_run else 'deleted'} {o.key} ({human_bytes(o.size)})")
    if len(report.deleted) > LIST_LIMIT:
        out.line(f"  ... and {len(report.deleted) - LIST_LIMIT} more (--json lists them all)")


def _retained(out: Output, plans: list[dict[str, JsonValue]], dry_run: bool) -> None:
    """``gc --retain``: one line per model the policy's retention rules apply to."""
    if not plans:
        out.line("no retention rule applies (the policy has no [retention])")
    verb = "would delete" if dry_run else "deleted"
    for p in plans:
        doomed = p.get("delete")
        refs = [f"{p['name']}:{v['version']}" for v in doomed if isinstance(v, dict)] if isinstance(doomed, list) \
            else []
        shown = ", ".join(refs[:10]) + (f", ... ({len(refs) - 10} more)" if len(refs) > 10 else "")
        out.line(f"retention {p['name']}: {p['description']}: {verb} {_plural(len(refs), 'version')}"
                 + (f" ({shown})" if refs else ""))
