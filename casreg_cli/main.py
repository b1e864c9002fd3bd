"""The ``casreg`` command. Each command validates its flags, calls the library once and
renders the result; expected failures become one line on stderr and a non-zero exit."""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from casreg.governance.signing import SignatureCheck
    from casreg.governance.state import VersionState
    from casreg.registry import Registry

from casreg import AliasEvent, AliasPointer, CasregError, FileInfo, IntegrityError, PullResult, Version
from casreg.errors import MissingDependencyError, MissingMetadataError, NotFoundError, UnknownStageError
from casreg.ledger.pointers import lying_pointers, missing_pointer_message
from casreg.refs import parse_ref
from casreg_cli.common import (
    AnnotateOpt,
    Cli,
    ReasonOpt,
    RefArg,
    SignKeyOpt,
    alias_app,
    app,
    command,
    command_word,
    complete_model,
    complete_ref,
    json_requested,
    name_alias,
    pairs,
)
from casreg_cli.lineage_view import lineage_lines, lineage_options, metric_lines
from casreg_cli.output import (
    Output,
    human_bytes,
    install_log_escaping,
    plural,
    print_block,
    print_error,
    print_error_json,
)


@command(app, example="casreg push fraud-detector ./out/model.safetensors --metric auc=0.983 --param lr=3e-4")
def push(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Model name.", autocompletion=complete_model)],
    path: Annotated[str, typer.Argument(help="A model file or directory.")],
    metric: Annotated[Optional[list[str]], typer.Option("--metric", "-m", help="KEY=NUMBER, repeatable.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="KEY=VALUE, repeatable.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="KEY=VALUE, repeatable.")] = None,
    framework: Annotated[Optional[str], typer.Option(help="e.g. pytorch, onnx, sklearn.")] = None,
    description: Annotated[Optional[str], typer.Option("--description", "-d")] = None,
    alias: Annotated[Optional[str], typer.Option("--alias", "-a", help="Point NAME@ALIAS at the new version.")] = None,
    parent: Annotated[Optional[str], typer.Option(help="Reference of the version this one derives from.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Training run id.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Digest or URI of the training data.")] = None,
    level: Annotated[Optional[int], typer.Option(min=1, max=22, help="zstd level (default 3).")] = None,
    check_writes: Annotated[bool, typer.Option(
        "--check-writes/--no-check-writes",
        help="Decode every new chunk and check it against the bytes it was cut from before it is "
             "stored (the default; costs CPU, see docs/benchmarks.md).")] = True,
    sign: Annotated[Optional[str], typer.Option(
        "--sign", help="Sign the new version with this private key PEM file (docs/signing.md).")] = None,
    hardware: Annotated[Optional[str], typer.Option(
        help="What it was trained on, e.g. \"8x H100\" (default: detected on this machine; docs/lineage.md).")] = None,
    detect_hardware: Annotated[bool, typer.Option(
        "--detect-hardware/--no-detect-hardware", help="Record this machine's GPUs, CPU and memory.")] = True,
    code: Annotated[Optional[str], typer.Option(
        "--code", metavar="DIR", help="The training code's git checkout (commit, branch, dirty, remote).")] = None,
    git_commit: Annotated[Optional[str], typer.Option(help="The training code's commit (SHA).")] = None,
    requirements: Annotated[Optional[str], typer.Option(
        metavar="FILE", help="A requirements file: the dependencies to record.")] = None,
    capture_env: Annotated[bool, typer.Option(
        "--capture-env", help="Record this Python environment's installed distributions.")] = False,
    signature: Annotated[Optional[str], typer.Option(
        metavar="FILE.json", help="Input/output schema (JSON; MLflow's ModelSignature accepted).")] = None,
    link: Annotated[Optional[list[str]], typer.Option(
        "--link", help="NAME=URL (http/https), repeatable, e.g. dashboard=https://...")] = None,
) -> None:
    """Store a model file or directory as the next version of NAME."""
    if sign is not None:
        from casreg.governance.signatures import read_private_key

        read_private_key(sign)  # a bad key file fails before anything is stored
    reg = cli.registry(zstd_level=level, check_writes=check_writes)
    v = reg.push(
        name, path, metrics=pairs("metric", metric), params=pairs("param", param), tags=pairs("tag", tag),
        framework=framework, description=description, alias=alias, parent=parent, run_id=run_id,
        dataset=dataset, progress=cli.out.progress(),
        **lineage_options(hardware, detect_hardware, code, git_commit, requirements, capture_env, signature, link),
    )
    signed = reg.sign(v.ref, sign) if sign is not None else None

    def human(out: Output) -> None:
        out.line(f"pushed {v.ref}  {v.digest}")
        out.line(f"  size {human_bytes(v.size)} in {plural(v.file_count, 'file')}, "
                 f"new bytes stored {human_bytes(v.stored_bytes)}, dedup {100 * v.dedup_ratio:.1f}%")
        if signed is not None:
            out.line(f"  signed with key {signed.fingerprint[:16]}")
        if alias:
            out.line(f"  {name}@{alias} -> {v.ref}")

    cli.emit(v.to_dict() | {"dedup_ratio": round(v.dedup_ratio, 6)}
             | ({"signature": signed.to_dict()} if signed is not None else {}), human)


