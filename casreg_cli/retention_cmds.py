"""Deletion and retention commands: delete, retain (docs/retention.md). ``gc --retain``
is an option of ``gc`` (casreg_cli/ops.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from casreg.errors import InvalidInputError
from casreg.refs import RefKind, parse_ref
from casreg_cli.common import Cli, SignKeyOpt, app, command, complete_model, complete_ref
from casreg_cli.output import Output, human_bytes, plural

if TYPE_CHECKING:  # loaded by the commands that need it: every other command's start-up skipped it
    from casreg.governance.retention import RetentionPlan

#: Versions listed one per line before "... and N more" (--json lists them all).
LIST_LIMIT = 50


@command(app, example='casreg delete fraud-detector:3 --reason "leaked PII in the training data"')
def delete(
    cli: Cli,
    ref: Annotated[str, typer.Argument(metavar="NAME:N", help="The version to delete: NAME:N (or NAME@blake3:HEX).",
                                       autocompletion=complete_ref)],
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded in the ledger).")],
    key: SignKeyOpt = None,
) -> None:
    """Delete a version: record a tombstone (the ledger keeps its record); it no longer
    resolves or pulls, and gc reclaims what no other version uses. Refused while an alias
    points at it or when the policy forbids it."""
    r = parse_ref(ref)
    if r.name is None or r.kind not in (RefKind.NUMBER, RefKind.DIGEST):
        raise InvalidInputError(f"{ref!r} does not name one version: give NAME:N (aliases are never deleted: "
                                "a version an alias points at cannot be)")
    target: str | int = r.number if r.kind is RefKind.NUMBER and r.number is not None else ref
    d = cli.registry().delete(r.name, target, reason=reason, key=key)
    for w in d.warnings:
        cli.out.warn(w)
    cli.emit(d.to_dict(), lambda out: out.line(f"deleted {d.ref}  {d.version.digest} (gc reclaims its storage)"))


@command(app, example="casreg retain fraud-detector --keep-last 20 --keep-stages --keep-since 90d --dry-run")
def retain(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Model name.", autocompletion=complete_model)],
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", metavar="N", min=1,
                                                     help="Keep the newest N versions.")] = None,
    keep_since: Annotated[Optional[str], typer.Option("--keep-since", metavar="AGE",
                                                      help="Keep versions younger than this (e.g. 90d, 12w, 36h).")]
    = None,
    keep_stages: Annotated[bool, typer.Option("--keep-stages", help="Keep versions ever in staging or production "
                                                                     "(those at an alias are always kept).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="List what would be deleted; delete nothing.")]
    = False,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why (recorded with each deletion; default: "
                                                  "the rule).")] = None,
    key: SignKeyOpt = None,
) -> None:
    """Apply a retention rule to NAME: list what it does not keep and the bytes gc then
    reclaims, and delete those versions (tombstones) unless --dry-run. Versions at an alias
    and versions the policy protects are always kept."""
    plan = cli.registry().retain(name, keep_last=keep_last, keep_since=keep_since, keep_stages=keep_stages,
                                 dry_run=dry_run, reason=reason, key=key)
    for d in plan.deleted:
        for w in d.warnings:
            cli.out.warn(w)
    cli.emit(plan.to_dict(), lambda out: render_plan(out, plan))


def render_plan(out: Output, plan: RetentionPlan) -> None:
    """A retention plan for humans: the rule, what it deletes, what gc then reclaims."""
    verb = "would delete" if plan.dry_run else "deleted"
    out.line(f"{plan.name}: {plan.rule.describe()}; {verb} {plural(len(plan.delete), 'version')}, "
             f"kept {len(plan.keep)}" + (f" ({len(plan.already_deleted)} deleted before)"
                                         if plan.already_deleted else ""))
    for v in plan.delete[:LIST_LIMIT]:
        out.line(f"  {verb} {v.ref}  {v.digest[:19]}  {human_bytes(v.size)}  "
                 f"{v.created_at.strftime('%Y-%m-%d %H:%M:%S')}")
    if len(plan.delete) > LIST_LIMIT:
        out.line(f"  ... and {len(plan.delete) - LIST_LIMIT} more (--json lists them all)")
    for k in plan.keep[:LIST_LIMIT]:
        out.line(f"  keep {plan.name}:{k.version}  ({k.why})")
    if len(plan.keep) > LIST_LIMIT:
        out.line(f"  ... and {len(plan.keep) - LIST_LIMIT} more kept")
    if plan.delete:
        out.line(f"gc then reclaims {human_bytes(plan.frees_bytes)} in {plural(plan.frees_objects, 'object')}"
                 + (f"; {human_bytes(plan.repack_bytes)} more only by repacking (in packs kept versions use)"
                    if plan.repack_bytes else ""))
