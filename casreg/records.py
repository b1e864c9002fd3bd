"""The typed records the public API returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["Lineage", "Version", "AliasPointer", "AliasEvent", "Event", "PullResult", "FileInfo", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Lineage:
    git_commit: str | None = None
    git_dirty: bool | None = None
    hostname: str | None = None
    python_version: str | None = None
    casreg_version: str | None = None
    parent: str | None = None  # digest of the parent version
    run_id: str | None = None
    dataset: str | None = None  # digest or URI of the training data


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable version of a model, as recorded in the ledger."""

    name: str
    version: int
    digest: str  # "blake3:<64 hex>"
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = _iso(self.created_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Version:
        d = dict(d)
        d["created_at"] = parse_time(d["created_at"]) if isinstance(d["created_at"], str) else d["created_at"]
        d["lineage"] = Lineage(**(d.get("lineage") or {}))
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
    from_digest: str | None
    to_digest: str | None
    from_version: int | None
    to_version: int | None
    author: str
    host: str
    reason: str | None
    #: What a kind needs beyond the common fields: an alias's annotations, the stage of
    #: an approval, the policy version of a policy change, a hook's failure. JSON object.
    details: dict[str, Any] | None = None

    @property
    def annotations(self) -> dict[str, str]:
        """An alias's annotations (for example a canary's traffic weight)."""
        return dict((self.details or {}).get("annotations") or {})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = _iso(self.time)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AliasEvent:
        d = dict(d)
        d["time"] = parse_time(d["time"]) if isinstance(d["time"], str) else d["time"]
        if isinstance(d.get("details"), str):
            d["details"] = json.loads(d["details"]) if d["details"] else None
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


#: Every ledger event (pushes excepted, which are version records) is an AliasEvent row;
#: the name stays for compatibility, ``Event`` reads better where no alias is involved.
Event = AliasEvent


@dataclass(frozen=True, slots=True)
class AliasPointer:
    """Where ``name@alias`` points now, and the move that put it there."""

    name: str
    alias: str
    digest: str
    version: int
    event: AliasEvent

    @property
    def annotations(self) -> dict[str, str]:
        return self.event.annotations

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "digest": self.digest, "version": self.version,
                "updated_at": _iso(self.event.time), "author": self.event.author, "reason": self.event.reason,
                "annotations": self.annotations}


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    type: str  # "f", "x" or "d"
    size: int
    digest: str | None


@dataclass(frozen=True, slots=True)
class PullResult:
    name: str | None
    version: int | None
    digest: str
    dest: str
    size: int
    files: int
    fetched_bytes: int
    up_to_date: bool
    requests: int = 0  # ranged reads made
    resumed_bytes: int = 0  # bytes kept from an interrupted earlier pull of this version
    cached_bytes: int = 0  # chunk bytes taken from the local chunk cache instead of the registry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