@command(app, example='casreg pull minilm@production serving/ --include "*.json" --include "*.safetensors"')
def pull(
    cli: Cli,
    ref: Annotated[str, typer.Argument(help="NAME, NAME:N, NAME@ALIAS or a digest; REF/path/in/version for one "
                                       "file or directory of it.", autocompletion=complete_ref)],
    dest: Annotated[Optional[str], typer.Argument(
        help="Where to write it (default: ./FILE or ./NAME); ending in / (DIR/): into DIR, created if absent.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing destination.")] = False,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", "-i", help="Only the files matching this pattern (repeatable; * also matches /; "
                                "DIR/ means everything below DIR).")] = None,
    require_signed_by: Annotated[Optional[list[str]], typer.Option(
        "--require-signed-by", help="Refuse a version not signed (validly) by this public key file, or key "
                                    "name or role of the policy's [keys]; repeatable: any one of them.")] = None,
) -> None:
    """Write a version (or part of it) to DEST, verified byte for byte before it appears."""
    res = cli.registry().pull(ref, dest, force=force, include=include, progress=cli.out.progress(),
                              require_signed_by=require_signed_by or None)
    cli.emit(res.to_dict(), lambda out: _pulled(out, res))


@command(app, example='casreg snapshot minilm@production --include "*.json"')
def snapshot(
    cli: Cli,
    ref: RefArg,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", "-i", help="Only the files matching this pattern (repeatable; * also matches /).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(
        "--cache-dir", help="Where snapshots live (default: the chunk cache directory's snapshots/).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash files already present instead of "
                                                         "trusting them.")] = False,
) -> None:
    """Print the path of a verified, read-only local directory holding a version (for
    from_pretrained-style loaders); files are shared between versions and fetched once."""
    reg = cli.registry()
    resolved = reg.resolve(ref)
    path = reg.snapshot(str(resolved.digest), include=include, cache_dir=cache_dir, verify=verify,
                        progress=cli.out.progress())
    record = {"ref": ref, "name": resolved.name, "version": resolved.version, "digest": str(resolved.digest),
              "path": str(path)}
    cli.emit(record, lambda out: out.line(str(path)))


def _pulled(out: Output, res: PullResult) -> None:
    label = f"{res.name}:{res.version}" if res.name else res.digest
    if res.up_to_date:
        out.line(f"{res.dest} already holds {label}; nothing rewritten")
    else:
        files = (plural(res.files, "file") if res.version_files is None
                 else f"{res.files:,} of {plural(res.version_files, 'file')}")
        out.line(f"pulled {label} to {res.dest} ({human_bytes(res.size)}, {files}, verified)")


