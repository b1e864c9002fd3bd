"""Import an MLflow model registry into casreg (``casreg import mlflow``; docs/migrate-mlflow.md).

Every registered model version becomes a casreg version, pushed like any push (chunked,
deduplicated) from the artifacts MLflow's own client downloads, with the metadata MLflow
records for it: its run's metrics and params, its tags (and its registered model's),
run id, source, creation time, author and description. MLflow's stages and aliases
become casreg stages and aliases, moved by imported moves
(:meth:`casreg.Registry.import_alias`, :meth:`~casreg.Registry.import_archive`), which
keep the policy's permissions and gates and never override a move made in casreg.

**Idempotent.** Each imported version carries the tag ``mlflow.model_version`` =
``NAME/N`` (MLflow's name and number) and MLflow's creation time as its ``created_at``;
a version of MLflow whose pair is already on a version of the casreg model is skipped,
so re-running imports only what is new (and brings stages and aliases up to date).

**Names.** An MLflow name casreg accepts is kept. Another is mapped by
:func:`casreg_name` (each run of characters outside ``A-Z a-z 0-9 . _ -`` becomes one
``-``, ``..`` becomes ``.``, leading characters that are not a letter or digit are
dropped, then cut to 128); if two models map to one name, or the result is still
refused, the import stops with a one-line error before anything is stored.

Only this module imports ``mlflow``; :func:`load_mlflow` says how to install it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casreg.errors import (
    CasregError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    PolicyError,
    UnknownReferenceError,
)
from casreg.governance.imports import IMPORT_DETAIL, ImportedMove
from casreg.records import MAX_KEY, JsonValue, Version, utcnow
from casreg.redact import redact_url
from casreg.refs import MAX_NAME, RESERVED_ALIASES, validate_alias, validate_name

if TYPE_CHECKING:
    from casreg.progress import Progress
    from casreg.registry import Registry

__all__ = [
    "MODEL_VERSION_TAG",
    "TRACKING_URI_TAG",
    "ImportReport",
    "ImportedVersion",
    "MlflowMissingError",
    "casreg_alias",
    "casreg_name",
    "import_mlflow",
    "load_mlflow",
]

#: The tag naming a version's origin in MLflow, ``NAME/N``: what makes re-imports skip it.
MODEL_VERSION_TAG = "mlflow.model_version"
#: The tag naming the tracking server it came from (credentials redacted).
TRACKING_URI_TAG = "mlflow.tracking_uri"
SOURCE_TAG = "mlflow.source"
#: Run tags worth carrying (where the training code was), under these casreg tag names.
RUN_TAGS = {"mlflow.source.name": "mlflow.run.source_name", "mlflow.source.git.commit": "mlflow.run.git_commit",
            "mlflow.source.type": "mlflow.run.source_type", "mlflow.runName": "mlflow.run.name"}
#: MLflow's stages that are casreg stages (``Archived`` is an archive event, ``None`` nothing).
STAGES = {"Staging": "staging", "Production": "production"}
INSTALL_HINT = "pip install 'casreg[mlflow]'"
_PAGE = 200


class MlflowMissingError(CasregError):
    """The ``mlflow`` extra is not installed."""

    exit_code = 2


def load_mlflow() -> Any:
    """The ``mlflow`` module, with its telemetry and download progress bars off unless the
    environment says otherwise; :class:`MlflowMissingError` (one line: how to install it)
    when it is not installed."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # an import is no reason to phone home
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # casreg draws its own
    try:
        import mlflow
        import mlflow.artifacts
        from mlflow.tracking import MlflowClient  # noqa: F401  (fails early if the install is broken)
    except ImportError as err:
        raise MlflowMissingError(f"casreg import mlflow needs the mlflow extra ({err.name or err} is missing): "
                                 f"{INSTALL_HINT}") from None
    return mlflow


# -- names ----------------------------------------------------------------------------------------
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_NOT_ALIAS = re.compile(r"[^a-z0-9_-]+")


def casreg_name(mlflow_name: str) -> str:
    """The casreg model name of an MLflow model: itself if casreg accepts it, else mapped
    by the rule in the module doc; :class:`InvalidNameError` if even that is refused."""
    try:
        return validate_name(mlflow_name)
    except InvalidNameError:
        pass
    name = _NOT_NAME.sub("-", mlflow_name)
    while ".." in name:
        name = name.replace("..", ".")
    name = name.lstrip("._-")[:MAX_NAME]
    try:
        return validate_name(name)
    except InvalidNameError as err:
        raise InvalidNameError(f"MLflow model {mlflow_name!r} has no casreg name ({name!r}: {err})") from None


