"""Lifecycle commands: promote, archive, rollback, approve, reject, log, diff, policy."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from casreg.errors import InvalidInputError, NotFoundError
from casreg_cli.common import (
    AnnotateOpt,
    Cli,
    ReasonOpt,
    RefArg,
    SignKeyOpt,
    app,
    command,
    complete_model,
    complete_ref,
    name_alias,
    pairs,
)
from casreg_cli.output import Output, human_bytes

if TYPE_CHECKING:
    from casreg import Registry
    from casreg.governance.diff import VersionDiff
    from casreg.governance.event_signing import EventCheck
    from casreg.governance.history import LogEntry

policy_app = typer.Typer(help="The registry's policy: required metadata, gates, approvals, roles.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")

NameArg = Annotated[str, typer.Argument(help="Model name.", autocompletion=complete_model)]
LogNameArg = Annotated[str, typer.Argument(help="Model name, or _registry for policy and hooks changes.",
                                           autocompletion=complete_model)]
VersionArg = Annotated[str, typer.Argument(metavar="REF", help="A version of NAME: N, NAME:N, NAME@ALIAS or a digest.")]


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


@command(app, example='casreg promote fraud-detector 2 production --reason "beats v1 on auc"')
def promote(
    cli: Cli,
    name: NameArg,
    ref: VersionArg,
    stage: Annotated[str, typer.Argument(
        help="staging, production, archived, or an alias the policy gates ([gates.NAME]); other aliases are set "
             "with casreg alias set.")],
    reason: ReasonOpt = None,
    keep_previous: Annotated[bool, typer.Option("--keep-previous", help="Promoting to production: do not "
                                                "archive the version it replaces.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Evaluate the gates; change nothing.")] = False,
    annotate: AnnotateOpt = None,
    if_current: Annotated[Optional[str], typer.Option("--if-current", metavar="REF", help="Only if STAGE still "
                                                      "points at this version (else a conflict error).")] = None,
    key: SignKeyOpt = None,
) -> None:
    """Move NAME@STAGE to a version once the policy's gates pass (production archives the previous one)."""
    out = cli.out
    result = cli.registry().promote(name, ref, stage, reason=reason, keep_previous=keep_previous,
                                        dry_run=dry_run, annotations=pairs("annotate", annotate),
                                        if_current=if_current, key=key)
    if out.as_json:
        out.json(result.to_dict())
    else:
        for c in result.checks:
            out.line(f"  {'pass' if c.passed else 'FAIL'}  {c.rule}: {c.detail}")
        if dry_run:
            verdict = "would be allowed" if result.allowed else "would be refused"
            out.line(f"dry run: promotion of {name}:{result.version} to {stage} {verdict}; nothing changed")
        elif not result.changed:
            out.line(f"{name}@{stage} is already {name}:{result.version}; nothing changed")
        else:
            was = f" (was {name}:{result.previous})" if result.previous else ""
            out.line(f"{name}@{stage} -> {name}:{result.version}  {result.digest}{was}")
            if result.archived:
                out.line(f"archived {name}:{result.archived}")
    if dry_run and not result.allowed:
        raise typer.Exit(8)


@command(app, example='casreg archive fraud-detector 1 --reason superseded')
def archive(
    cli: Cli,
    name: NameArg,
    ref: VersionArg,
    reason: ReasonOpt = None,
    key: SignKeyOpt = None,
) -> None:
    """Archive a version (kept and pullable; listed by ls --stage archived)."""
    out = cli.out
    ev = cli.registry().archive(name, ref, reason=reason, key=key)
    if out.as_json:
        out.json(ev.to_dict())
    else:
        out.line(f"archived {name}:{ev.to_version}")


@command(app, example='casreg rollback fraud-detector@production --reason "latency regression"')
def rollback(
    cli: Cli,
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS", autocompletion=complete_ref)],
    reason: ReasonOpt = None,
    keep_previous: Annotated[bool, typer.Option("--keep-previous", help="Rolling back production: do not "
                                                "archive the version it leaves.")] = False,
    key: SignKeyOpt = None,
) -> None:
    """Move NAME@ALIAS back to its previous target (a new recorded event)."""
    out = cli.out
    name, alias = name_alias(target)
    ev = cli.registry().rollback(name, alias, reason=reason, keep_previous=keep_previous, key=key)
    if out.as_json:
        out.json(ev.to_dict())
    else:
        out.line(f"{name}@{alias} -> {name}:{ev.to_version}  {ev.to_digest} "
                 f"(rolled back from {name}:{ev.from_version})")