@command(app, example='casreg resolve fraud-detector@production --at 2026-10-01T12:00:00Z')
def resolve(
    cli: Cli,
    ref: RefArg,
    at: Annotated[Optional[str], typer.Option("--at", help="What REF pointed at at this time "
                                              "(ISO 8601, e.g. 2026-10-01T12:00:00Z).")] = None,
) -> None:
    """Print the digest a reference points at (--json: the whole record)."""
    out = cli.out
    reg = cli.registry()
    resolved = reg.resolve_at(ref, at) if at is not None else reg.resolve(ref)
    if not out.as_json:
        out.line(resolved.digest)
        return
    if resolved.name is None:
        m = reg.manifest(resolved)
        out.json({"digest": resolved.digest, "kind": m.kind, "size": m.size, "file_count": len(m.files)})
        return
    extra: dict[str, object] = {"ref": ref}
    alias = parse_ref(ref).alias
    if alias is not None and at is None:
        extra["annotations"] = dict(resolved.annotations)
        move = reg.move_signature(resolved.name, alias)  # the pointer's last move: signed? by a trusted policy's key?
        if move is not None:
            extra |= {"signed": move.check.signed, "trusted": move.trusted and move.check.signed,
                      "last_move": move.to_dict()}
    out.json(reg.show(f"{resolved.name}:{resolved.version}").to_dict() | extra)


@command(app, example='casreg show fraud-detector:2')
def show(cli: Cli, ref: RefArg) -> None:
    """Show a version's record, files and aliases."""
    reg = cli.registry()
    v = reg.show(ref)
    files = reg.files(v.digest)
    pointers = [p for p in reg.aliases(v.name) if p.version == v.version]
    for _pointer, why in lying_pointers(pointers, [v]):
        raise IntegrityError(why)
    aliases = [p.alias for p in pointers]
    state = reg.state(v)
    signatures = reg.signatures(v.digest)
    cli.emit(v.to_dict() | {"aliases": aliases, "lifecycle": state.to_dict(), "files": [asdict(f) for f in files],
                            "signatures": [c.to_dict() for c in signatures]},
             lambda out: _show(out, v, files, aliases, state, signatures))


def _show(out: Output, v: Version, files: list[FileInfo], aliases: list[str], state: VersionState,
          signatures: list[SignatureCheck]) -> None:
    out.line(f"{v.ref}  {v.digest}")
    out.line(f"  created   {v.created_at.isoformat(timespec='seconds')} by {v.author}")
    out.line(f"  size      {human_bytes(v.size)} in {plural(v.file_count, 'file')} ({v.kind}); "
             f"stored {human_bytes(v.stored_bytes)} new, dedup {100 * v.dedup_ratio:.1f}%")
    for label, value in (("framework", v.framework), ("desc", v.description)):
        if value:
            out.line(f"  {label:<9} {value}")
    for line in metric_lines(v.metrics):
        out.line(line)
    for label, mapping in (("params", v.params), ("tags", v.tags)):
        if mapping:
            out.line(f"  {label:<9} " + ", ".join(f"{k}={val}" for k, val in sorted(mapping.items())))
    ln = v.lineage
    parts = [f"{k}={getattr(ln, k)}" for k in ("git_commit", "git_dirty", "parent", "run_id", "dataset", "hostname")
             if getattr(ln, k) is not None]
    if parts:
        out.line("  lineage   " + ", ".join(parts))
    for label, text in lineage_lines(v):
        out.line(f"  {label:<9} {text}")
    if aliases:
        out.line("  aliases   " + ", ".join(f"{v.name}@{a}" for a in aliases))
    if state.archived is not None:
        out.line(f"  archived  {state.archived.time.isoformat(timespec='seconds')} by {state.archived.author}"
                 + (f" ({state.archived.reason})" if state.archived.reason else ""))
    for label, table in (("approved", state.approvals), ("rejected", state.rejections)):
        for stage, authors in table.items():
            out.line(f"  {label:<9} for {stage} by {', '.join(authors)}")
    from casreg_cli.signing_cmds import describe

    for c in signatures:
        why = "its key is not in the policy's [keys]; casreg verify-signature --key checks it"
        out.line(f"  signed    by {describe(c, why)}")
    out.line("  files")
    for f in files:
        kind = "dir " if f.type == "d" else ("exec" if f.type == "x" else "    ")
        out.line(f"    {kind} {human_bytes(f.size):>10}  {f.path}")


