"""``casreg.Registry``: the one public entry point.

Every method resolves its reference once, to a digest, and then works by digest only.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from casreg import __version__
from casreg.content.codec import DEFAULT_ZSTD_LEVEL
from casreg.errors import (
    AmbiguousReferenceError,
    CasregError,
    IntegrityError,
    InvalidInputError,
    PolicyError,
    NotFoundError,
    UnknownReferenceError,
)
from casreg.ledger.segments import commit_version, latest_number, list_versions, parse_segment_key, read_version
from casreg.lineage import current_author, git_state, hostname
from casreg.content.manifest import Manifest, manifest_key
from casreg.ledger.pointers import list_pointers, move_alias, read_pointer
from casreg.progress import Progress
from casreg.records import AliasEvent, AliasPointer, FileInfo, Lineage, PullResult, Version, utcnow
from casreg.refs import FULL_HEX, Ref, RefKind, parse_ref, validate_alias, validate_name
from casreg.storage import ObjectStore, open_store

__all__ = ["Registry", "Resolved"]

CONFIG_KEY = "casreg.json"
REGISTRY_FORMAT = "casreg/1"


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference pointed at when it was resolved."""

    digest: str  # "blake3:<64 hex>"
    name: str | None = None  # None for a bare digest reference
    version: int | None = None
    #: The alias's annotations when the reference was NAME@ALIAS (from the same pointer
    #: read that gave the digest); not part of equality.
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def hexdigest(self) -> str:
        return self.digest.removeprefix("blake3:")


def _preload(module: str) -> None:
    """Import ``module`` on a background thread; a later ``import`` waits for it."""
    import importlib
    import sys
    import threading

    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


