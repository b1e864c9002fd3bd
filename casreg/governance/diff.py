"""``casreg diff A B``: what changed between two versions, in the terms a reviewer asks
about: metrics (with deltas), params and tags, files, how many bytes they share, and
(docs/lineage.md) dependencies and the schema: tensors and signature."""

from __future__ import annotations

from dataclasses import dataclass, field

from casreg.content.manifest import read_manifest
from casreg.ledger.resolve import resolve, version_record
from casreg.records import JsonValue, ModelSchema, Version
from casreg.refs import Ref
from casreg.storage import ObjectStore

__all__ = ["VersionDiff", "SchemaDiff", "diff_versions", "schema_diff"]


@dataclass(frozen=True, slots=True)
class SchemaDiff:
    """How the schema changed: tensors added, removed or changed (``dtype[shape]`` before
    and after), whether the signature changed, the two tensor digests, and whether either
    side's tensor list was cut short in its record (then the lists may miss changes that
    the digests show)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    signature_changed: bool = False
    digests: tuple[str | None, str | None] = (None, None)
    truncated: bool = False

    @property
    def unchanged(self) -> bool:
        return self.digests[0] == self.digests[1] and not self.signature_changed

    def to_dict(self) -> dict[str, JsonValue]:
        return {"unchanged": self.unchanged, "added": self.added, "removed": self.removed,
                "changed": {k: {"a": x, "b": y} for k, (x, y) in self.changed.items()},
                "signature_changed": self.signature_changed,
                "digests": {"a": self.digests[0], "b": self.digests[1]}, "truncated": self.truncated}


def _tensor_text(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def schema_diff(a: ModelSchema | None, b: ModelSchema | None, *, single_file: bool) -> SchemaDiff:
    """The :class:`SchemaDiff` from schema ``a`` to ``b`` (tensors keyed by name, with
    their file in a directory version)."""
    def table(s: ModelSchema | None) -> dict[str, str]:
        return {(t.name if single_file else f"{t.file}:{t.name}"): _tensor_text(t.dtype, t.shape)
                for t in (s.tensors if s else ())}

    ta, tb = table(a), table(b)
    return SchemaDiff(
        added=sorted(set(tb) - set(ta)), removed=sorted(set(ta) - set(tb)),
        changed={k: (ta[k], tb[k]) for k in sorted(set(ta) & set(tb)) if ta[k] != tb[k]},
        signature_changed=(a.signature if a else None) != (b.signature if b else None),
        digests=(a.digest if a else None, b.digest if b else None),
        truncated=bool((a and a.truncated) or (b and b.truncated)))


@dataclass(frozen=True, slots=True)
class VersionDiff:
    a: Version
    b: Version
    metrics: dict[str, tuple[float | None, float | None, float | None]]  # name -> (a, b, b - a)
    params: dict[str, tuple[str | None, str | None]]  # changed only
    tags: dict[str, tuple[str | None, str | None]]  # changed only
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: int
    shared_bytes: int  # logical bytes of b held in chunks a also has
    b_size: int
    #: distribution -> (version or specifier in a, in b), changed only (docs/lineage.md)
    dependencies: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    schema: SchemaDiff = field(default_factory=SchemaDiff)

    @property
    def shared_fraction(self) -> float:
        return self.shared_bytes / self.b_size if self.b_size else 1.0

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "a": {"name": self.a.name, "version": self.a.version, "digest": self.a.digest},
            "b": {"name": self.b.name, "version": self.b.version, "digest": self.b.digest},
            "metrics": {k: {"a": x, "b": y, "delta": d} for k, (x, y, d) in self.metrics.items()},
            "params": {k: {"a": x, "b": y} for k, (x, y) in self.params.items()},
            "tags": {k: {"a": x, "b": y} for k, (x, y) in self.tags.items()},
            "files": {"added": self.added, "removed": self.removed, "changed": self.changed,
                      "unchanged": self.unchanged},
            "shared_bytes": self.shared_bytes, "b_size": self.b_size,
            "shared_fraction": round(self.shared_fraction, 6),
            "dependencies": {k: {"a": x, "b": y} for k, (x, y) in self.dependencies.items()},
            "schema": self.schema.to_dict(),
        }


def _changed(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def diff_versions(store: ObjectStore, ref_a: str | Ref, ref_b: str | Ref) -> VersionDiff:
    """What changed from version ``ref_a`` to version ``ref_b`` (each resolved once)."""
    a, b = version_record(store, resolve(store, ref_a)), version_record(store, resolve(store, ref_b))
    ma, mb = read_manifest(store, a.digest), read_manifest(store, b.digest)
    metrics = {}
    for k in sorted(set(a.metrics) | set(b.metrics)):
        x, y = a.metrics.get(k), b.metrics.get(k)
        metrics[k] = (x, y, (y - x) if x is not None and y is not None else None)
    fa = {e.path: e for e in ma.entries}
    fb = {e.path: e for e in mb.entries}
    if ma.kind == mb.kind == "file":  # one file each: the same logical file, whatever its name
        [ea], [eb] = ma.entries, mb.entries
        label = ea.path if ea.path == eb.path else f"{ea.path} -> {eb.path}"
        fa, fb = {label: ea}, {label: eb}
    added = sorted(set(fb) - set(fa))
    removed = sorted(set(fa) - set(fb))
    changed = sorted(p for p in set(fa) & set(fb) if (fa[p].type, fa[p].digest) != (fb[p].type, fb[p].digest))
    unchanged = len(set(fa) & set(fb)) - len(changed)
    have = {c.digest for e in ma.entries for c in e.chunks}
    shared = sum(c.raw_size for e in mb.entries for c in e.chunks if c.digest in have)
    return VersionDiff(a, b, metrics, _changed(a.params, b.params), _changed(a.tags, b.tags),
                       added, removed, changed, unchanged, shared, mb.size,
                       dependencies=_changed(a.lineage.dependencies, b.lineage.dependencies),
                       schema=schema_diff(a.lineage.schema, b.lineage.schema, single_file=ma.kind == mb.kind == "file"))
