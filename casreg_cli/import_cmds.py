"""``casreg import mlflow``: bring an MLflow model registry in (docs/migrate-mlflow.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from casreg_cli.common import Cli, app, command
from casreg_cli.output import Output, human_bytes, plural

if TYPE_CHECKING:
    from casreg.importers.mlflow import ImportedVersion, ImportReport

import_app = typer.Typer(help="Import models from another registry (MLflow).", no_args_is_help=True)
app.add_typer(import_app, name="import")


@command(import_app, "mlflow", example="casreg import mlflow --tracking-uri sqlite:///mlflow.db --model fraud")
def mlflow(
    cli: Cli,
    tracking_uri: Annotated[str, typer.Option(
        "--tracking-uri", help="MLflow tracking URI: sqlite:///mlflow.db, http://host:5000, databricks, ...")],
    registry_uri: Annotated[Optional[str], typer.Option(
        "--registry-uri", help="MLflow model registry URI, if not the tracking URI.")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="Import only this MLflow registered model (repeatable; default: every one).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be imported; download and change nothing.")] = False,
    bypass_gates: Annotated[bool, typer.Option(
        "--bypass-gates", help="Also move stages and aliases the policy's gates refuse (each such move records "
                               "the rules it bypassed); permissions still apply.")] = False,
) -> None:
    """Copy MLflow's registered model versions, stages and aliases into the registry.

    Each version keeps its artifacts, its run's metrics and params, its tags, run id, author,
    creation time and description; re-running imports only what is new (docs/migrate-mlflow.md)."""
    from casreg.importers.mlflow import import_mlflow, load_mlflow

    out = cli.out
    _allow_numpy()
    load_mlflow()  # one line saying how to install it, before anything else
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines are not ours to print
    logging.getLogger("alembic").setLevel(logging.WARNING)

    def seen(v: ImportedVersion) -> None:
        if not out.as_json:
            _version_line(out, v)

    report = import_mlflow(cli.registry(), tracking_uri, registry_uri=registry_uri, models=model, dry_run=dry_run,
                           bypass_gates=bypass_gates, progress=out.progress(), on_version=seen)
    cli.emit(report.to_dict(), lambda o: _summary(o, report))


def _allow_numpy() -> None:
    """Lift the CLI's numpy/pandas gate (casreg_cli/imports.py, a start-up saving): MLflow
    imports numpy, and an import is not a command whose start-up matters."""
    from casreg_cli.imports import allow_all

    allow_all()


def _version_line(out: Output, v: ImportedVersion) -> None:
    where = f"{v.mlflow_name}/{v.mlflow_version}"
    if v.status == "imported":
        out.line(f"imported {where} -> {v.name}:{v.version}  {human_bytes(v.size)}, "
                 f"{human_bytes(v.new_bytes)} new after dedup")
    elif v.status == "skipped":
        out.line(f"skipped {where}: already {v.name}:{v.version}")
    else:
        out.line(f"{v.status} {where} -> {v.name}")


def _summary(out: Output, report: ImportReport) -> None:
    for m in report.moves:
        if m.outcome in ("moved", "removed", "archived"):
            target = f"{m.name}:{m.version}" if m.version is not None else "unset"
            what = f"archived {target}" if m.alias is None else f"{m.name}@{m.alias} -> {target}"
            out.line(f"  {what}")
        elif m.outcome in ("kept", "refused"):
            out.warn(f"{m.name}@{m.alias or 'archived'} {m.outcome}: {m.detail}")
    for w in report.warnings:
        out.warn(w)
    verb = "would import" if report.dry_run else "imported"
    count = report.count("would import") if report.dry_run else report.count("imported")
    out.line(f"{verb} {plural(count, 'version')} of {plural(len(report.models), 'model')} from "
             f"{report.tracking_uri}, skipped {report.count('skipped')} imported before; "
             f"{human_bytes(report.bytes_before)} before dedup, {human_bytes(report.bytes_after)} after "
             f"({human_bytes(report.stored_bytes)} stored) in {report.seconds:.1f} s")