def _check_keys(kind: str, mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (mapping or {}).items():
        if not isinstance(k, str) or not k or any(c.isspace() for c in k) or len(k) > 128:
            raise InvalidInputError(f"invalid {kind} name {k!r}: non-empty, no spaces, at most 128 characters")
        out[k] = v
    return out


def _metrics(mapping: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in _check_keys("metric", mapping).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidInputError(f"metric {k}={v!r} is not a number") from None
        if not math.isfinite(f):
            what = "NaN" if math.isnan(f) else "infinite"
            raise InvalidInputError(f"metric {k}={v!r} is {what}; metrics must be finite numbers")
        out[k] = f
    return out


class Registry:
    """A model registry at ``url``: a local directory (default ``~/.casreg`` or
    ``$CASREG_REGISTRY``) or ``memory://NAME``.

    >>> reg = Registry("memory://demo")
    >>> v = reg.push("fraud-detector", "model.onnx", metrics={"auc": 0.98})   # doctest: +SKIP
    >>> reg.set_alias("fraud-detector", "production", v.ref)                 # doctest: +SKIP
    >>> reg.pull("fraud-detector@production", "serving/")                     # doctest: +SKIP
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *, zstd_level: int | None = None,
                 threads: int | None = None) -> None:
        self.store: ObjectStore = open_store(os.fspath(url) if url is not None else None)
        self.zstd_level = zstd_level
        self.threads = threads
        self._config: dict[str, Any] | None = None

    @classmethod
    def from_store(cls, store: ObjectStore, *, zstd_level: int | None = None, threads: int | None = None) -> Registry:
        """A registry over an already opened store (for example one wrapped for retries,
        caching or counting requests)."""
        reg = cls.__new__(cls)
        reg.store, reg.zstd_level, reg.threads, reg._config = store, zstd_level, threads, None
        return reg

    @property
    def url(self) -> str:
        return self.store.url

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- configuration -------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any] | None:
        if self._config is None:
            try:
                self._config = json.loads(self.store.read(CONFIG_KEY))
            except NotFoundError:
                return None
            except ValueError:
                raise IntegrityError(f"{CONFIG_KEY} in {self.url} is corrupt") from None
            if self._config.get("format") != REGISTRY_FORMAT:
                raise CasregError(f"{self.url} holds a registry of format {self._config.get('format')!r}; "
                                  f"this casreg reads {REGISTRY_FORMAT}")
        return self._config

    def _init(self, chunking: Any) -> dict[str, Any]:
        config = self._read_config()
        if config is None:
            self.store.check_writable()
            doc = {"format": REGISTRY_FORMAT, "created_at": utcnow().isoformat(),
                   "chunking": chunking.to_dict(), "zstd_level": DEFAULT_ZSTD_LEVEL}
            self.store.create(CONFIG_KEY, json.dumps(doc, indent=2).encode())
            config = self._read_config()
            assert config is not None
        return config

    def _unknown(self, message: str) -> UnknownReferenceError:
        if self._read_config() is None:
            return UnknownReferenceError(f"{message}: there is no registry at {self.url} yet (push a model first)")
        return UnknownReferenceError(message)

    # -- resolving -------------------------------------------------------------------------
    def resolve(self, ref: str | Ref) -> Resolved:
        """Resolve a reference (see :mod:`casreg.refs`) to a digest, once."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.kind is RefKind.DIGEST and r.name is None:
            return Resolved("blake3:" + self._find_digest(r))
        assert r.name is not None
        if r.kind is RefKind.ALIAS:
            assert r.alias is not None
            p = read_pointer(self.store, r.name, r.alias)
            if p is None:
                raise self._unknown(f"{r} is not set")
            return Resolved(p.digest, r.name, p.version, p.annotations)
        if r.kind is RefKind.DIGEST:
            matches = [v for v in self._versions(r.name) if v.digest.removeprefix("blake3:").startswith(r.digest or "")]
            digests = sorted({v.digest for v in matches})
            if not digests:
                raise self._unknown(f"{r.name} has no version with digest {r.digest}")
            if len(digests) > 1:
                raise AmbiguousReferenceError(
                    f"{r} matches {len(digests)} versions of {r.name} with different digests; give more digits")
            v = matches[-1]  # the same content pushed more than once: its newest version
            return Resolved(v.digest, v.name, v.version)
        if r.kind is RefKind.NUMBER:
            assert r.number is not None
            try:
                v = read_version(self.store, r.name, r.number)
            except NotFoundError:
                latest = latest_number(self.store, r.name)
                hint = f" (latest is {r.name}:{latest})" if latest else f" ({r.name} has no versions)"
                raise self._unknown(f"{r} does not exist{hint}") from None
            return Resolved(v.digest, v.name, v.version)
        latest = latest_number(self.store, r.name)
        if latest is None:
            raise self._unknown(f"model {r.name!r} has no versions in {self.url}")
        v = read_version(self.store, r.name, latest)
        return Resolved(v.digest, v.name, v.version)

    def _find_digest(self, r: Ref) -> str:
        hexd = r.digest or ""
        if len(hexd) == FULL_HEX:
            if self.store.exists(manifest_key(hexd)):
                return hexd
            raise self._unknown(f"no version has digest blake3:{hexd}")
        found = sorted({
            key.rsplit("/", 1)[-1].removesuffix(".manifest")
            for key in self.store.list(f"manifests/{hexd[:2]}")
            if key.rsplit("/", 1)[-1].startswith(hexd)
        })
        if not found:
            raise self._unknown(f"no version has a digest starting with {hexd}")
        if len(found) > 1:
            raise AmbiguousReferenceError(
                f"digest prefix {hexd} matches {len(found)} versions ({', '.join(f[:16] for f in found[:4])}...); give more digits"
            )
        return found[0]

    def _versions(self, name: str) -> list[Version]:
        return list_versions(self.store, name)

    def manifest(self, ref: str | Ref | Resolved) -> Manifest:
        """The verified manifest of a version (its recomputed digest must match)."""
        resolved = ref if isinstance(ref, Resolved) else self.resolve(ref)
        key = manifest_key(resolved.hexdigest)
        try:
            data = self.store.read(key)
        except NotFoundError:
            raise IntegrityError(f"object {key} is missing: the registry is damaged (run casreg verify)") from None
        return Manifest.from_bytes(data, expected=bytes.fromhex(resolved.hexdigest), where=key)

    # -- push --------------------------------------------------------------------------------
    def push(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float | str] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        framework: str | None = None,
        description: str | None = None,
        alias: str | None = None,
        parent: str | None = None,
        run_id: str | None = None,
        dataset: str | None = None,
        progress: Progress | None = None,
    ) -> Version:
        """Store ``path`` (a file or directory) as the next version of ``name``."""
        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        clean_metrics = _metrics(metrics)
        clean_params = {k: str(v) for k, v in _check_keys("param", params).items()}
        clean_tags = {k: str(v) for k, v in _check_keys("tag", tags).items()}
        git = git_state(os.fspath(path))
        self._check_push_policy(name, clean_metrics, clean_params, clean_tags, framework, description,
                                run_id=run_id, dataset=dataset, parent=parent, git_commit=git.commit)
        from casreg.content.chunking import DEFAULT_CHUNK_PARAMS, ChunkParams  # push-only: kept off resolve/pull start-up
        from casreg.content.push import store_source
        from casreg.content.source import scan_source

        source = scan_source(path)
        _preload("pyarrow.parquet")  # needed at commit; importing it now overlaps the chunking
        parent_digest = self.resolve(parent).digest if parent else None
        config = self._init(DEFAULT_CHUNK_PARAMS)
        chunking = ChunkParams.from_dict(config["chunking"])
        level = self.zstd_level if self.zstd_level is not None else int(config.get("zstd_level", DEFAULT_ZSTD_LEVEL))

        from casreg.content.packs import ChunkIndex

        index = ChunkIndex.load(self.store)
        manifest, stats = store_source(self.store, source, params=chunking, level=level, index=index,
                                       progress=progress, threads=self.threads)
        record = Version(
            name=name, version=0, digest="blake3:" + manifest.hexdigest, kind=manifest.kind,
            size=stats.size, stored_bytes=stats.stored_bytes, new_bytes=stats.new_raw_bytes,
            file_count=len(source.files), chunk_count=stats.chunks, created_at=utcnow(),
            author=current_author(), framework=framework, description=description,
            metrics=clean_metrics, params=clean_params, tags=clean_tags,
            lineage=Lineage(git_commit=git.commit, git_dirty=git.dirty, hostname=hostname(),
                            python_version=platform.python_version(), casreg_version=__version__,
                            parent=parent_digest, run_id=run_id, dataset=dataset),
        )
        files = [{"path": e.path, "type": e.type, "size": e.size, "digest": e.digest.hex() if e.digest else None}
                 for e in manifest.entries]
        self._check_before_commit(manifest)  # gc protocol (docs/gc.md): right before the commit
        version = commit_version(self.store, record, files)
        # "kind" is the event's (push); the version's own kind (file/dir) goes under version_kind
        self._notify({**version.to_dict(), "kind": "push", "version_kind": version.kind})
        if alias is not None:
            self.set_alias(name, alias, version.version, reason=f"push {version.ref} --alias")
        self._auto_compact(version)
        return version

    def _check_push_policy(self, name: str, metrics: dict[str, float], params: dict[str, str],
                           tags: dict[str, str], framework: str | None, description: str | None, *,
                           run_id: str | None, dataset: str | None, parent: str | None,
                           git_commit: str | None) -> None:
        """Refuse a push the policy forbids or that lacks required metadata, before any
        byte is stored."""
        from casreg.governance.policy import read_policy

        current = read_policy(self.store)
        if current is None:
            return
        policy = current.for_model(name)
        policy.require_permission(current_author(), "push", None, what=f"pushing {name}")
        if not policy.require:
            return
        probe = Version(name=name, version=0, digest="", kind="file", size=0, stored_bytes=0, new_bytes=0,
                        file_count=0, chunk_count=0, created_at=utcnow(), author=current_author(),
                        framework=framework, description=description, metrics=metrics, params=params,
                        tags=tags, lineage=Lineage(run_id=run_id, dataset=dataset, parent=parent or None,
                                                   hostname=hostname(), python_version=platform.python_version(),
                                                   casreg_version=__version__, git_commit=git_commit))
        missing = policy.missing_metadata(probe)
        if missing:
            raise PolicyError(f"push of {name} refused by policy version {policy.version}: missing "
                              f"{', '.join(missing)} (pass them with --metric/--param/--tag/--framework/"
                              "--description/--dataset/--run-id/--parent)")

    #: Compact the ledger after a push once the model has more uncompacted versions than
    #: this; ``None``: ``$CASREG_COMPACT_THRESHOLD``, else 256; 0: never.
    compact_threshold: int | None = None

    def _auto_compact(self, version: Version) -> None:
        """Best effort: the version is committed, so nothing here may fail the push."""
        try:
            from casreg.ledger.compact import maybe_compact, threshold_from_env

            threshold = self.compact_threshold if self.compact_threshold is not None else threshold_from_env()
            maybe_compact(self.store, version.name, version.version, threshold)
        except Exception as err:  # noqa: BLE001
            import logging

            logging.getLogger(__name__).warning(
                "casreg: automatic ledger compaction failed (%s); %s is committed, run casreg compact later",
                err, version.ref)

    def compact(self, **options: Any) -> Any:
        """Merge the ledger's one-row segments into compacted files (see
        :func:`casreg.ledger.compact.compact`); safe while others push or compact. Returns a
        :class:`casreg.ledger.compact.CompactResult`."""
        from casreg.ledger.compact import compact

        return compact(self.store, **options)

    # -- reading -----------------------------------------------------------------------------
    def show(self, ref: str | Ref) -> Version:
        """The ledger record of a version. A bare digest shows the newest version holding it."""
        resolved = self.resolve(ref)
        if resolved.name is not None and resolved.version is not None:
            return read_version(self.store, resolved.name, resolved.version)
        rows = self.sql(f"SELECT name, version FROM versions WHERE digest = '{resolved.digest}' "
                        "ORDER BY created_at DESC LIMIT 1")
        if not rows:
            raise self._unknown(f"{resolved.digest} is stored but no version records it")
        return read_version(self.store, rows[0]["name"], rows[0]["version"])

    def files(self, ref: str | Ref) -> list[FileInfo]:
        m = self.manifest(ref)
        return [FileInfo(e.path, e.type, e.size, e.digest.hex() if e.digest else None) for e in m.entries]

    def ls(self, name: str | None = None, *, newest: int | None = None) -> list[Version]:
        """Every version of ``name`` (or only its ``newest`` ones), oldest first; without a
        name, the latest version of every model. Numbers are gap-free, so
        ``result[0].version - 1`` older versions exist."""
        if name is not None:
            validate_name(name)
            versions = list_versions(self.store, name, newest)
            if not versions and newest != 0:
                raise self._unknown(f"model {name!r} has no versions in {self.url}")
            return versions
        latest: dict[str, int] = {}
        for key in self.store.list("ledger/versions"):  # one listing for every model
            parsed = parse_segment_key(key)
            if parsed is not None and parsed[1] > latest.get(parsed[0], 0):
                latest[parsed[0]] = parsed[1]
        return [read_version(self.store, n, latest[n]) for n in sorted(latest)]

    def pull(self, ref: str | Ref, dest: str | os.PathLike[str] | None = None, *, force: bool = False,
             progress: Progress | None = None) -> PullResult:
        """Write a version to ``dest`` (default: ``./<file name>`` for a file version,
        ``./<model name>`` for a directory), verified before it appears there."""
        from casreg.content.pull import materialize

        resolved = self.resolve(ref)
        manifest = self.manifest(resolved)
        if dest is None:
            dest = manifest.entries[0].path if manifest.kind == "file" else (resolved.name or resolved.hexdigest[:12])
        stats = materialize(self.store, manifest, dest, force=force, progress=progress, threads=self.threads)
        return PullResult(resolved.name, resolved.version, resolved.digest, str(Path(dest).absolute()),
                          stats.size, stats.files, stats.fetched_bytes, stats.up_to_date,
                          stats.requests, stats.resumed_bytes, stats.cached_bytes)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Run SQL over the ledger views ``versions``, ``files``, ``events``, ``aliases``."""
        from casreg.ledger.sql import query as run

        return run(self.store, query)

    # -- aliases -----------------------------------------------------------------------------
    def _target(self, name: str, ref: str | int) -> Resolved:
        text = str(ref)
        if text.isdigit():
            text = f"{name}:{text}"
        r = parse_ref(text)
        if r.name is None:  # a bare digest must be a version of this model
            assert r.digest is not None
            r = Ref(name=name, digest=r.digest)
        resolved = self.resolve(r)
        if resolved.name != name:
            raise InvalidInputError(f"{text} is a version of {resolved.name}, not of {name}")
        return resolved

    def set_alias(self, name: str, alias: str, ref: str | int, *, reason: str | None = None,
                  annotations: Mapping[str, Any] | None = None) -> AliasEvent:
        """Point ``name@alias`` at a version of ``name`` (a number, a reference or a
        digest), by compare-and-swap; the move is recorded with its author and reason.
        The policy's permissions and the alias's gates apply (a stage moved this way
        keeps its previous version unarchived; :meth:`promote` archives it)."""
        from casreg.governance.lifecycle import promote

        validate_alias(alias)
        if alias == "archived":
            raise InvalidInputError("archived is a state of versions, not an alias: use casreg archive NAME REF")
        event = promote(self, name, ref, alias, reason=reason, annotations=annotations, kind="alias.set").event
        assert event is not None
        return event

    def remove_alias(self, name: str, alias: str, *, reason: str | None = None) -> AliasEvent:
        from casreg.governance.lifecycle import _policy

        validate_name(name)
        validate_alias(alias)
        if read_pointer(self.store, name, alias) is None:
            raise self._unknown(f"{name}@{alias} is not set")
        _policy(self, name).require_permission(current_author(), "promote", alias, what=f"removing {name}@{alias}")
        event = move_alias(self.store, name, alias, None, reason=reason)
        self._notify(event.to_dict())
        return event

    def aliases(self, name: str | None = None) -> list[AliasPointer]:
        if name is not None:
            validate_name(name)
        return list_pointers(self.store, name)

    # -- lifecycle: stages, approvals, history, policy (casreg/governance/lifecycle.py) --------------
    def promote(self, name: str, ref: str | int, stage: str, *, reason: str | None = None,
                keep_previous: bool = False, dry_run: bool = False,
                annotations: Mapping[str, Any] | None = None, if_current: str | int | None = None) -> Any:
        """Move ``name@stage`` to a version once the policy's gates pass; promoting to
        production archives the version it replaces unless ``keep_previous``. ``dry_run``
        evaluates the gates and changes nothing; ``if_current`` makes the move conditional
        on the stage still pointing at that version. Returns a
        :class:`casreg.governance.lifecycle.Promotion`."""
        from casreg.governance.lifecycle import promote

        return promote(self, name, ref, stage, reason=reason, keep_previous=keep_previous, dry_run=dry_run,
                       annotations=annotations, if_current=if_current)

    def archive(self, name: str, ref: str | int, *, reason: str | None = None) -> AliasEvent:
        from casreg.governance.lifecycle import archive

        return archive(self, name, ref, reason=reason)

    def rollback(self, name: str, alias: str, *, reason: str | None = None, keep_previous: bool = False) -> AliasEvent:
        """Move ``name@alias`` back to its previous target, as a new recorded event."""
        from casreg.governance.lifecycle import rollback

        return rollback(self, name, alias, reason=reason, keep_previous=keep_previous)

    def approve(self, name: str, ref: str | int, *, stage: str, comment: str | None = None) -> AliasEvent:
        from casreg.governance.lifecycle import decide

        return decide(self, name, ref, stage, approve=True, comment=comment)

    def reject(self, name: str, ref: str | int, *, stage: str, comment: str | None = None) -> AliasEvent:
        from casreg.governance.lifecycle import decide

        return decide(self, name, ref, stage, approve=False, comment=comment)

    def log(self, name: str, *, alias: str | None = None, kinds: Any = None, since: Any = None,
            until: Any = None) -> list[Any]:
        """Every push and event of ``name``, oldest first (:class:`casreg.governance.lifecycle.LogEntry`)."""
        from casreg.governance.lifecycle import history, parse_when

        def when(t: Any) -> Any:
            return parse_when(t) if isinstance(t, str) else t

        return history(self, name, alias=alias, kinds=kinds, since=when(since), until=when(until))

    def state(self, ref: str | Ref | Version) -> Any:
        """Lifecycle state of a version: archived or not, standing approvals and
        rejections per stage (:class:`casreg.governance.lifecycle.VersionState`). A :class:`Version`
        already read (by :meth:`show`) is used as is, not read again."""
        from casreg.governance.lifecycle import version_state

        v = ref if isinstance(ref, Version) else self.show(ref)
        return version_state(self, v.name, v.version)

    def resolve_at(self, ref: str, at: Any) -> Resolved:
        """What ``ref`` pointed at at time ``at`` (a datetime or ISO 8601 text)."""
        from casreg.governance.lifecycle import parse_when, resolve_at

        return resolve_at(self, ref, parse_when(at) if isinstance(at, str) else at)

    def set_policy(self, text: str, *, reason: str | None = None) -> int:
        """Store a new version of the registry's policy (TOML; docs/lifecycle.md) and
        return its number."""
        from casreg.governance.lifecycle import set_policy

        return set_policy(self, text, reason=reason)[0]

    def policy(self, version: int | None = None) -> Any:
        """The policy in force (or version ``version``) as a
        :class:`casreg.governance.policy.PolicyFile`, or ``None``."""
        from casreg.governance.policy import read_policy

        return read_policy(self.store, version)

    def diff(self, a: str | Ref, b: str | Ref) -> Any:
        """Compare two versions: metrics, params, tags, files and shared bytes
        (:class:`casreg.governance.diff.VersionDiff`)."""
        from casreg.governance.diff import diff_versions

        return diff_versions(self, a, b)

    def search(self, name: str, *, where: str | None = None, stage: str | None = None,
               alias: str | None = None, sort: str | None = None, descending: bool = False,
               limit: int | None = None) -> list[Version]:
        """Versions of ``name`` matching a filter (``metrics.auc > 0.9 AND tags.team =
        'fraud'``), a stage or an alias, optionally sorted by a field."""
        from casreg.governance.search import search

        return search(self, name, where=where, stage=stage, alias=alias, sort=sort, descending=descending,
                      limit=limit)

    def _notify(self, event: dict[str, Any]) -> None:
        """Run the registry's hooks for an event; never fails the event (casreg/governance/hooks.py)."""
        try:
            from casreg.governance.hooks import dispatch
        except ImportError:  # hooks not part of this build
            return
        dispatch(self.store, event)

    # -- maintenance: verify and gc (casreg/maintenance/verify.py, casreg/maintenance/gc.py, docs/gc.md) -----------
    def verify(self, ref: str | Ref | None = None, progress: Progress | None = None) -> Any:
        """Re-read and re-hash everything reachable from every version (or from ``ref``);
        returns a :class:`casreg.maintenance.verify.VerifyReport` naming every bad or missing object."""
        from casreg.maintenance.verify import verify_registry, verify_version

        if ref is None:
            return verify_registry(self.store, progress=progress, threads=self.threads)
        resolved = self.resolve(ref)
        label = f"{resolved.name}:{resolved.version}" if resolved.name else resolved.digest
        return verify_version(self.store, resolved.hexdigest, label=label, progress=progress, threads=self.threads)

    def gc(self, *, dry_run: bool = False, grace: Any = None, delay: Any = None) -> Any:
        """Reclaim objects no version references (two phases, safe against concurrent
        pushes: docs/gc.md); returns a :class:`casreg.maintenance.gc.GcReport`. ``grace`` (default
        24 h) and ``delay`` (default 1 h) take seconds, a ``timedelta`` or ``"24h"``."""
        from casreg.maintenance.gc import DEFAULT_DELAY, DEFAULT_GRACE, collect

        return collect(self.store, dry_run=dry_run, grace=DEFAULT_GRACE if grace is None else grace,
                       delay=DEFAULT_DELAY if delay is None else delay, threads=self.threads)

    def _check_before_commit(self, manifest: Manifest) -> None:
        from casreg.maintenance.gc import check_before_commit

        check_before_commit(self.store, manifest, threads=self.threads)

    # -- reading in place: casreg:// and lazy tensors (casreg/fs.py, casreg/content/lazy.py) --------
    def fs(self) -> Any:
        """A ``casreg://`` fsspec filesystem over this registry (:mod:`casreg.fs`)."""
        from casreg.fs import CasregFileSystem

        return CasregFileSystem(registry=self)

    def open_safetensors(self, ref: str, path: str = "", *, bf16: Any = "auto") -> Any:
        """Open a safetensors file of ``ref`` for lazy tensor reads
        (:func:`casreg.content.lazy.open_safetensors`): the header now, each tensor's bytes only
        when asked for."""
        from casreg.content.lazy import open_safetensors

        return open_safetensors(ref, path, registry=self, bf16=bf16)