@command(app, "ls", example='casreg ls fraud-detector --where "metrics.auc > 0.9" --sort metrics.auc --desc')
def ls_(
    cli: Cli,
    name: Annotated[Optional[str], typer.Argument(help="Model name (default: every model).",
                                                                autocompletion=complete_model)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show the newest N versions.")] = 100,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show every version.")] = False,
    where: Annotated[Optional[str], typer.Option("--where", help="Filter, e.g. \"metrics.auc > 0.9 AND "
                                                 "tags.team = 'fraud'\" (needs NAME).")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="staging, production or archived.")] = None,
    alias: Annotated[Optional[str], typer.Option("--alias", help="Only the version at NAME@ALIAS.")] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", help="Sort by a field, e.g. metrics.auc.")] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    show_deleted: Annotated[bool, typer.Option("--deleted", help="Also list deleted versions (stage 'deleted').")]
    = False,
) -> None:
    """List the versions of NAME (the newest 100 unless --all / --limit), or the latest version of every model."""
    out = cli.out
    reg = cli.registry()
    filtered = any(x is not None for x in (where, stage, alias, sort)) or desc
    if filtered and name is None:
        raise typer.BadParameter("--where, --stage, --alias, --sort and --desc need a model NAME")
    if filtered:
        assert name is not None
        versions = reg.search(name, where=where, stage=stage, alias=alias, sort=sort, descending=desc,
                              limit=None if all_ else limit)
        older = 0
    else:
        versions = reg.ls(name, newest=None if all_ or name is None else limit)
        older = versions[0].version - 1 if name is not None and versions else 0
    from casreg.ledger.tombstones import tombstoned

    dead = tombstoned(reg.store, name) if versions else set()  # one listing (docs/retention.md)
    if not show_deleted:
        if name is None:  # a model whose latest version is deleted is listed with its newest live one
            versions = [_newest_live(reg, v) if (v.name, v.version) in dead else v for v in versions]
        versions = [v for v in versions if (v.name, v.version) not in dead]
    pointers = reg.aliases(name)
    lies = lying_pointers(pointers, versions)  # checked against the rows in hand: no extra read
    liars = {(p.name, p.alias) for p, _ in lies}
    by_version: dict[tuple[str, int], list[str]] = {}
    for p in pointers:
        badge = f"{p.alias}(corrupt)" if (p.name, p.alias) in liars else p.alias
        by_version.setdefault((p.name, p.version), []).append(badge)
    state = reg.listing_state(name, pointers) if versions else None  # one read of the events, whatever the rows
    archived = state.archived if state else {}
    deleted = state.deleted if state else []
    if out.as_json:
        out.json([v.to_dict() | {"aliases": [a for a in by_version.get((v.name, v.version), [])
                                             if not a.endswith("(corrupt)")],
                                 "archived": (v.name, v.version) in archived}
                  | ({"deleted": (v.name, v.version) in dead} if show_deleted else {}) for v in versions])
        _fail_on_lies(lies, deleted)
        return
    rows = [{
        "ref": v.ref, "digest": v.digest[:19], "size": human_bytes(v.size),
        "created": v.created_at.strftime("%Y-%m-%d %H:%M:%S"), "author": v.author,
        "aliases": ",".join(by_version.get((v.name, v.version), [])),
        "stage": "deleted" if (v.name, v.version) in dead else
        _stage(by_version.get((v.name, v.version), []), (v.name, v.version) in archived),
        "framework": v.framework, "description": v.description,
    } for v in versions]
    if older:
        out.line(f"({older:,} older version{'s' if older != 1 else ''} not shown; --all or --limit N)")
    out.table(rows, ["ref", "digest", "size", "created", "author", "aliases", "stage"] if rows else None,
              optional=["framework", "description"], cut=["description"])  # nothing listed: "(no rows)"
    _fail_on_lies(lies, deleted)


