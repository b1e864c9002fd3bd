"""What ``verify`` found: :class:`Problem` (one bad or missing object) and
:class:`VerifyReport` (what was checked, the problems, warnings and notes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from casreg.digest import Digest
from casreg.records import JsonValue

if TYPE_CHECKING:
    pass

__all__ = ["Problem", "VerifyReport", "MAX_AFFECTED", "bare_reason"]

MAX_AFFECTED = 20  # version refs listed per problem


@dataclass(slots=True)
class Problem:
    """One bad or missing object."""

    key: str  # the object's key (or a ledger/pointer key)
    kind: str  # "missing" or "corrupt"
    reason: str  # one line
    versions: list[str] = field(default_factory=list)  # versions that rely on it, when known

    def affect(self, ref: str) -> None:
        if ref not in self.versions and len(self.versions) < MAX_AFFECTED:
            self.versions.append(ref)

    def line(self) -> str:
        affects = f" (needed by {', '.join(self.versions)}{', ...' if len(self.versions) >= MAX_AFFECTED else ''})" \
            if self.versions else ""
        return f"{self.kind} {self.key}: {self.reason}{affects}"

    def to_dict(self) -> dict[str, JsonValue]:
        return {"key": self.key, "kind": self.kind, "reason": self.reason, "versions": list(self.versions)}


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` checked and found. ``ok`` means no problem (warnings allowed)."""

    url: str
    ref: str | None = None  # None: the whole registry
    digest: Digest | None = None  # the version verified, for ``verify(ref)``
    versions: int = 0
    manifests: int = 0
    packs: int = 0
    indexes: int = 0
    chunks: int = 0
    bytes_read: int = 0
    deleted_versions: int = 0  # versions deleted (tombstoned): their objects are not checked
    unreferenced_manifests: int = 0  # leftovers of interrupted pushes: not problems
    unreferenced_packs: int = 0
    records: int = 0  # version records compared with their manifests
    read_data: bool = False  # whether file digests were checked (``--read-data``)
    files_hashed: int = 0  # distinct files (digest and chunk layout) read and hashed whole
    bytes_hashed: int = 0
    files_reused: int = 0  # files whose digest and layout were already checked in this run
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What was not checked, and why, when nothing is wrong with that (signing not
    #: configured, no trust root pinned): said once, neither a problem nor a warning.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "url": self.url, "ref": self.ref, "digest": self.digest, "ok": self.ok,
            "versions": self.versions, "deleted_versions": self.deleted_versions,
            "manifests": self.manifests, "packs": self.packs,
            "indexes": self.indexes, "chunks": self.chunks, "bytes_read": self.bytes_read,
            "unreferenced_manifests": self.unreferenced_manifests, "unreferenced_packs": self.unreferenced_packs,
            "records": self.records, "read_data": self.read_data, "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed, "files_reused": self.files_reused,
            "problem_count": len(self.problems), "problems": [p.to_dict() for p in self.problems],
            "warnings": list(self.warnings), "notes": list(self.notes),
        }


def bare_reason(message: str, key: str) -> str:
    """``"manifest K is corrupt: why"`` → ``"why"`` (the key is printed once, in front)."""
    for prefix in (f"manifest {key} is corrupt: ", f"manifest {key} is hostile: ", f"index {key} is "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message