def _decide(cli: Cli, approve: bool, name: str, ref: str, stage: str, comment: str | None,
            key: str | None = None) -> None:
    out = cli.out
    reg = cli.registry()
    ev = reg.approve(name, ref, stage=stage, comment=comment, key=key) if approve else reg.reject(
        name, ref, stage=stage, comment=comment, key=key)
    if out.as_json:
        out.json(ev.to_dict())
    else:
        out.line(f"{'approved' if approve else 'rejected'} {name}:{ev.to_version} for {stage} as {ev.author}")


StageOpt = Annotated[str, typer.Option("--stage", help="The stage (or alias) the decision is for.")]
CommentOpt = Annotated[Optional[str], typer.Option("--comment", help="Recorded with the decision.")]


@command(app, example='casreg approve fraud-detector 2 --stage production --comment reviewed')
def approve(cli: Cli, name: NameArg, ref: VersionArg, stage: StageOpt = "production",
            comment: CommentOpt = None, key: SignKeyOpt = None) -> None:
    """Approve a version for a stage (as the current author: CASREG_USER, git email or OS user)."""
    _decide(cli, True, name, ref, stage, comment, key)


@command(app, example='casreg reject fraud-detector 2 --stage production --comment "fails the bias review"')
def reject(cli: Cli, name: NameArg, ref: VersionArg, stage: StageOpt = "production",
           comment: CommentOpt = None, key: SignKeyOpt = None) -> None:
    """Reject a version for a stage; a standing rejection fails the stage's approval gate."""
    _decide(cli, False, name, ref, stage, comment, key)


def _ver(n: int | None, name: str) -> str:
    return f"{name}:{n}" if n is not None else ""


@command(app, "log", example='casreg log fraud-detector --alias production --since 2026-10-01')
def log_(
    cli: Cli,
    name: LogNameArg,
    alias: Annotated[Optional[str], typer.Option("--alias", help="Only this alias's moves and approvals.")] = None,
    kind: Annotated[Optional[list[str]], typer.Option("--kind", help="Only these kinds (push, promote, "
                                                      "alias.set, rollback, archive, approve, ...).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="ISO 8601 time or date.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="ISO 8601 time or date.")] = None,
) -> None:
    """Every event of NAME: pushes, alias moves, promotions, archives, approvals, policy changes."""
    out = cli.out
    reg = cli.registry()
    entries = reg.log(name, alias=alias, kinds=kind, since=since, until=until)
    checks = _signature_marks(reg, entries)
    if out.as_json:
        out.json([e.to_dict() | ({"signature": checks[e.event_id].to_dict()} if e.event_id in checks else {})
                  for e in entries])
        return
    marks = {eid: _mark(c) for eid, c in checks.items()} if checks else None
    out.table([({"signed": marks.get(e.event_id or "", "")} if marks is not None else {}) | {
        "time": _when(e.time), "kind": e.kind, "alias": e.alias or "",
        "from": _ver(e.from_version, e.name), "to": _ver(e.to_version, e.name),
        "author": e.author, "reason": (e.reason or "") + (
            f" [policy v{e.details['policy_version']}]" if e.kind == "policy.set" and e.details else ""),
    } for e in entries])


def _signature_marks(reg: Registry, entries: list[LogEntry]) -> dict[str, EventCheck]:
    """Each signable entry's signature check, when the policy has [keys] or any event is
    signed (else nothing: the log looks as it did before signing existed)."""
    checks = reg.event_signatures(entries)
    return checks if any(c.status != "unsigned" for c in checks.values()) or _keyed(reg) else {}


def _keyed(reg: Registry) -> bool:
    policy = reg.policy()
    return policy is not None and "keys" in policy.doc