def _newest_live(reg: Registry, latest: Version) -> Version:
    """The newest version of ``latest``'s model that is not deleted (``latest`` itself when
    every version is: the caller then leaves the model out)."""
    try:
        return reg.show(latest.name)  # NAME resolves to the newest version that is not deleted
    except NotFoundError:
        return latest


def _stage(badges: list[str], archived: bool) -> str:
    """What ``ls`` shows in its stage column: the stages whose pointer is at the version
    (a pointer that lies about it is only in the aliases column, flagged), and
    ``archived``."""
    from casreg.governance.policy import STAGES

    return ",".join([s for s in STAGES if s != "archived" and s in badges] + (["archived"] if archived else []))


def _fail_on_lies(lies: list[tuple[AliasPointer, str]], deleted: list[AliasEvent] | None = None) -> None:
    """After the listing: a lying alias pointer, or one deleted although the ledger says
    its alias is set, fails ``ls`` (exit 6) naming its key."""
    if lies:
        more = f" ({len(lies) - 1} more alias pointer(s) disagree with the ledger)" if len(lies) > 1 else ""
        raise IntegrityError(lies[0][1] + more)
    if deleted:
        more = f" ({len(deleted) - 1} more alias pointer(s) are missing)" if len(deleted) > 1 else ""
        raise IntegrityError(f"{missing_pointer_message(deleted[0])}{more}; run casreg verify, then casreg alias "
                             f"restore {deleted[0].name}@{deleted[0].alias}")


@command(app,
         example='casreg sql "SELECT version, metrics[\'auc\'] AS auc FROM versions WHERE name = \'fraud-detector\'"')
def sql(
    cli: Cli,
    query: Annotated[str, typer.Argument(help="SQL over the views versions, files, events, aliases, "
                                          "version_state, ... (docs/audit.md).")],
) -> None:
    """Query the ledger with DuckDB SQL."""
    out = cli.out
    result = cli.registry().sql_result(query)
    if out.as_json:
        out.json(result.rows)
    else:
        out.table(result.rows, result.columns)  # no rows: still the header line


@command(alias_app, "set",
         example='casreg alias set fraud-detector@canary 3 --annotate weight=0.1 --reason "10% canary"')
def alias_set(
    cli: Cli,
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS", autocompletion=complete_ref)],
    ref: Annotated[str, typer.Argument(help="A version of NAME: N, NAME:N, NAME@ALIAS or a digest.")],
    reason: ReasonOpt = None,
    annotate: AnnotateOpt = None,
    key: SignKeyOpt = None,
) -> None:
    """Point NAME@ALIAS at a version (compare-and-swap; the move is logged)."""
    out = cli.out
    name, alias = name_alias(target)
    ev = cli.registry().set_alias(name, alias, ref, reason=reason, annotations=pairs("annotate", annotate), key=key)
    if out.as_json:
        out.json(ev.to_dict())
        return
    was = f" (was {name}:{ev.from_version})" if ev.from_version else ""
    out.line(f"{name}@{alias} -> {name}:{ev.to_version}  {ev.to_digest}{was}")


