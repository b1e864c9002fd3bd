"""``casreg.Registry``: the one public entry point, a thin façade over the layers.

Every method resolves its reference once, to a digest (:mod:`casreg.ledger.resolve`),
and then works by digest only. The work itself is done by functions of the layers
below, each over the registry's store (docs/ARCHITECTURE.md); this class holds the store
and the options and passes the hooks on as the event sink.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from casreg._version import package_version
from casreg.content.manifest import Manifest, read_manifest
from casreg.digest import Digest
from casreg.errors import (
    AliasNotMovedError,
    CasregError,
    IntegrityError,
    InvalidInputError,
    PolicyError,
    UnknownReferenceError,
)
from casreg.keys import manifest_key
from casreg.ledger.pointers import list_pointers, read_pointer, require_not_deleted, restore_pointer
from casreg.ledger.resolve import Resolved, resolve, unknown, version_record
from casreg.ledger.segments import commit_version, list_versions, read_version
from casreg.lineage import current_author, git_state, hostname
from casreg.progress import Progress
from casreg.records import (
    AliasEvent,
    AliasPointer,
    FileInfo,
    JsonValue,
    Lineage,
    PullResult,
    Version,
    check_record_size,
    clean_labels,
    clean_metrics,
    utcnow,
)
from casreg.redact import redact_url
from casreg.refs import Ref, parse_ref, split_ref_path, validate_alias, validate_name
from casreg.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from casreg.content.bundles import BundleResult
    from casreg.content.lazy import BF16Mode, Framework, SafetensorsFile
    from casreg.content.source import Source
    from casreg.governance.catalog import ModelSummary
    from casreg.governance.diff import VersionDiff
    from casreg.governance.event_signing import EventCheck
    from casreg.governance.history import LogEntry, LogPage
    from casreg.governance.imports import ImportedMove
    from casreg.governance.lifecycle import Promotion
    from casreg.governance.policy import PolicyFile
    from casreg.governance.retention import Deletion, RetentionPlan
    from casreg.governance.signatures import PublicKey
    from casreg.governance.signed_moves import MoveCheck, SigningAudit
    from casreg.governance.signing import SignatureCheck
    from casreg.governance.state import ListingState, VersionState
    from casreg.ledger.compact import CompactResult
    from casreg.ledger.sql import SqlResult
    from casreg.maintenance.gc import GcReport
    from casreg.maintenance.verify import VerifyReport

__all__ = ["Registry", "Resolved", "open_safetensors", "snapshot"]

log = logging.getLogger(__name__)

Duration = timedelta | float | str


def _names_directory(dest: str | os.PathLike[str]) -> bool:
    """A destination written with a trailing separator (``newdir/``) names a directory
    (only text keeps one: ``Path("newdir/")`` drops it)."""
    return isinstance(dest, str) and dest.endswith(("/", os.sep, os.altsep or "/"))


def _recorded_origin(author: str | None, created: datetime | None, pusher: str) -> tuple[str, datetime | None]:
    """A push's author and creation time as given (an import), checked; the pusher and
    ``None`` (now) when not given."""
    if author is not None and (not author.strip() or any(c in author for c in "\r\n")):
        raise InvalidInputError(f"invalid author {author!r}: non-empty, one line")
    if created is not None and created.tzinfo is None:
        raise InvalidInputError("created must be a timezone-aware datetime")
    return (author if author is not None else pusher), created


def _preload(module: str) -> None:
    """Import ``module`` on a background thread; a later ``import`` waits for it."""
    import importlib
    import sys
    import threading

    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


def _push_lineage(path: str | os.PathLike[str], source: Source, parent: Digest | None, run_id: str | None,
                  dataset: str | None, *, hardware: str | Mapping[str, object] | None, detect_hardware: bool,
                  code_dir: str | os.PathLike[str] | None, git_commit: str | None,
                  requirements: str | os.PathLike[str] | None, capture_env: bool,
                  signature: str | os.PathLike[str] | Mapping[str, object] | None,
                  links: Mapping[str, str] | None) -> Lineage:
    """The lineage a push records (docs/lineage.md), every given value checked
    (:class:`InvalidInputError` naming it) before anything is stored."""
    from casreg.content.tensor_schema import tensor_schema
    from casreg.lineage import (
        capture_environment,
        check_commit,
        clean_links,
        clean_signature,
        code_state,
        given_hardware,
        read_requirements,
        read_signature,
    )
    from casreg.lineage import detect_hardware as detected
    from casreg.records import CodeInfo, ModelSchema

    if requirements is not None and capture_env:
        raise InvalidInputError("give --requirements or --capture-env, not both")
    commit = check_commit(git_commit) if git_commit is not None else None
    if code_dir is not None:
        code: CodeInfo | None = code_state(code_dir)
        if commit is not None and code is not None and commit != code.commit:
            # the commit given wins; the checkout's dirty state says nothing about it
            code = replace(code, commit=commit, dirty=None, source="given")
    elif commit is not None:
        code = CodeInfo(commit=commit, source="given")
    else:
        git = git_state(os.fspath(path))
        code = CodeInfo(commit=git.commit, dirty=git.dirty, source="model-path") if git.commit else None
    hw = given_hardware(hardware) if hardware is not None else (detected() if detect_hardware else None)
    deps: dict[str, str] = {}
    deps_source = None
    if requirements is not None:
        deps, deps_source = read_requirements(requirements), f"requirements:{os.path.basename(os.fspath(requirements))}"
    elif capture_env:
        deps, deps_source = capture_environment(), "environment"
    sig = None
    if signature is not None:
        sig = clean_signature(signature) if isinstance(signature, Mapping) else read_signature(signature)
    schema = tensor_schema(source.files, single_file=source.kind == "file")
    if sig is not None:
        schema = replace(schema, signature=sig) if schema is not None else ModelSchema(signature=sig)
    return Lineage(git_commit=code.commit if code else None, git_dirty=code.dirty if code else None,
                   hostname=hostname(), python_version=platform.python_version(), casreg_version=package_version(),
                   parent=parent, run_id=run_id, dataset=dataset, hardware=hw, code=code, dependencies=deps,
                   dependencies_source=deps_source, schema=schema, links=clean_links(links))


class Registry:
    """A model registry at ``url``: a local directory (default ``~/.casreg`` or
    ``$CASREG_REGISTRY``), ``s3://BUCKET/PREFIX`` or ``memory://NAME``.

    Methods raise subclasses of :class:`casreg.CasregError` for expected failures (see
    :mod:`casreg.errors`); none of them leaves a half-done change behind.

    >>> reg = Registry("memory://demo")
    >>> v = reg.push("fraud-detector", "model.onnx", metrics={"auc": 0.98})   # doctest: +SKIP
    >>> reg.set_alias("fraud-detector", "production", v.ref)                 # doctest: +SKIP
    >>> reg.pull("fraud-detector@production", "serving/")                     # doctest: +SKIP
    """

    #: Compact the ledger after a push once the model has more uncompacted versions than
    #: this; ``None``: ``$CASREG_COMPACT_THRESHOLD``, else the default; 0: never.
    compact_threshold: int | None = None
    #: Bundle the pack indexes after a push that read at least this many of them one by one
    #: (docs/FORMAT.md §4.3); ``None``: ``$CASREG_BUNDLE_AT``, else 1,000; 0: never.
    bundle_at: int | None = None

    def __init__(self, url: str | os.PathLike[str] | None = None, *, zstd_level: int | None = None,
                 threads: int | None = None, check_writes: bool = True) -> None:
        """Open the registry at ``url`` (nothing is read or created until it is used).
        ``zstd_level`` overrides the registry's default level for pushes; ``threads``
        the number of worker threads of pushes, pulls and verify (default: every core);
        ``check_writes=False`` skips re-reading each new chunk before a push stores it
        (:func:`casreg.content.push.store_source`)."""
        self.store: ObjectStore = open_store(os.fspath(url) if url is not None else None)
        self.zstd_level = zstd_level
        self.threads = threads
        self.check_writes = check_writes

    @classmethod
    def from_store(cls, store: ObjectStore, *, zstd_level: int | None = None, threads: int | None = None,
                   check_writes: bool = True) -> Registry:
        """A registry over an already opened store (for example one wrapped for retries,
        caching or counting requests)."""
        reg = cls.__new__(cls)
        reg.store, reg.zstd_level, reg.threads, reg.check_writes = store, zstd_level, threads, check_writes
        return reg

    @property
    def url(self) -> str:
        """The store's URL (a local path, ``s3://...`` or ``memory://...``)."""
        return self.store.url

    def __repr__(self) -> str:
        return f"Registry({redact_url(repr(self.url))})"

    def _notify(self, event: Mapping[str, object]) -> None:
        """The event sink every change hands its event to: the registry's hooks
        (:mod:`casreg.governance.hooks`), which never fail the change."""
        from casreg.governance.hooks import dispatch

        dispatch(self.store, event)

    # -- resolving ----------------------------------------------------------------------------
    def resolve(self, ref: str | Ref) -> Resolved:
        """Resolve a reference (``NAME``, ``NAME:N``, ``NAME@ALIAS``, ``NAME@blake3:HEX``,
        ``blake3:HEX`` or a unique hex prefix of 12+ digits) to a digest, once. Raises
        :class:`~casreg.UnknownReferenceError` if it names nothing."""
        return resolve(self.store, ref)

    def manifest(self, ref: str | Ref | Resolved) -> Manifest:
        """The verified manifest of a version (its recomputed digest must match)."""
        resolved = ref if isinstance(ref, Resolved) else self.resolve(ref)
        return read_manifest(self.store, resolved.digest)

    def resolve_at(self, ref: str, at: datetime | str) -> Resolved:
        """What ``ref`` pointed at at time ``at`` (a datetime or ISO 8601 text)."""
        from casreg.governance.history import parse_when, resolve_at

        return resolve_at(self.store, ref, parse_when(at) if isinstance(at, str) else at)

    # -- push ---------------------------------------------------------------------------------
    def push(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float | str] | None = None,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
        framework: str | None = None,
        description: str | None = None,
        alias: str | None = None,
        parent: str | None = None,
        run_id: str | None = None,
        dataset: str | None = None,
        progress: Progress | None = None,
        author: str | None = None,
        created: datetime | None = None,
        hardware: str | Mapping[str, object] | None = None,
        detect_hardware: bool = True,
        code_dir: str | os.PathLike[str] | None = None,
        git_commit: str | None = None,
        requirements: str | os.PathLike[str] | None = None,
        capture_env: bool = False,
        signature: str | os.PathLike[str] | Mapping[str, object] | None = None,
        links: Mapping[str, str] | None = None,
    ) -> Version:
        """Store ``path`` (a file or directory) as the next version of ``name`` and return
        its record. Only chunks the registry lacks are stored; the version becomes visible
        when its ledger record is written, last, so a failed push leaves no version (only
        unreferenced objects ``gc`` reclaims). ``alias``: point ``name@alias`` at it too,
        after the commit; if that move fails (the policy refuses it, someone else moved
        the alias, ...), :class:`~casreg.errors.AliasNotMovedError` says that the version
        was committed and carries it, with the move's error as ``cause`` and exit code.
        ``author`` and ``created`` record another system's author and creation time (an
        import, docs/migrate-mlflow.md) instead of the current user and now; the policy's
        ``push`` permission is still checked for the current user.

        Lineage (docs/lineage.md): ``hardware`` (``"8x H100"`` or a mapping) replaces what
        is detected on this machine (``detect_hardware=False``: nothing is); ``code_dir``
        is the training code's git checkout and ``git_commit`` its commit (else the pushed
        path's repository is used); ``requirements`` (a requirements file) or
        ``capture_env`` (this environment's distributions) record the dependencies;
        ``signature`` an input/output schema (a JSON file path, or a mapping as MLflow's
        ``ModelSignature.to_dict()``); ``links`` named http(s) URLs. The tensor schema of
        safetensors files is read from their headers."""
        from casreg.content.chunking import DEFAULT_CHUNK_PARAMS  # push-only: kept off resolve/pull start-up
        from casreg.content.config import init_config
        from casreg.content.packs import ChunkIndex
        from casreg.content.push import store_source
        from casreg.content.source import scan_source
        from casreg.governance.policy import check_push
        from casreg.maintenance.gc import check_before_commit

        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        pusher = current_author()
        author, created_at = _recorded_origin(author, created, pusher)
        parent_digest = self.resolve(parent).digest if parent else None
        source = scan_source(path)
        lineage = _push_lineage(path, source, parent_digest, run_id, dataset, hardware=hardware,
                                detect_hardware=detect_hardware, code_dir=code_dir, git_commit=git_commit,
                                requirements=requirements, capture_env=capture_env, signature=signature, links=links)
        probe = Version(name=name, version=0, digest=Digest.from_bytes(bytes(32)), kind="file", size=0,
                        stored_bytes=0, new_bytes=0, file_count=0, chunk_count=0, created_at=created_at or utcnow(),
                        author=author, framework=framework, description=description,
                        metrics=clean_metrics(metrics), params=clean_labels("param", params),
                        tags=clean_labels("tag", tags), lineage=lineage)  # the record, before its content
        check_record_size(probe)  # before any byte is stored
        check_push(self.store, probe, pusher)

        _preload("pyarrow.parquet")  # needed at commit; importing it now overlaps the chunking
        config = init_config(self.store, DEFAULT_CHUNK_PARAMS)
        level = self.zstd_level if self.zstd_level is not None else config.zstd_level
        index = ChunkIndex.load(self.store)
        try:
            manifest, stats = store_source(self.store, source, params=config.chunk_params(), level=level,
                                           index=index, progress=progress, threads=self.threads,
                                           check_writes=self.check_writes, tree=config.tree,
                                           float_codec=config.float_codec,
                                           parent=self._delta_parent(name, parent) if config.delta_codec else None)
        finally:
            index.close()  # the bundle it may read entries back from
        record = replace(
            probe, digest=manifest.version_digest, kind=manifest.kind, size=stats.size,
            stored_bytes=stats.stored_bytes, new_bytes=stats.new_raw_bytes, file_count=len(source.files),
            chunk_count=stats.chunks, created_at=created_at or utcnow())
        files = [{"path": e.path, "type": e.type, "size": e.size, "digest": e.digest.hex() if e.digest else None}
                 for e in manifest.entries]
        check_before_commit(self.store, manifest, threads=self.threads,  # gc protocol (docs/gc.md): right before
                            data=stats.manifest_data or None)
        version = commit_version(self.store, record, files, tree=config.tree)
        # "kind" is the event's (push); the version's own kind (file/dir) goes under version_kind
        self._notify({**version.to_dict(), "kind": "push", "version_kind": version.kind})
        self._after_push(version, alias, index.read_alone)
        return version

    def _after_push(self, version: Version, alias: str | None, read_alone: int = 0) -> None:
        """The steps after a push's commit: move ``alias`` (a refusal raises
        :class:`AliasNotMovedError`, which says the version was committed), then compact the
        ledger and bundle the pack indexes (if the push read ``read_alone`` of them one by
        one, :attr:`bundle_at` or more) when due, either way."""
        try:
            if alias is not None:
                self.set_alias(version.name, alias, version.version, reason=f"push {version.ref} --alias")
        except CasregError as err:
            raise AliasNotMovedError(
                f"{version.ref} was committed ({version.digest}), but moving {version.name}@{alias} was refused: "
                f"{err}", name=version.name, version=version.version, digest=str(version.digest),
                cause=err) from err
        finally:
            self._auto_compact(version)  # the version is committed either way
            self._auto_bundle(version, read_alone)

    def _delta_parent(self, name: str, parent: str | None) -> Manifest | None:
        """The version a push to a ``casreg/4`` registry codes deltas against: ``parent``
        if given, else the newest version of ``name`` (none for a first version, and none,
        with a warning, if its manifest cannot be read: deltas only save bytes, they are
        no reason to refuse a push)."""
        try:
            return self.manifest(self.resolve(parent or name))
        except UnknownReferenceError:
            if parent:
                raise
            return None
        except CasregError as err:
            log.warning("casreg: pushing without delta coding: the parent version cannot be read (%s)", err)
            return None

    def _auto_bundle(self, version: Version, read_alone: int) -> None:
        """Best effort, as :meth:`_auto_compact`: the next push reads one bundle instead."""
        try:
            from casreg.content.bundles import bundle_at_from_env

            at = self.bundle_at if self.bundle_at is not None else bundle_at_from_env()
            if at and read_alone >= at:
                self.bundle_indexes(at_least=at)
        except Exception as err:  # noqa: BLE001
            log.warning("casreg: bundling the pack indexes failed (%s); %s is committed, run casreg compact later",
                        err, version.ref)

    def _auto_compact(self, version: Version) -> None:
        """Best effort: the version is committed, so nothing here may fail the push."""
        try:
            from casreg.ledger.compact import maybe_compact, threshold_from_env

            threshold = self.compact_threshold if self.compact_threshold is not None else threshold_from_env()
            maybe_compact(self.store, version.name, version.version, threshold)
        except Exception as err:  # noqa: BLE001
            log.warning("casreg: automatic ledger compaction failed (%s); %s is committed, run casreg compact later",
                        err, version.ref)

    # -- imports from another registry (casreg/importers/, docs/migrate-mlflow.md) ------------
    def import_alias(self, name: str, alias: str, ref: str | int | None, *, time: datetime,
                     origin: Mapping[str, str], bypass_gates: bool = False,
                     reason: str | None = None) -> ImportedMove:
        """Record that ``name@alias`` pointed at ``ref`` (or was unset: ``None``) at
        ``time`` in the registry ``origin`` describes: a pointer move marked as imported,
        done only where casreg itself has not moved the alias since, with the current
        user's permission and the policy's gates (``bypass_gates`` records a refused
        move anyway, listing the failed rules); :func:`casreg.governance.imports.import_move`."""
        from casreg.governance.imports import import_move

        return import_move(self.store, name, alias, ref, notify=self._notify, time=time, origin=origin,
                           bypass_gates=bypass_gates, reason=reason)

    def import_archive(self, name: str, ref: str | int, *, time: datetime, origin: Mapping[str, str],
                       reason: str | None = None) -> ImportedMove:
        """Record that a version was archived at ``time`` in the registry ``origin``
        describes (:func:`casreg.governance.imports.import_archive`)."""
        from casreg.governance.imports import import_archive

        return import_archive(self.store, name, ref, notify=self._notify, time=time, origin=origin, reason=reason)

    def compact(self, *, full: bool = False, grace: timedelta | None = None) -> CompactResult:
        """Merge the ledger's one-row segments into compacted files (see
        :func:`casreg.ledger.compact.compact`); safe while others push or compact.
        ``full`` merges everything into one file per table; superseded compacted files
        younger than ``grace`` (default 1 h) are kept."""
        from casreg.ledger.compact import DEFAULT_GRACE, compact

        return compact(self.store, full=full, grace=DEFAULT_GRACE if grace is None else grace)

    def bundle_indexes(self, *, at_least: int = 1000) -> BundleResult:
        """Copy every pack index into one index bundle, when at least ``at_least`` are not
        in one yet, and remove the older bundles (:func:`casreg.content.bundles.write_bundle`):
        a push then reads a few large ranges instead of one object per pack. Safe while
        others push, gc or load."""
        from casreg.content.bundles import write_bundle
        from casreg.content.cache import resolve_cache
        from casreg.content.packs import index_limit

        return write_bundle(self.store, max_index=index_limit(self.store), at_least=at_least,
                            cache=resolve_cache(self.store))

    # -- reading ------------------------------------------------------------------------------
    def show(self, ref: str | Ref) -> Version:
        """The ledger record of a version. A bare digest shows the newest version holding it."""
        return version_record(self.store, self.resolve(ref))

    def files(self, ref: str | Ref) -> list[FileInfo]:
        """The files (and empty directories) of a version, with sizes and digests."""
        m = self.manifest(ref)
        return [FileInfo(e.path, e.type, e.size, Digest.from_bytes(e.digest) if e.digest else None)
                for e in m.entries]

    def ls(self, name: str | None = None, *, newest: int | None = None, upto: int | None = None) -> list[Version]:
        """Every version of ``name`` (or only its ``newest`` ones), oldest first; without a
        name, the latest version of every model. Numbers are gap-free, so
        ``result[0].version - 1`` older versions exist. ``upto``: count ``newest`` back
        from version ``upto`` instead of the latest (a page: only its records are read)."""
        from casreg.keys import VERSIONS, parse_version_segment_key

        if name is not None:
            validate_name(name)
            versions = list_versions(self.store, name, newest, upto=upto)
            if not versions and newest != 0 and (upto is None or upto > 0):
                raise unknown(self.store, f"model {name!r} has no versions in {self.url}")
            return versions
        latest: dict[str, int] = {}
        for key in self.store.list(VERSIONS):  # one listing for every model
            parsed = parse_version_segment_key(key)
            if parsed is not None and parsed[1] > latest.get(parsed[0], 0):
                latest[parsed[0]] = parsed[1]
        return [read_version(self.store, n, latest[n]) for n in sorted(latest)]

    def pull(self, ref: str | Ref, dest: str | os.PathLike[str] | None = None, *, force: bool = False,
             include: str | Iterable[str] | None = None, progress: Progress | None = None,
             require_signed_by: str | Sequence[str] | None = None) -> PullResult:
        """Write a version to ``dest`` (default: ``./<file name>`` for a file version,
        ``./<model name>`` for a directory), verified before it appears there. A ``dest``
        string ending in ``/`` names a directory to put that default name in (created if
        absent): ``pull("m:2", "serving/")`` writes ``serving/<file name>``. An existing
        ``dest`` is refused unless ``force``; an interrupted pull resumes (README).

        Part of a version: ``ref`` may be ``REF/path/inside`` (one file, written as
        ``./<its name>`` by default, or one directory), and ``include`` keeps only the
        files matching these patterns (``huggingface_hub``'s ``allow_patterns`` rules:
        ``*.json``, ``tokenizer*``, ``1_Pooling/``; :mod:`casreg.content.select`).

        ``require_signed_by``: refuse, before writing anything, a version no key it names
        signed (:meth:`require_signed`: PolicyError) or whose signature does not verify
        (IntegrityError)."""
        from casreg.content.pull import materialize
        from casreg.content.select import select

        inner = ""
        if isinstance(ref, str) and "/" in ref:  # references never contain "/": REF/PATH
            head, inner = split_ref_path(ref)
            ref = str(head)
        resolved = self.resolve(ref)
        manifest = self.manifest(resolved)
        if require_signed_by is not None:
            from casreg.governance.signing import require_signed

            require_signed(self.store, manifest, self.trusted_keys(require_signed_by), resolved.label)
            alias = parse_ref(ref).alias if isinstance(ref, str) else ref.alias
            if alias is not None and resolved.name is not None:
                self._require_signed_move(resolved.name, alias)
        part = select(manifest, path=inner, include=include, where=f"casreg://{ref}")
        if dest is None or _names_directory(dest):
            if part.kind == "file":
                own = part.entries[0].path
            else:
                own = inner.rsplit("/", 1)[-1] if inner else (resolved.name or resolved.hexdigest[:12])
            dest = Path(dest or ".") / own
        stats = materialize(self.store, part, dest, force=force, progress=progress, threads=self.threads,
                            source=manifest_key(manifest.hexdigest))
        whole = len(manifest.files)
        return PullResult(resolved.name, resolved.version, resolved.digest, str(Path(dest).absolute()),
                          stats.size, stats.files, stats.fetched_bytes, stats.up_to_date,
                          stats.requests, stats.resumed_bytes, stats.cached_bytes,
                          version_files=whole if len(part.files) != whole else None)

    def snapshot(self, ref: str | Ref, *, include: str | Iterable[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, verify: bool = False,
                 progress: Progress | None = None) -> Path:
        """A verified, read-only local directory holding version ``ref`` (or the files of
        it that match ``include``), for tools that open a directory:
        ``AutoModel.from_pretrained(reg.snapshot("minilm@production"))``. Files are shared
        between versions through hard links and never fetched again once present
        (:mod:`casreg.content.snapshot`; ``cache_dir`` default: ``<chunk cache>/snapshots``).
        The reference is resolved once, here: the directory is named by the version's
        digest, so a later alias move never changes it. ``verify`` re-hashes files already
        present instead of trusting them."""
        from casreg.content.cache import default_cache_dir
        from casreg.content.snapshot import snapshot

        resolved = self.resolve(ref)
        root = Path(cache_dir).expanduser().absolute() if cache_dir is not None else default_cache_dir() / "snapshots"
        return snapshot(self.store, self.manifest(resolved), root, include=include, verify=verify,
                        progress=progress, threads=self.threads, where=f"casreg://{ref}")

    def sql(self, query: str) -> list[dict[str, JsonValue]]:
        """Run DuckDB SQL over the ledger views (``versions``, ``files``, ``events``,
        ``aliases``, ``approvals``, ``alias_history``, ``lineage``, ``version_state``;
        docs/FORMAT.md §9); rows as dicts of plain values."""
        return self.sql_result(query).rows

    def sql_result(self, query: str) -> SqlResult:
        """:meth:`sql`, with the result's column names in order (``.columns``; known also
        when no row matched) next to its rows (``.rows``)."""
        from casreg.ledger.sql import query_result

        return query_result(self.store, query)

    def search(self, name: str, *, where: str | None = None, stage: str | None = None,
               alias: str | None = None, sort: str | None = None, descending: bool = False,
               limit: int | None = None, offset: int = 0) -> list[Version]:
        """Versions of ``name`` matching a filter (``metrics.auc > 0.9 AND tags.team =
        'fraud'``), a stage or an alias, optionally sorted by a field; ``limit`` and
        ``offset`` take one page of the result (one query, only that page's records built)."""
        from casreg.governance.search import search

        return search(self.store, name, where=where, stage=stage, alias=alias, sort=sort, descending=descending,
                      limit=limit, offset=offset)

    def consistent_reads(self) -> AbstractContextManager[None]:
        """A block of reads (one web page) that looks once at whether the ledger changed:
        the summaries, searches, series and log pages read in it see one state of the
        ledger, none older than the block (:func:`casreg.ledger.sql.consistent_reads`)."""
        from casreg.ledger.sql import consistent_reads

        return consistent_reads(self.store)

    def models(self) -> list[ModelSummary]:
        """Every model, by name, with its latest version, its number of versions, their
        logical size, the bytes their pushes stored and its last activity (one query over
        the ledger, whatever its size)."""
        from casreg.governance.catalog import model_summaries

        return model_summaries(self.store)

    def model_names(self, prefix: str = "") -> list[str]:
        """Names of models starting with ``prefix``, from a bounded listing (no ledger
        read; at most ~0.3 s, maybe partial on a huge registry): for shell completion."""
        from casreg.governance.catalog import model_names

        return model_names(self.store, prefix)

    def alias_names(self, name: str, prefix: str = "") -> list[str]:
        """Aliases of ``name`` starting with ``prefix`` (every alias with a pointer, set or
        removed), from a bounded listing like :meth:`model_names`."""
        from casreg.governance.catalog import alias_names

        return alias_names(self.store, name, prefix)

    def series(self, name: str, fields: Sequence[str], *, points: int = 500,
               cumulative: bool = False) -> list[dict[str, float | int | None]]:
        """Numeric ``fields`` (``metrics.auc``, ``size``, ``stored_bytes``: names as
        ``search(sort=...)`` takes them) over the versions of ``name``, oldest first, as
        ``{"version": N, FIELD: value}`` rows: every version, or an even sample of
        ``points`` (at most 2,000) when there are more; ``cumulative``: running sums."""
        from casreg.governance.catalog import series

        return series(self.store, name, list(fields), points=points, cumulative=cumulative)

    def diff(self, a: str | Ref, b: str | Ref) -> VersionDiff:
        """Compare two versions: metrics, params, tags, files and shared bytes."""
        from casreg.governance.diff import diff_versions

        return diff_versions(self.store, a, b)

    # -- aliases ------------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, ref: str | int, *, reason: str | None = None,
                  annotations: Mapping[str, object] | None = None,
                  key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Point ``name@alias`` at a version of ``name`` (a number, a reference or a
        digest), by compare-and-swap; the move is recorded with its author and reason.
        The policy's permissions and the alias's gates apply (a stage moved this way
        keeps its previous version unarchived; :meth:`promote` archives it)."""
        from casreg.governance.lifecycle import promote

        validate_alias(alias)
        if alias == "archived":
            raise InvalidInputError("archived is a state of versions, not an alias: archive the version instead")
        event = promote(self.store, name, ref, alias, notify=self._notify, reason=reason, annotations=annotations,
                        kind="alias.set", key=key).event
        assert event is not None  # an alias.set always moves (or fails)
        return event

    def remove_alias(self, name: str, alias: str, *, reason: str | None = None,
                     key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Remove ``name@alias`` (recorded; the versions are untouched); ``key``: sign the
        removal (default ``$CASREG_SIGNING_KEY``; required for a gated alias when the
        policy has ``[keys]``)."""
        from casreg.governance.lifecycle import remove_alias

        validate_name(name)
        validate_alias(alias)
        if read_pointer(self.store, name, alias) is None:
            require_not_deleted(self.store, name, alias)
            raise unknown(self.store, f"{name}@{alias} is not set")
        return remove_alias(self.store, name, alias, notify=self._notify, reason=reason, key=key)

    def restore_alias(self, name: str, alias: str) -> AliasEvent:
        """Rewrite the pointer of ``name@alias`` that was deleted from the store or damaged
        (which ``verify`` reports, and every read and move of the alias refuses) as its
        last move in the ledger (:func:`casreg.ledger.pointers.restore_pointer`). Needs the
        permission to move the alias; records no event, since the alias's state stays
        what the ledger says."""
        from casreg.governance.state import policy_for

        validate_name(name)
        validate_alias(alias)
        policy_for(self.store, name).require_permission(current_author(), "promote", alias,
                                                        what=f"restoring {name}@{alias}")
        return restore_pointer(self.store, name, alias)

    def stage_versions(self, name: str, stage: str) -> list[int]:
        """Version numbers of ``name`` in ``stage``: the one an alias points at, or, for
        ``archived``, every archived one (read from the model's events; no SQL)."""
        from casreg.governance.state import stage_members

        validate_name(name)
        validate_alias(stage)
        return stage_members(self.store, name, stage)

    def listing_state(self, name: str | None = None,
                      pointers: list[AliasPointer] | None = None) -> ListingState:
        """Archived versions of ``name`` (of every model, without a name) and, given the
        ``pointers`` a listing shows, the aliases whose pointer was deleted although the
        ledger says they are set: one read of the events
        (:func:`casreg.governance.state.listing_state`)."""
        from casreg.governance.state import listing_state

        if name is not None:
            validate_name(name)
        return listing_state(self.store, name, pointers)

    def archived(self, name: str | None = None) -> dict[tuple[str, int], AliasEvent]:
        """The archived versions of ``name`` (of every model, without a name), each as
        ``(name, version)`` with the event that archived it: one read of the model's events
        (of the whole event table, for every model), for a listing that shows state."""
        from casreg.governance.state import archived_everywhere

        if name is not None:
            validate_name(name)
        return archived_everywhere(self.store, name)

    def aliases(self, name: str | None = None, *, confirm: bool = False) -> list[AliasPointer]:
        """Every alias that is set (of ``name``, or of every model) and where it points,
        each checked against its key (an :class:`~casreg.IntegrityError` naming a pointer
        that is malformed or names another alias). ``confirm``: each also checked
        against the ledger (one small read per alias); without it, a caller that shows
        pointers next to version records checks them against those
        (:func:`casreg.ledger.pointers.lying_pointers`)."""
        if name is not None:
            validate_name(name)
        return list_pointers(self.store, name, confirm=confirm)

    # -- lifecycle: stages, approvals, history, policy (casreg/governance/) ------------------
    def promote(self, name: str, ref: str | int, stage: str, *, reason: str | None = None,
                keep_previous: bool = False, dry_run: bool = False,
                annotations: Mapping[str, object] | None = None, if_current: str | int | None = None,
                key: str | os.PathLike[str] | None = None) -> Promotion:
        """Move ``name@stage`` to a version once the policy's gates pass; promoting to
        production archives the version it replaces unless ``keep_previous``. ``dry_run``
        evaluates the gates and changes nothing; ``if_current`` makes the move conditional
        on the stage still pointing at that version. ``key``: a private key file the move
        is signed with (default ``$CASREG_SIGNING_KEY``; docs/signing.md)."""
        from casreg.governance.lifecycle import promote

        return promote(self.store, name, ref, stage, notify=self._notify, reason=reason,
                       keep_previous=keep_previous, dry_run=dry_run, annotations=annotations,
                       if_current=if_current, key=key)

    def archive(self, name: str, ref: str | int, *, reason: str | None = None,
                key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Archive a version (kept and pullable); refused while an alias points at it.
        ``key``: sign the event (default ``$CASREG_SIGNING_KEY``)."""
        from casreg.governance.lifecycle import archive

        return archive(self.store, name, ref, notify=self._notify, reason=reason, key=key)

    def rollback(self, name: str, alias: str, *, reason: str | None = None, keep_previous: bool = False,
                 key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Move ``name@alias`` back to its previous target, as a new recorded event
        (``key``: signed with it, default ``$CASREG_SIGNING_KEY``)."""
        from casreg.governance.lifecycle import rollback

        return rollback(self.store, name, alias, notify=self._notify, reason=reason, keep_previous=keep_previous,
                        key=key)

    def approve(self, name: str, ref: str | int, *, stage: str, comment: str | None = None,
                key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Record the current author's approval of a version for ``stage`` (``key``:
        signed with it, default ``$CASREG_SIGNING_KEY``; required when the policy has
        ``[keys]``)."""
        from casreg.governance.lifecycle import decide

        return decide(self.store, name, ref, stage, notify=self._notify, approve=True, comment=comment, key=key)

    def reject(self, name: str, ref: str | int, *, stage: str, comment: str | None = None,
               key: str | os.PathLike[str] | None = None) -> AliasEvent:
        """Record the current author's rejection of a version for ``stage`` (a standing
        rejection fails the stage's approval gate; ``key`` as for :meth:`approve`)."""
        from casreg.governance.lifecycle import decide

        return decide(self.store, name, ref, stage, notify=self._notify, approve=False, comment=comment, key=key)

    def log(self, name: str, *, alias: str | None = None, kinds: Iterable[str] | None = None,
            since: datetime | str | None = None, until: datetime | str | None = None) -> list[LogEntry]:
        """Every push and event of ``name``, oldest first; ``alias`` keeps that alias's
        moves and approvals, ``kinds``/``since``/``until`` filter."""
        from casreg.governance.history import history, parse_when

        def when(t: datetime | str | None) -> datetime | None:
            return parse_when(t) if isinstance(t, str) else t

        return history(self.store, name, alias=alias, kinds=kinds, since=when(since), until=when(until))

    def log_page(self, name: str, *, alias: str | None = None, kinds: Iterable[str] | None = None,
                 since: datetime | str | None = None, until: datetime | str | None = None, limit: int = 100,
                 offset: int = 0) -> LogPage:
        """One page of :meth:`log`, newest first: the entries ``offset`` ..
        ``offset + limit - 1`` counted from the newest, and the total (one query over the
        ledger: only the page's entries are built)."""
        from casreg.governance.history import history_page, parse_when

        def when(t: datetime | str | None) -> datetime | None:
            return parse_when(t) if isinstance(t, str) else t

        return history_page(self.store, name, alias=alias, kinds=kinds, since=when(since), until=when(until),
                            limit=limit, offset=offset)

    def ancestors(self, version: Version, *, limit: int = 10) -> list[Version]:
        """``version``'s lineage chain: the newest version holding its ``--parent``
        digest, then that one's parent, ... (at most ``limit``; one query)."""
        from casreg.governance.catalog import ancestors

        return ancestors(self.store, version.lineage.parent, limit=limit)

    def state(self, ref: str | Ref | Version) -> VersionState:
        """Lifecycle state of a version: archived or not, standing approvals and
        rejections per stage. A :class:`Version` already read (by :meth:`show`) is used
        as is, not read again."""
        from casreg.governance.state import version_state

        v = ref if isinstance(ref, Version) else self.show(ref)
        return version_state(self.store, v.name, v.version)

    def set_policy(self, text: str, *, reason: str | None = None, key: str | os.PathLike[str] | None = None) -> int:
        """Store a new version of the registry's policy (TOML; docs/lifecycle.md) and
        return its number; ``key``: an admin key the ``policy.set`` event is signed with
        (default ``$CASREG_SIGNING_KEY``), what readers who pin it check (docs/signing.md)."""
        from casreg.governance.lifecycle import set_policy

        return set_policy(self.store, text, notify=self._notify, reason=reason, key=key)[0]

    def event_signatures(self, entries: Iterable[LogEntry | AliasEvent]) -> dict[str, EventCheck]:
        """The signature check of each signable event among ``entries`` (a :meth:`log`),
        by event id, against the keys of the policy in force (docs/signing.md)."""
        from casreg.governance.signed_moves import check_entries

        return check_entries(self.store, entries)

    def move_signature(self, name: str, alias: str) -> MoveCheck | None:
        """The signature check of ``name@alias``'s last move, with whether the policy
        whose keys checked it is signed by a pinned root (``None``: never set)."""
        from casreg.governance.signed_moves import check_move

        return check_move(self.store, name, alias)

    def signing_audit(self) -> SigningAudit:
        """What no valid signed event explains (:func:`~casreg.governance.signed_moves.audit_signed_events`)."""
        from casreg.governance.signed_moves import audit_signed_events

        return audit_signed_events(self.store)

    def policy(self, version: int | None = None) -> PolicyFile | None:
        """The policy in force (or version ``version``), or ``None`` if there is none."""
        from casreg.governance.policy import read_policy

        return read_policy(self.store, version)

    # -- deletion and retention (casreg/governance/retention.py, docs/retention.md) ---------
    def delete(self, name: str, ref: str | int, *, reason: str, key: str | os.PathLike[str] | None = None) -> Deletion:
        """Delete a version of ``name`` (a number, reference or digest): record its
        tombstone and a ``delete`` event (the ledger stays append-only); from then on it
        no longer resolves or pulls (:class:`~casreg.errors.DeletedVersionError`), and
        :meth:`gc` reclaims what no live version uses. Refused while an alias points at
        it, without the policy's ``delete`` permission, when ``[protect]`` protects it,
        and when it is already deleted; ``reason`` is required. ``key``: sign the ``delete``
        event (default ``$CASREG_SIGNING_KEY``; required when the policy has ``[keys]``)."""
        from casreg.governance.retention import delete_version

        return delete_version(self.store, name, ref, notify=self._notify, reason=reason, key=key)

    def retain(self, name: str, *, keep_last: int | None = None, keep_since: str | timedelta | None = None,
               keep_stages: bool = False, dry_run: bool = False, reason: str | None = None,
               key: str | os.PathLike[str] | None = None) -> RetentionPlan:
        """Apply a retention rule to ``name``: keep its newest ``keep_last`` versions,
        those younger than ``keep_since`` (``"90d"``), with ``keep_stages`` those at an
        alias or ever in staging or production, and whatever an alias holds or the
        policy protects; delete the rest (unless ``dry_run``). The plan says what it
        deletes and the bytes gc then reclaims."""
        from casreg.governance.retention import retain
        from casreg.governance.retention_rule import RetentionRule, parse_age

        since = parse_age(keep_since) if isinstance(keep_since, str) else keep_since
        rule = RetentionRule(keep_last, since, keep_stages)
        return retain(self.store, name, rule, notify=self._notify, dry_run=dry_run, reason=reason, key=key)

    def deleted(self, name: str | None = None) -> dict[tuple[str, int], AliasEvent]:
        """The deleted versions of ``name`` (of every model, without a name), each with
        its ``delete`` event: one listing of the tombstones and one small read each."""
        from casreg.ledger.tombstones import read_tombstones

        if name is not None:
            validate_name(name)
        return read_tombstones(self.store, name)

    def deleted_versions(self, name: str | None = None) -> set[tuple[str, int]]:
        """``(name, version)`` of every deleted version of ``name`` (of every model,
        without a name): one listing of the tombstones and no read, for a listing that
        marks them or leaves them out of its counts (:meth:`deleted` has their events)."""
        from casreg.ledger.tombstones import tombstoned

        if name is not None:
            validate_name(name)
        return tombstoned(self.store, name)

    # -- signatures (docs/signing.md) ---------------------------------------------------------
    def sign(self, ref: str | Ref, key_path: str | os.PathLike[str]) -> SignatureCheck:
        """Sign version ``ref`` with the ECDSA private key in PEM file ``key_path`` and store
        the signature (``signatures/<version>/<key fingerprint>.sig.json``, create-if-absent;
        a key that already signed the version keeps its signature). The signature is a
        model_signing bundle: the pulled version verifies with ``model_signing verify key``."""
        from casreg.governance.signing import sign_version

        resolved = self.resolve(ref)
        label = resolved.label if resolved.name is not None else None
        return sign_version(self.store, self.manifest(resolved), name=resolved.name or resolved.hexdigest[:12],
                            ref=label, private_key=key_path)

    def trusted_keys(self, signed_by: str | Sequence[str] | None = None) -> list[PublicKey]:
        """The public keys ``signed_by`` names (public key files, names in the policy's
        ``[keys]``, or roles matching key names); ``None``: every key of the policy."""
        from casreg.governance.signing import policy_keys, trusted_keys
        from casreg.governance.trust import require_trusted_policy

        if signed_by is None or any(not os.path.isfile(w) for w in ([signed_by] if isinstance(signed_by, str)
                                                                   else signed_by)):
            require_trusted_policy(self.store)  # the policy's keys count only if a pinned root signed it
        policy = self.policy()
        keys = policy_keys(policy.doc) if policy is not None else {}
        if signed_by is None:
            return [k for ks in keys.values() for k in ks]
        words = [signed_by] if isinstance(signed_by, str) else list(signed_by)
        roles = dict(policy.for_model(None).roles) if policy is not None else {}
        return trusted_keys(words, keys, roles)

    def signatures(self, ref: str | Ref, signed_by: str | Sequence[str] | None = None) -> list[SignatureCheck]:
        """Every signature of version ``ref``, each checked against the keys ``signed_by``
        names (:meth:`trusted_keys`; ``None``: the policy's keys): ``verified``,
        ``invalid`` (forged, damaged or made for other contents) or ``unknown key``."""
        from casreg.governance.signing import check_signatures
        from casreg.governance.trust import UntrustedPolicyError

        try:
            keys = self.trusted_keys(signed_by)
        except UntrustedPolicyError:
            if signed_by is not None:
                raise
            keys = []  # an untrusted policy's keys check nothing: every signature is by an unknown key
        return check_signatures(self.store, self.manifest(ref), keys)

    def require_signed(self, ref: str | Ref | Resolved, signed_by: str | Sequence[str]) -> SignatureCheck:
        """The verified signature of ``ref`` by one of the keys ``signed_by`` names;
        :class:`~casreg.errors.PolicyError` if none of them signed it,
        :class:`~casreg.errors.IntegrityError` if their signature does not verify."""
        from casreg.governance.signing import require_signed

        resolved = ref if isinstance(ref, Resolved) else self.resolve(ref)
        return require_signed(self.store, self.manifest(resolved), self.trusted_keys(signed_by), resolved.label)

    def signature_bundle(self, ref: str | Ref, signed_by: str | Sequence[str]) -> bytes:
        """The stored signature of ``ref`` by one of the keys ``signed_by`` names (as
        :meth:`require_signed`), checked: the bytes ``model_signing`` verifies with."""
        from casreg.governance.signing import require_signed, signature_bundle

        keys = self.trusted_keys(signed_by)
        resolved = self.resolve(ref)
        manifest = self.manifest(resolved)
        check = require_signed(self.store, manifest, keys, resolved.label)
        return signature_bundle(self.store, manifest, next(k for k in keys if k.fingerprint == check.fingerprint))

    def _require_signed_move(self, name: str, alias: str) -> None:
        """For a keyed policy: ``name@alias``'s last move must be explained by a valid
        signed event (PolicyError if unsigned, IntegrityError if badly signed)."""
        from casreg.governance.signed_moves import check_move, signing_state

        state = signing_state(self.store)
        if not state.configured:
            return
        move = check_move(self.store, name, alias, state)
        if move is None or move.check.signed:
            return
        what = (f"{name}@{alias} was last moved by {move.event.kind} {move.event.event_id} "
                f"({move.event.author}), which is {move.check.line()}: no valid signed event explains it; refused")
        raise (IntegrityError(what) if move.check.status == "invalid" else PolicyError(what))

    # -- maintenance: verify and gc (casreg/maintenance/, docs/gc.md) ------------------------
    def verify(self, ref: str | Ref | None = None, progress: Progress | None = None, *,
               read_data: bool = False) -> VerifyReport:
        """Re-read and re-hash everything reachable from every version (or from ``ref``);
        the report names every bad or missing object. ``read_data`` also reads every
        distinct file whole and checks it against its file digest (docs/verify.md)."""
        from casreg.maintenance.verify import verify_registry, verify_version

        if ref is None:
            report = verify_registry(self.store, progress=progress, threads=self.threads, read_data=read_data)
            from casreg.governance.signed_moves import audit_signed_events
            from casreg.maintenance.verify import Problem

            try:
                audit = audit_signed_events(self.store)
            except CasregError as err:  # a damaged policy or ledger: verify's own checks name it
                report.warnings.append(f"signed events were not checked: {err}")
            else:
                report.notes.extend(audit.notes)
                report.problems.extend(Problem(key, "unsigned", why) for key, why in audit.problems)
            return report
        resolved = self.resolve(ref)
        named = (resolved.name, resolved.version) if resolved.name is not None and resolved.version is not None \
            else None
        report = verify_version(self.store, resolved.digest, label=resolved.label, progress=progress,
                                threads=self.threads, version=named, read_data=read_data)
        if named is not None:  # the signing checks that concern this version (docs/signing.md)
            from casreg.governance.signed_moves import audit_version
            from casreg.maintenance.verify import Problem

            try:
                one = audit_version(self.store, *named)
            except IntegrityError as err:  # a damaged policy, event or pointer: nothing else names it here
                report.problems.append(Problem("signing checks", "corrupt", f"signed events were not checked: {err}"))
            except CasregError as err:
                report.warnings.append(f"signed events were not checked: {err}")
            else:
                report.notes.extend(one.notes)
                report.problems.extend(Problem(key, "unsigned", why) for key, why in one.problems)
        return report

    def gc(self, *, dry_run: bool = False, grace: Duration | None = None, delay: Duration | None = None,
           retain: bool = False, key: str | os.PathLike[str] | None = None) -> GcReport:
        """Reclaim objects no live version references (two phases, safe against concurrent
        pushes: docs/gc.md). ``grace`` (default 24 h) and ``delay`` (default 1 h) take
        seconds, a ``timedelta`` or text such as ``"24h"``. ``retain``: first apply the
        policy's retention rules (``[retention]``, docs/retention.md), deleting what they
        do not keep (with ``dry_run``, only planning it); the plans are in the report's
        ``retention``, and each ``delete`` event is signed with ``key`` (default
        ``$CASREG_SIGNING_KEY``; required when the policy has ``[keys]``)."""
        from casreg.maintenance.gc import DEFAULT_DELAY, DEFAULT_GRACE, collect

        plans: list[RetentionPlan] = []
        if retain:
            from casreg.governance.retention import policy_retention
            from casreg.governance.retention import retain as apply_rule

            plans = [apply_rule(self.store, name, rule, notify=self._notify, dry_run=dry_run, key=key)
                     for name, rule in policy_retention(self.store)]
        report = collect(self.store, dry_run=dry_run, grace=DEFAULT_GRACE if grace is None else grace,
                         delay=DEFAULT_DELAY if delay is None else delay, threads=self.threads)
        report.retention = [p.to_dict() for p in plans]
        return report

    # -- reading in place: lazy tensors (casreg/content/lazy.py) ------------------------------
    def open_safetensors(self, ref: str, path: str = "", *, bf16: BF16Mode = "auto",
                         framework: Framework = "np") -> SafetensorsFile:
        """Open the safetensors file ``path`` of version ``ref`` (``path`` may be omitted
        for a file version; ``ref`` may also be ``REF/PATH`` or a ``casreg://`` URL) for
        lazy tensor reads: the header now, each tensor's bytes only when asked for. The
        reference is resolved once, here."""
        from casreg.content.lazy import PinnedFile, SafetensorsFile, file_entry

        if "/" in ref:  # references never contain "/": this is REF/PATH or a casreg:// URL
            head, inner = split_ref_path(ref)
            ref, path = str(head), "/".join(p for p in (inner, path.strip("/")) if p)
        resolved = self.resolve(ref)
        where = f"casreg://{ref}" + (f"/{path}" if path else "")
        manifest = self.manifest(resolved)
        entry = file_entry(manifest, path.strip("/"), where)
        return SafetensorsFile(PinnedFile(self.store, entry, where=where, threads=self.threads,
                                          source=manifest_key(resolved.digest), bases=manifest.base_map), bf16=bf16,
                               framework=framework)


def open_safetensors(ref: str, path: str = "", *, registry: Registry | str | os.PathLike[str] | None = None,
                     bf16: BF16Mode = "auto", framework: Framework = "np") -> SafetensorsFile:
    """:meth:`Registry.open_safetensors` on ``registry`` (a :class:`Registry` or its URL;
    default ``$CASREG_REGISTRY``, else ``~/.casreg``)."""
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    return reg.open_safetensors(ref, path, bf16=bf16, framework=framework)


def snapshot(ref: str, *, include: str | Iterable[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
             registry: Registry | str | os.PathLike[str] | None = None, verify: bool = False) -> Path:
    """:meth:`Registry.snapshot` on ``registry`` (a :class:`Registry` or its URL; default
    ``$CASREG_REGISTRY``, else ``~/.casreg``): a verified, read-only directory of the
    version, for ``from_pretrained``-style loaders."""
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    return reg.snapshot(ref, include=include, cache_dir=cache_dir, verify=verify)
