"""The typed records the public API returns, and the rules for the metadata a version
carries (metric, param and tag names and values)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from casreg.digest import Digest
from casreg.errors import InvalidInputError

__all__ = ["Lineage", "Version", "AliasPointer", "AliasEvent", "Event", "PullResult", "FileInfo", "JsonValue",
           "clean_labels", "clean_metrics", "utcnow"]

#: A value as JSON (and ``--json`` output) holds it: what SQL rows and ``to_dict`` give.
JsonValue: TypeAlias = "None | bool | int | float | str | Sequence[JsonValue] | Mapping[str, JsonValue]"
MAX_KEY = 128


def _check_keys(kind: str, mapping: Mapping[str, object] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in (mapping or {}).items():
        if not isinstance(k, str) or not k or any(c.isspace() for c in k) or len(k) > MAX_KEY:
            raise InvalidInputError(f"invalid {kind} name {k!r}: non-empty, no spaces, at most {MAX_KEY} characters")
        out[k] = v
    return out


def clean_metrics(mapping: Mapping[str, float | int | str] | None) -> dict[str, float]:
    """Metric names checked and values made finite floats (``"0.98"`` is read as a number);
    anything else is an :class:`InvalidInputError` naming the metric."""
    out = {}
    for k, v in _check_keys("metric", mapping).items():
        try:
            f = float(v)  # type: ignore[arg-type]  # anything float() refuses is reported below
        except (TypeError, ValueError):
            raise InvalidInputError(f"metric {k}={v!r} is not a number") from None
        if not math.isfinite(f):
            what = "NaN" if math.isnan(f) else "infinite"
            raise InvalidInputError(f"metric {k}={v!r} is {what}; metrics must be finite numbers")
        out[k] = f
    return out


def clean_labels(kind: str, mapping: Mapping[str, object] | None) -> dict[str, str]:
    """Param or tag (``kind``) names checked, values as text."""
    return {k: str(v) for k, v in _check_keys(kind, mapping).items()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Lineage:
    git_commit: str | None = None
    git_dirty: bool | None = None
    hostname: str | None = None
    python_version: str | None = None
    casreg_version: str | None = None
    parent: Digest | None = None  # digest of the parent version
    run_id: str | None = None
    dataset: str | None = None  # digest or URI of the training data


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable version of a model, as recorded in the ledger."""

    name: str
    version: int
    digest: Digest
    kind: str  # "file" or "dir"
    size: int  # logical bytes
    stored_bytes: int  # bytes this push added to the store
    new_bytes: int  # logical bytes of chunks the store lacked
    file_count: int
    chunk_count: int
    created_at: datetime
    author: str
    framework: str | None = None
    description: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def dedup_ratio(self) -> float:
        return 1.0 - self.new_bytes / self.size if self.size else 1.0

    def to_dict(self) -> dict[str, JsonValue]:
        d = asdict(self)
        d["created_at"] = _iso(self.created_at)
        return d

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> Version:
        """A record as :meth:`to_dict` (or a ledger row) gives it; ``ValueError``,
        ``KeyError`` or ``TypeError`` when it is not one."""
        d: dict[str, Any] = dict(record)
        d["created_at"] = parse_time(d["created_at"]) if isinstance(d["created_at"], str) else d["created_at"]
        d["digest"] = Digest(d["digest"])
        lineage = dict(d.get("lineage") or {})
        if lineage.get("parent") is not None:
            lineage["parent"] = Digest(lineage["parent"])
        d["lineage"] = Lineage(**lineage)
        for k in ("metrics", "params", "tags"):
            d[k] = dict(d.get(k) or {})
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True, slots=True)
class AliasEvent:
    """A move of ``name@alias``: appended to the ledger and mirrored in the pointer."""

    event_id: str
    time: datetime
    kind: str  # "alias.set", "alias.remove", "promote", ... (casreg/ledger/events.py)
    name: str
    alias: str | None  # None for events about a version, not an alias (archive, policy.set)
    from_digest: Digest | None
    to_digest: Digest | None
    from_version: int | None
    to_version: int | None
    author: str
    host: str
    reason: str | None
    #: What a kind needs beyond the common fields: an alias's annotations, the stage of
    #: an approval, the policy version of a policy change, a hook's failure. JSON object.
    details: Mapping[str, JsonValue] | None = None

    @property
    def annotations(self) -> dict[str, str]:
        """An alias's annotations (for example a canary's traffic weight)."""
        raw = (self.details or {}).get("annotations")
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}

    def to_dict(self) -> dict[str, JsonValue]:
        d = asdict(self)
        d["time"] = _iso(self.time)
        return d

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> AliasEvent:
        """An event as :meth:`to_dict` (or a ledger row) gives it; ``ValueError``,
        ``KeyError`` or ``TypeError`` when it is not one."""
        d: dict[str, Any] = dict(record)
        d["time"] = parse_time(d["time"]) if isinstance(d["time"], str) else d["time"]
        if isinstance(d.get("details"), str):
            d["details"] = json.loads(d["details"]) if d["details"] else None
        for k in ("from_digest", "to_digest"):
            if d.get(k) is not None:
                d[k] = Digest(d[k])
        fields: dict[str, Any] = {k: d.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


#: Every ledger event (pushes excepted, which are version records) is an AliasEvent row;
#: the name stays for compatibility, ``Event`` reads better where no alias is involved.
Event = AliasEvent


@dataclass(frozen=True, slots=True)
class AliasPointer:
    """Where ``name@alias`` points now, and the move that put it there."""

    name: str
    alias: str
    digest: Digest
    version: int
    event: AliasEvent

    @property
    def annotations(self) -> dict[str, str]:
        return self.event.annotations

    def to_dict(self) -> dict[str, JsonValue]:
        return {"name": self.name, "alias": self.alias, "digest": self.digest, "version": self.version,
                "updated_at": _iso(self.event.time), "author": self.event.author, "reason": self.event.reason,
                "annotations": self.annotations}


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    type: str  # "f", "x" or "d"
    size: int
    digest: Digest | None  # of the file's bytes; None for a directory


@dataclass(frozen=True, slots=True)
class PullResult:
    name: str | None
    version: int | None
    digest: Digest
    dest: str
    size: int
    files: int
    fetched_bytes: int
    up_to_date: bool
    requests: int = 0  # ranged reads made
    resumed_bytes: int = 0  # bytes kept from an interrupted earlier pull of this version
    cached_bytes: int = 0  # chunk bytes taken from the local chunk cache instead of the registry

    def to_dict(self) -> dict[str, JsonValue]:
        return asdict(self)