@command(alias_app, "rm", example='casreg alias rm fraud-detector@canary --reason "canary over"')
def alias_rm(
    cli: Cli,
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS", autocompletion=complete_ref)],
    reason: ReasonOpt = None,
    key: SignKeyOpt = None,
) -> None:
    """Remove NAME@ALIAS (the removal is logged; versions are untouched)."""
    out = cli.out
    name, alias = name_alias(target)
    ev = cli.registry().remove_alias(name, alias, reason=reason, key=key)
    if out.as_json:
        out.json(ev.to_dict())
    else:
        out.line(f"removed {name}@{alias} (was {name}:{ev.from_version})")


@command(alias_app, "restore", example="casreg alias restore fraud-detector@production")
def alias_restore(
    cli: Cli,
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS", autocompletion=complete_ref)],
) -> None:
    """Rewrite a pointer that was deleted or damaged (verify names it) as the alias's last move
    in the ledger. Nothing else changes."""
    out = cli.out
    name, alias = name_alias(target)
    ev = cli.registry().restore_alias(name, alias)
    if out.as_json:
        out.json(ev.to_dict())
    else:
        out.line(f"restored {name}@{alias} -> {name}:{ev.to_version}  {ev.to_digest}")


@command(alias_app, "ls", example='casreg alias ls fraud-detector')
def alias_ls(
    cli: Cli,
    name: Annotated[Optional[str], typer.Argument(help="Model name (default: every model).",
                                                                autocompletion=complete_model)] = None,
) -> None:
    """List aliases and where they point."""
    out = cli.out
    pointers = cli.registry().aliases(name, confirm=True)
    if out.as_json:
        out.json([p.to_dict() for p in pointers])
        return
    out.table([{"alias": f"{p.name}@{p.alias}", "version": f"{p.name}:{p.version}", "digest": p.digest[:19],
                "updated": p.event.time.strftime("%Y-%m-%d %H:%M:%S"), "by": p.event.author,
                "reason": p.event.reason or "",
                "annotations": ",".join(f"{k}={v}" for k, v in sorted(p.annotations.items()))} for p in pointers])


# The other commands register themselves on import, after this module's own (which come
# first in --help: the everyday ones).
import casreg_cli.cache_cmds  # noqa: E402,F401  (cache)
import casreg_cli.hooks_cmds  # noqa: E402,F401  (hooks)
import casreg_cli.import_cmds  # noqa: E402,F401  (import mlflow)
import casreg_cli.ledger_cmds  # noqa: E402,F401  (compact)
import casreg_cli.lifecycle_cmds  # noqa: E402,F401  (promote, archive, rollback, approve, reject, log, diff, policy)
import casreg_cli.ops  # noqa: E402,F401  (verify, gc)
import casreg_cli.retention_cmds  # noqa: E402,F401  (delete, retain)
import casreg_cli.signing_cmds  # noqa: E402,F401  (keys generate, sign, verify-signature)
import casreg_cli.ui_cmds  # noqa: E402,F401  (ui)
import casreg_cli.watch_cmds  # noqa: E402,F401  (watch)


def _hint(err: CasregError) -> str:
    """The command line's words for what a library error says in the library's terms
    (``set_alias``), appended to its message; empty for most errors."""
    if isinstance(err, UnknownStageError):
        return f" (on the command line: casreg alias set NAME@{err.stage} REF)"
    if isinstance(err, MissingMetadataError):
        return (" (on the command line: --metric, --param, --tag, --framework, --description, --dataset, --run-id, "
                "--parent)")
    return ""


_AS_JSON = False  # set by run() for the invocation it runs: errors are then JSON (``--json``)


def _fail(message: str, code: int) -> int:
    """Print ``casreg: error: MESSAGE`` as one clean line (control characters escaped,
    URL credentials redacted: :func:`casreg_cli.output.print_error`), or under ``--json``
    ``{"error": MESSAGE, "exit_code": CODE}`` on one line; return ``code``."""
    if _AS_JSON:
        print_error_json(message, code)
    else:
        print_error(message)
    return code