def casreg_alias(mlflow_alias: str) -> str | None:
    """The casreg alias of an MLflow alias: lowercased, each run of other characters than
    ``a-z 0-9 _ -`` made one ``-``; ``None`` if that is still not a valid alias or names a
    stage (``staging``, ``production``, ``archived``: MLflow's stages fill those)."""
    alias = _NOT_ALIAS.sub("-", mlflow_alias.lower())
    if alias in RESERVED_ALIASES or alias in (*STAGES.values(), "archived"):
        return None
    try:
        return validate_alias(alias)
    except InvalidNameError:
        return None


def _label_key(key: str) -> str | None:
    """A metric, param or tag name as casreg takes it (whitespace made ``_``), or None
    if it is too long."""
    key = re.sub(r"\s", "_", key)
    return key if 0 < len(key) <= MAX_KEY else None


# -- the report ------------------------------------------------------------------------------------
@dataclass(slots=True)
class ImportedVersion:
    """One MLflow model version and what the import did with it."""

    mlflow_name: str
    mlflow_version: int
    name: str  # the casreg model
    status: str  # "imported", "skipped" (imported before), "would import" (dry run), "not ready"
    version: int | None = None  # the casreg version number
    size: int = 0  # logical bytes (imported ones)
    new_bytes: int = 0  # of those, bytes the registry did not hold yet (after dedup)
    stored_bytes: int = 0  # bytes written (compressed packs, indexes, manifest)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, JsonValue]:
        return {"mlflow_name": self.mlflow_name, "mlflow_version": self.mlflow_version, "name": self.name,
                "status": self.status, "version": self.version, "size": self.size, "new_bytes": self.new_bytes,
                "stored_bytes": self.stored_bytes, "seconds": round(self.seconds, 3)}


@dataclass(slots=True)
class ImportReport:
    """What ``import_mlflow`` did: every version it saw, every stage or alias move it
    tried, and what it could not carry (``warnings``)."""

    tracking_uri: str
    dry_run: bool
    models: list[str] = field(default_factory=list)  # MLflow names, in import order
    versions: list[ImportedVersion] = field(default_factory=list)
    moves: list[ImportedMove] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for v in self.versions if v.status == status)

    @property
    def bytes_before(self) -> int:
        """Logical bytes of the versions imported (before dedup)."""
        return sum(v.size for v in self.versions if v.status == "imported")

    @property
    def bytes_after(self) -> int:
        """Of those, the bytes the registry had to store (after dedup, before compression)."""
        return sum(v.new_bytes for v in self.versions if v.status == "imported")

    @property
    def stored_bytes(self) -> int:
        return sum(v.stored_bytes for v in self.versions if v.status == "imported")

    def to_dict(self) -> dict[str, JsonValue]:
        return {"tracking_uri": self.tracking_uri, "dry_run": self.dry_run, "models": list(self.models),
                "imported": self.count("imported"), "skipped": self.count("skipped"),
                "would_import": self.count("would import"), "not_ready": self.count("not ready"),
                "bytes_before_dedup": self.bytes_before, "bytes_after_dedup": self.bytes_after,
                "stored_bytes": self.stored_bytes, "seconds": round(self.seconds, 3),
                "versions": [v.to_dict() for v in self.versions], "moves": [m.to_dict() for m in self.moves],
                "warnings": list(self.warnings)}


# -- reading MLflow ---------------------------------------------------------------------------------
@contextmanager
def _mlflow_errors(uri: str, what: str) -> Iterator[None]:
    """MLflow's exceptions (and the OS and database errors under them) as one-line
    :class:`CasregError` s naming the tracking server."""
    try:
        yield
    except CasregError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow raises MlflowException, SQLAlchemy's, OSError...
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CasregError(f"MLflow at {redact_url(uri)}: {what}: {text[:500]}") from err