def _mark(check: EventCheck) -> str:
    """The log's signature column: ``yes`` (by whom), ``NO`` (unsigned), ``BAD``, ``?``."""
    if check.status == "verified":
        return f"yes ({check.signer})"
    return {"unsigned": "NO", "invalid": "BAD", "unknown key": "?"}.get(check.status, check.status)


@command(app, example='casreg diff fraud-detector:1 fraud-detector:2')
def diff(
    cli: Cli,
    a: RefArg,
    b: RefArg,
) -> None:
    """Compare two versions: metrics with deltas, params and tags, files, bytes shared."""
    out = cli.out
    d = cli.registry().diff(a, b)
    if out.as_json:
        out.json(d.to_dict())
        return
    out.line(f"{d.a.ref} -> {d.b.ref}")
    if d.metrics:
        out.line("metrics")
        for k, (x, y, delta) in d.metrics.items():
            shown = f"{delta:+.6g}" if delta is not None else ""
            out.line(f"  {k:<20} {'' if x is None else f'{x:.6g}':>12} "
                     f"{'' if y is None else f'{y:.6g}':>12} {shown:>12}")
    for label, changes in (("params", d.params), ("tags", d.tags)):
        if changes:
            out.line(label)
            for k, (was, now) in changes.items():
                out.line(f"  {k:<20} {was if was is not None else '(none)'} -> {now if now is not None else '(none)'}")
    out.line(f"files: {len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, "
             f"{d.unchanged} unchanged")
    for sign, paths in (("+", d.added), ("-", d.removed), ("~", d.changed)):
        for p in paths:
            out.line(f"  {sign} {p}")
    out.line(f"shared: {human_bytes(d.shared_bytes)} of {human_bytes(d.b_size)} "
             f"({100 * d.shared_fraction:.1f}% of {d.b.ref} is in chunks {d.a.ref} already has)")
    _diff_lineage(out, d)


def _diff_lineage(out: Output, d: VersionDiff) -> None:
    """``diff``'s dependency and schema changes (docs/lineage.md)."""
    if d.dependencies:
        out.line("dependencies")
        for k, (was, now) in d.dependencies.items():
            out.line(f"  {'+' if was is None else '-' if now is None else '~'} {k:<28} "
                     f"{was if was is not None else '(none)'} -> {now if now is not None else '(none)'}")
    s = d.schema
    if s.unchanged:  # nothing to say (--json says "unchanged": true)
        return
    out.line(f"schema: {len(s.added)} tensors added, {len(s.removed)} removed, {len(s.changed)} changed"
             + (", signature changed" if s.signature_changed else "")
             + (" (a record lists only part of its tensors; the digests differ)" if s.truncated else ""))
    for sign, names in (("+", s.added), ("-", s.removed)):
        for n in names:
            out.line(f"  {sign} {n}")
    for n, (was, now) in s.changed.items():
        out.line(f"  ~ {n}  {was} -> {now}")


@command(policy_app, "set", example='casreg policy set policy.toml --reason "two approvals for production"')
def policy_set(
    cli: Cli,
    file: Annotated[Path, typer.Argument(help="Policy TOML file (docs/lifecycle.md).")],
    reason: ReasonOpt = None,
    key: SignKeyOpt = None,
) -> None:
    """Store a new version of the registry's policy (each change is a recorded event)."""
    out = cli.out
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {file}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{file} is not UTF-8 text") from None
    number = cli.registry().set_policy(text, reason=reason, key=key)
    if out.as_json:
        out.json({"policy_version": number})
    else:
        out.line(f"policy version {number} is in force")


@command(policy_app, "show", example='casreg policy show --version 1')
def policy_show(
    cli: Cli,
    version: Annotated[Optional[int], typer.Option("--version", help="An older policy version.")] = None,
) -> None:
    """Print the policy in force (or an older version)."""
    out = cli.out
    p = cli.registry().policy(version)
    if p is None:
        if version is not None:
            raise NotFoundError(f"policy version {version} does not exist")
        if out.as_json:
            out.json(None)
        else:
            out.line("no policy: every action is allowed and nothing is required")
        return
    if out.as_json:
        out.json({"policy_version": p.version, "digest": p.digest, "policy": p.doc, "text": p.text})
    else:
        out.line(f"# policy version {p.version} ({p.digest})")
        out.block(p.text.rstrip("\n"))