def _usage_error(err: typer.TyperException) -> None:
    """Print a usage error as click would (usage, hint, ``Error: ...``), each line
    cleaned: the message may quote what the user typed; under ``--json``, its message
    as a JSON error."""
    import io

    if _AS_JSON:
        print_error_json(err.format_message(), err.exit_code)
        return
    show = getattr(err, "show", None)
    if show is None:
        print_error(err.format_message())
        return
    buffer = io.StringIO()
    show(file=buffer)
    print_block(buffer.getvalue())


def command_names() -> dict[str, object]:
    """Every top-level command and command group by the name typer gives it on the
    command line (its ``get_command_name``: ``alias_set`` -> ``alias-set``)."""
    from typer.main import get_command_name

    names: dict[str, object] = {g.name: g for g in app.registered_groups if g.name}
    names |= {c.name or get_command_name(c.callback.__name__): c for c in app.registered_commands if c.callback}
    return names


def _narrowed(argv: list[str]) -> typer.Typer:
    """The app with only the command (or command group) ``argv`` names. typer turns every
    registered command into a click command on each run, inspecting every signature:
    22 ms of each invocation's start-up here, for ~45 commands when one is used. The
    first argument that is neither an option nor the value of a global option before it
    (``casreg -r URL ls``) is the command (:func:`casreg_cli.common.command_word`);
    anything else (no command, a typo, a bare ``--help``) gets the whole app, with its
    listing and suggestions. Help and errors of a command are the same either way
    (tests/test_cli.py compares them for every command)."""
    name = command_word(argv)
    entry = command_names().get(name) if name is not None else None
    if entry is None:
        return app
    narrow = copy.copy(app)  # same settings and global callback, so still a group: same usage lines
    narrow.registered_commands = [entry] if entry in app.registered_commands else []
    narrow.registered_groups = [entry] if entry in app.registered_groups else []
    return narrow


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; expected failures never show a traceback.
    Every error is one clean line (:func:`_fail`); the library's log records come out
    clean too (:func:`casreg_cli.output.install_log_escaping`)."""
    global _AS_JSON
    args = sys.argv[1:] if argv is None else argv
    _AS_JSON = json_requested(args)
    install_log_escaping()
    try:
        code = _narrowed(args)(args=args, prog_name="casreg", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            return code
    except CasregError as err:
        return _fail(str(err) + _hint(err), err.exit_code)
    except typer.Exit as err:
        return err.exit_code
    except typer.TyperException as err:  # usage errors: typer prints them like click does
        _usage_error(err)
        return err.exit_code
    except typer.Abort:
        return _fail("aborted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as err:  # a broken install (a declared dependency missing): say which, in one line
        return _fail(f"casreg needs the Python package {err.name!r}, which is not installed in this environment "
                     "(reinstall casreg with its dependencies: pip install --force-reinstall casreg)",
                     MissingDependencyError.exit_code)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
        return _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err), 1)
    except OSError as err:
        if err.errno is not None:  # the OS refused (disk full, I/O error): not a casreg bug
            return _fail(f"{err.strerror}{': ' + str(err.filename) if err.filename else ''}", 1)
        raise
    return 0


def main() -> None:
    from casreg_cli.imports import install as install_numpy_gate
    from casreg_cli.malloc import reuse_large_buffers

    reuse_large_buffers()  # chunk-sized buffers reused, not page-faulted in afresh (casreg_cli/malloc.py)
    install_numpy_gate()  # numpy only where casreg needs it, pandas never (casreg_cli/imports.py)
    _collect_less()
    sys.exit(run())


def _collect_less() -> None:
    """Spare the cyclic garbage collector's passes over what the process imported (never
    garbage) and its young-generation pass every 700 allocations: a push of 5,000 small
    files ran 182 collections, 60 ms; now 2, 20 ms. Cycles are still collected, once
    50,000 container objects more were allocated than freed instead of 700: a pass waits
    for at most that much garbage (megabytes, not the chunk buffers, which are freed by
    reference counting as soon as they are dropped)."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


if __name__ == "__main__":
    main()