def _require_sqlite_file(uri: str | None) -> None:
    """A ``sqlite:///PATH`` whose file does not exist is a typo, not an empty registry:
    MLflow would create it (directories included) and find nothing to import."""
    if uri is None or not uri.startswith("sqlite:///"):
        return
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if path and path != ":memory:" and not os.path.isfile(path):
        raise NotFoundError(f"there is no MLflow database at {path} ({redact_url(uri)})")


def _ms(value: object) -> datetime:
    return datetime.fromtimestamp(int(str(value)) / 1000, UTC)


def _paged(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    token: str | None = None
    while True:
        page = fetch(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _filter_name(name: str) -> str:
    if "'" not in name:
        return f"name='{name}'"
    if '"' not in name:
        return f'name="{name}"'
    raise InvalidInputError(f"MLflow model name {name!r} has both quote characters; it cannot be searched for")


def _versions(client: Any, name: str) -> list[Any]:
    """Every version of MLflow model ``name``, by number."""
    search = _filter_name(name)
    found = list(_paged(lambda t: client.search_model_versions(search, max_results=_PAGE, page_token=t)))
    return sorted(found, key=lambda v: int(v.version))


@dataclass(slots=True)
class _Model:
    mlflow_name: str
    name: str
    tags: dict[str, str]
    aliases: dict[str, int]
    versions: list[Any]  # MLflow ModelVersion, by number


def _read_models(client: Any, uri: str, wanted: Sequence[str] | None) -> list[_Model]:
    with _mlflow_errors(uri, "listing registered models"):
        if wanted:
            registered = []
            for n in dict.fromkeys(wanted):
                try:
                    registered.append(client.get_registered_model(n))
                except Exception as err:
                    if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or "not found" in str(err):
                        raise UnknownReferenceError(f"MLflow at {redact_url(uri)} has no registered model {n!r}") \
                            from None
                    raise
        else:
            registered = list(_paged(lambda t: client.search_registered_models(max_results=_PAGE, page_token=t)))
    models: list[_Model] = []
    by_name: dict[str, str] = {}
    for rm in sorted(registered, key=lambda r: str(r.name)):
        mlflow_name = str(rm.name)
        name = casreg_name(mlflow_name)
        if name in by_name:
            raise InvalidNameError(f"MLflow models {by_name[name]!r} and {mlflow_name!r} both map to the casreg "
                                   f"name {name!r}; import them one at a time (--model) into separate registries "
                                   "or rename one in MLflow")
        by_name[name] = mlflow_name
        with _mlflow_errors(uri, f"listing the versions of {mlflow_name}"):
            versions = _versions(client, mlflow_name)
        models.append(_Model(mlflow_name, name, {str(k): str(v) for k, v in (rm.tags or {}).items()},
                             {str(k): int(v) for k, v in (rm.aliases or {}).items()}, versions))
    return models


def _framework(path: Path) -> str | None:
    """The model's flavor from an MLflow ``MLmodel`` file (the first that is not the
    generic ``python_function``), if there is one."""
    mlmodel = path / "MLmodel" if path.is_dir() else None
    if mlmodel is None or not mlmodel.is_file():
        return None
    try:
        import yaml  # MLflow's own dependency

        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors") or {}
    except Exception:  # noqa: BLE001 - a malformed MLmodel only loses the framework
        return None
    names = [str(f) for f in flavors if f != "python_function"] or [str(f) for f in flavors]
    return names[0] if names else None


# -- importing ---------------------------------------------------------------------------------------
def _existing(registry: Registry, name: str) -> dict[tuple[str, datetime], Version]:
    """The casreg model's versions that came from MLflow, by (``NAME/N``, creation time)."""
    try:
        versions = registry.ls(name)
    except UnknownReferenceError:
        return {}
    return {(v.tags[MODEL_VERSION_TAG], v.created_at): v for v in versions if MODEL_VERSION_TAG in v.tags}


def _metadata(client: Any, uri: str, model: _Model, mv: Any, report: ImportReport) -> dict[str, Any]:
    """What the push of MLflow version ``mv`` records, besides its files."""
    label = f"{model.mlflow_name}/{mv.version}"
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    run_author: str | None = None

    def put(into: dict[str, Any], key: str, value: Any, what: str) -> None:
        k = _label_key(key)
        if k is None:
            report.warnings.append(f"{label}: {what} {key[:80]!r} not carried (name longer than {MAX_KEY})")
        else:
            into[k] = value

    for k, v in model.tags.items():  # the registered model's tags; the version's own win
        put(tags, k, v, "model tag")
    for k, v in (mv.tags or {}).items():
        put(tags, str(k), str(v), "tag")
    if mv.run_id:
        try:
            with _mlflow_errors(uri, f"reading run {mv.run_id}"):
                run = client.get_run(mv.run_id)
        except CasregError as err:
            report.warnings.append(f"{label}: its run's metrics and params not carried ({err})")
        else:
            for k, value in run.data.metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    put(metrics, str(k), float(value), "metric")
                else:
                    report.warnings.append(f"{label}: metric {k!r} = {value!r} not carried (not a finite number)")
            for k, value in run.data.params.items():
                put(params, str(k), str(value), "param")
            for k, as_tag in RUN_TAGS.items():
                if run.data.tags.get(k):
                    tags[as_tag] = str(run.data.tags[k])
            run_author = str(run.info.user_id) if run.info.user_id else None
    tags |= {MODEL_VERSION_TAG: label, TRACKING_URI_TAG: redact_url(uri)}
    if mv.source:
        tags[SOURCE_TAG] = str(mv.source)
    author = str(mv.user_id) if getattr(mv, "user_id", None) else run_author
    return {"metrics": metrics, "params": params, "tags": tags, "run_id": str(mv.run_id) if mv.run_id else None,
            "description": str(mv.description) if mv.description else None, "author": author,
            "created": _ms(mv.creation_timestamp)}


def _import_version(registry: Registry, client: Any, mlflow: Any, uri: str, model: _Model, mv: Any,
                    report: ImportReport, progress: Progress | None, workdir: str | None) -> ImportedVersion:
    started = _time.monotonic()
    meta = _metadata(client, uri, model, mv, report)
    label = f"{model.mlflow_name}/{mv.version}"
    with tempfile.TemporaryDirectory(prefix="casreg-mlflow-", dir=workdir) as tmp:
        with _mlflow_errors(uri, f"downloading the artifacts of {label}"):
            artifact_uri = client.get_model_version_download_uri(model.mlflow_name, str(mv.version))
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp,
                                                             tracking_uri=uri))
        v = registry.push(model.name, local, framework=_framework(local), progress=progress, **meta)
    return ImportedVersion(model.mlflow_name, int(mv.version), model.name, "imported", v.version, v.size,
                           v.new_bytes, v.stored_bytes, _time.monotonic() - started)


def _origin(uri: str, **more: str) -> dict[str, str]:
    return {"source": "mlflow", "tracking_uri": redact_url(uri), **more}


def _sync_pointers(registry: Registry, uri: str, model: _Model, numbers: Mapping[int, int],
                   report: ImportReport, bypass_gates: bool) -> None:
    """Bring the casreg model's stages and aliases to MLflow's state (``numbers``: MLflow
    version → casreg version, for the versions in casreg)."""
    name = model.name
    pointers = {p.alias: p for p in registry.aliases(name)}

    def move(alias: str, version: int | None, when: datetime, **origin: str) -> None:
        why = f"imported from MLflow ({', '.join(f'{k} {v}' for k, v in origin.items())})"
        try:
            result = registry.import_alias(name, alias, version, time=when, origin=_origin(uri, **origin),
                                           bypass_gates=bypass_gates, reason=why)
        except (PolicyError, InvalidInputError) as err:  # no permission, an alias the policy does not allow
            result = ImportedMove(name, alias, version, "refused", str(err))
        report.moves.append(result)

    wanted: set[str] = set()
    for mlflow_stage, stage in STAGES.items():
        members = sorted((_ms(mv.last_updated_timestamp), int(mv.version)) for mv in model.versions
                          if mv.current_stage == mlflow_stage and int(mv.version) in numbers)
        if not members:
            continue
        wanted.add(stage)
        current = pointers.get(stage)
        if current is not None and current.version == numbers[members[-1][1]]:
            continue
        # replay MLflow's stage members in the order it last changed them (the newest
        # holds the stage), from after the stage's last recorded move
        replay = [m for m in members if current is None or m[0] > current.event.time] or members[-1:]
        if current is not None and IMPORT_DETAIL not in (current.event.details or {}):
            replay = members[-1:]  # casreg moved it itself: one attempt, which reports it kept
        if replay[-1] != members[-1]:
            replay.append(members[-1])
        for when, number in replay:
            move(stage, numbers[number], when, model_version=f"{model.mlflow_name}/{number}", stage=mlflow_stage)
    for mlflow_alias, number in sorted(model.aliases.items()):
        alias = casreg_alias(mlflow_alias)
        if alias is None:
            report.warnings.append(f"{model.mlflow_name}@{mlflow_alias}: MLflow alias not carried (no valid casreg "
                                   "alias for it, or it names a stage)")
            continue
        if number not in numbers:
            continue
        wanted.add(alias)
        if pointers.get(alias) is None or pointers[alias].version != numbers[number]:
            move(alias, numbers[number], utcnow(), model_version=f"{model.mlflow_name}/{number}",
                 mlflow_alias=mlflow_alias)
    for alias, pointer in sorted(pointers.items()):  # gone from MLflow: removed, if an import set it
        imported = (pointer.event.details or {}).get(IMPORT_DETAIL)
        if alias not in wanted and isinstance(imported, Mapping) and imported.get("source") == "mlflow":
            move(alias, None, utcnow(), removed="no longer set in MLflow")
    # archives last: a version a stage or alias leaves is archived; one still held is not (casreg never
    # archives a version an alias points at), reported as refused
    for mv in model.versions:
        if mv.current_stage == "Archived" and int(mv.version) in numbers:
            number = numbers[int(mv.version)]
            try:
                report.moves.append(registry.import_archive(
                    name, number, time=_ms(mv.last_updated_timestamp),
                    origin=_origin(uri, model_version=f"{model.mlflow_name}/{mv.version}", stage="Archived"),
                    reason="imported from MLflow (stage Archived)"))
            except PolicyError as err:
                report.moves.append(ImportedMove(name, None, number, "refused", str(err)))


def import_mlflow(registry: Registry, tracking_uri: str, *, registry_uri: str | None = None,
                  models: Sequence[str] | None = None, dry_run: bool = False, bypass_gates: bool = False,
                  progress: Progress | None = None, on_version: Callable[[ImportedVersion], None] | None = None,
                  workdir: str | None = None) -> ImportReport:
    """Import the registered models of the MLflow tracking server ``tracking_uri`` (every
    model, or those named in ``models``) into ``registry``: new versions, then stages and
    aliases (see the module doc). ``dry_run`` lists what would be imported and changes
    nothing; ``bypass_gates`` records stage and alias moves the policy's gates refuse
    (marked as such); ``progress`` is each push's; ``on_version`` is called with each
    version's outcome as it is known; artifacts are downloaded under ``workdir``
    (default: the system's temporary directory), one version at a time."""
    started = _time.monotonic()
    mlflow = load_mlflow()
    from mlflow.tracking import MlflowClient

    for uri in (tracking_uri, registry_uri):
        _require_sqlite_file(uri)

    with _mlflow_errors(tracking_uri, "connecting"):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    report = ImportReport(redact_url(tracking_uri), dry_run)
    selected = _read_models(client, tracking_uri, models)
    for model in selected:
        report.models.append(model.mlflow_name)
        done = _existing(registry, model.name)
        numbers: dict[int, int] = {}
        for mv in model.versions:
            key = (f"{model.mlflow_name}/{mv.version}", _ms(mv.creation_timestamp))
            if key in done:
                numbers[int(mv.version)] = done[key].version
                outcome = ImportedVersion(model.mlflow_name, int(mv.version), model.name, "skipped",
                                          done[key].version)
            elif str(mv.status) != "READY":
                outcome = ImportedVersion(model.mlflow_name, int(mv.version), model.name, "not ready")
                report.warnings.append(f"{key[0]}: status {mv.status} in MLflow; not imported")
            elif dry_run:
                outcome = ImportedVersion(model.mlflow_name, int(mv.version), model.name, "would import")
            else:
                outcome = _import_version(registry, client, mlflow, tracking_uri, model, mv, report, progress,
                                          workdir)
                numbers[int(mv.version)] = int(outcome.version or 0)
            report.versions.append(outcome)
            if on_version is not None:
                on_version(outcome)
        if not dry_run and numbers:
            _sync_pointers(registry, tracking_uri, model, numbers, report, bypass_gates)
    report.seconds = _time.monotonic() - started
    return report
