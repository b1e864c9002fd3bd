"""Every key casreg writes in a store, in one place, each with its inverse.

A store is a flat namespace of ``/``-separated keys (:mod:`casreg.storage`). This module
is the whole layout of a registry (docs/FORMAT.md §1): a function that builds each kind
of key and one that parses it back, ``parse_x(x_key(...)) == (...)`` for every valid
input and ``None`` for any key that is not of that kind. Every module and ``gc`` name
keys through here; none spells a path itself.

=============================================  =====================================
``casreg.json``                                 :data:`CONFIG_KEY`
``packs/<aa>/<id>.pack``                        :func:`pack_key`
``index/<aa>/<id>.idx``                         :func:`index_key`
``bundles/<aa>/<id>.bundle``                    :func:`bundle_key`
``manifests/<aa>/<hex>.manifest``               :func:`manifest_key`
``ledger/versions/<name>/<N:010d>.parquet``     :func:`version_segment_key`
``refs/<name>/<N:010d>.json``                   :func:`version_copy_key`
``ledger/events/<name>/<time>-<id>.parquet``    :func:`event_segment_key`
``ledger/compacted/<kind>/<time>-<id>.parquet`` :func:`compacted_key`
``ledger/compacted/HEAD.json``                  :data:`HEAD_KEY`
``pointers/<name>/<alias>.json``                :func:`pointer_key`
``policy/versions/<N:06d>.toml``                :func:`policy_key`
``config/hooks.toml``                           :data:`HOOKS_KEY`
``gc/condemned/<time>-<id>.json``               :func:`condemned_key`
``gc/rescued/<record>/<id>.json``               :func:`rescue_key`
``gc/sweeping/<record>/<run>.json``             :func:`sweeping_key`
``tombstones/<name>/<N:010d>.json``             :func:`tombstone_key`
``signatures/<version>/<key>.sig.json``         :func:`signature_key`
``signatures/events/<event>/<key>.json``        :func:`event_signature_key`
=============================================  =====================================

Names in keys follow the grammar of :mod:`casreg.refs`; ``_registry``
(:data:`REGISTRY_EVENTS`) files the registry's own events and is no valid model name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple, Protocol

from casreg.digest import HEX64, Digest
from casreg.refs import ALIAS_PATTERN, NAME_PATTERN

__all__ = [
    "CONFIG_KEY", "HEAD_KEY", "HOOKS_KEY", "REGISTRY_EVENTS",
    "PACKS", "INDEXES", "MANIFESTS", "VERSIONS", "EVENTS", "COMPACTED", "REFS", "POINTERS", "POLICIES",
    "GC_CONDEMNED", "GC_RESCUED", "GC_SWEEPING",
    "ObjectKind", "EventKey",
    "pack_key", "parse_pack_key", "index_key", "parse_index_key", "manifest_key", "parse_manifest_key",
    "parse_object_key", "object_key", "BUNDLES", "bundle_key", "parse_bundle_key",
    "version_segment_key", "parse_version_segment_key", "version_copy_key", "parse_version_copy_key",
    "event_segment_key", "event_key", "parse_event_segment_key", "compacted_key", "parse_compacted_key",
    "pointer_key", "parse_pointer_key", "policy_key", "parse_policy_key",
    "condemned_key", "parse_condemned_key", "rescue_key", "parse_rescue_key", "sweeping_key",
    "parse_sweeping_key", "TOMBSTONES", "tombstone_key", "parse_tombstone_key",
    "parse_sweeping_key",
    "SIGNATURES", "signature_key", "parse_signature_key", "signatures_prefix",
    "EVENT_SIGNATURES", "event_signature_key", "parse_event_signature_key", "event_signatures_prefix",
]

# -- top-level names (also the prefixes that list each kind) --------------------------------------
CONFIG_KEY: Final = "casreg.json"
PACKS: Final = "packs"
INDEXES: Final = "index"
#: Many pack indexes in one object, so a push into a large registry reads one (docs/FORMAT.md §4.3).
BUNDLES: Final = "bundles"
MANIFESTS: Final = "manifests"
VERSIONS: Final = "ledger/versions"
EVENTS: Final = "ledger/events"
COMPACTED: Final = "ledger/compacted"
HEAD_KEY: Final = f"{COMPACTED}/HEAD.json"
REFS: Final = "refs"
POINTERS: Final = "pointers"
POLICIES: Final = "policy/versions"
HOOKS_KEY: Final = "config/hooks.toml"
GC_CONDEMNED: Final = "gc/condemned"
GC_RESCUED: Final = "gc/rescued"
GC_SWEEPING: Final = "gc/sweeping"
TOMBSTONES: Final = "tombstones"
SIGNATURES: Final = "signatures"
#: Signatures of governance events (docs/signing.md): never a version's hex, so never a version's prefix.
EVENT_SIGNATURES: Final = f"{SIGNATURES}/events"
#: The name registry-wide events are filed under (policy and hooks changes).
REGISTRY_EVENTS: Final = "_registry"

_VERSION_WIDTH = 10
_POLICY_WIDTH = 6
#: Event and gc-record times: UTC with microseconds, so keys sort in time order.
_FINE_STAMP = "%Y%m%dT%H%M%S%fZ"
_FINE = r"\d{8}T\d{12}Z"
#: Compacted files: UTC to the second.
_COARSE_STAMP = "%Y%m%dT%H%M%SZ"
_COARSE = r"\d{8}T\d{6}Z"
_ID32 = r"[0-9a-f]{32}"

class _Patterns:
    """The key patterns, compiled on first use: resolving a reference needs none of them,
    and ``casreg resolve`` should not pay for compiling them."""

    def __init__(self) -> None:
        self._sources: dict[str, str] = {}

    def define(self, name: str, source: str) -> None:
        self._sources[name] = source

    def __getattr__(self, name: str) -> re.Pattern[str]:
        pattern = re.compile(self._sources[name])
        setattr(self, name, pattern)
        return pattern


_RE = _Patterns()

ObjectKind = Literal["packs", "index", "manifests"]
_SUFFIX: dict[str, str] = {PACKS: "pack", INDEXES: "idx", MANIFESTS: "manifest"}


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def _stamp(t: datetime, fmt: str) -> str:
    return _utc(t).strftime(fmt)


def _time(stamp: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


# -- content objects: named by digest --------------------------------------------------------------
_RE.define('object', r"(packs|index|manifests)/([0-9a-f]{2})/([0-9a-f]{64})\.(pack|idx|manifest)")


def _hex(digest: str) -> str:
    hexd = digest.hex if isinstance(digest, Digest) else digest
    if HEX64.fullmatch(hexd) is None:
        raise ValueError(f"not 64 lowercase hex digits: {hexd[:80]!r}")
    return hexd


def object_key(kind: ObjectKind, hexdigest: str) -> str:
    """``<kind>/<aa>/<hex>.<suffix>``: a content object named by its digest."""
    h = _hex(hexdigest)
    return f"{kind}/{h[:2]}/{h}.{_SUFFIX[kind]}"


def parse_object_key(key: str) -> tuple[ObjectKind, str] | None:
    """``(kind, hex)`` for a pack, index or manifest key, else ``None``."""
    m = _RE.object.fullmatch(key)
    if m is None or m[2] != m[3][:2] or _SUFFIX[m[1]] != m[4]:
        return None
    return m[1], m[3]  # type: ignore[return-value]  # the regex admits exactly the three kinds


def pack_key(pack_id: str) -> str:
    """A pack, named by the BLAKE3 of its index (docs/FORMAT.md §4)."""
    return object_key(PACKS, pack_id)


def index_key(pack_id: str) -> str:
    """A pack's index object (the same bytes as the pack's trailer)."""
    return object_key(INDEXES, pack_id)


def manifest_key(digest: str) -> str:
    """The manifest of the version with this digest (a :class:`Digest` or its hex)."""
    return object_key(MANIFESTS, digest)


def _parse_kind(key: str, kind: ObjectKind) -> str | None:
    parsed = parse_object_key(key)
    return parsed[1] if parsed is not None and parsed[0] == kind else None


def parse_pack_key(key: str) -> str | None:
    return _parse_kind(key, PACKS)


def parse_index_key(key: str) -> str | None:
    return _parse_kind(key, INDEXES)


def parse_manifest_key(key: str) -> str | None:
    return _parse_kind(key, MANIFESTS)


_RE.define('bundle', r"bundles/([0-9a-f]{2})/([0-9a-f]{64})\.bundle")


def bundle_key(bundle_id: str) -> str:
    """An index bundle, named by the BLAKE3 of its directory and tail (docs/FORMAT.md §4.3).
    Not a content object: nothing references it, and gc leaves it to ``casreg compact``."""
    h = _hex(bundle_id)
    return f"{BUNDLES}/{h[:2]}/{h}.bundle"


def parse_bundle_key(key: str) -> str | None:
    m = _RE.bundle.fullmatch(key)
    return m[2] if m is not None and m[1] == m[2][:2] else None


# -- the ledger --------------------------------------------------------------------------------------
_EVENT_NAME = rf"(?:{NAME_PATTERN}|{REGISTRY_EVENTS})"
_RE.define('segment', rf"ledger/versions/({NAME_PATTERN})/(\d{{{_VERSION_WIDTH}}})\.parquet")
_RE.define('copy', rf"refs/({NAME_PATTERN})/(\d{{{_VERSION_WIDTH}}})\.json")
_RE.define('event', rf"ledger/events/({_EVENT_NAME})/({_FINE})-({_ID32})\.parquet")
_RE.define('compacted', rf"ledger/compacted/(versions|events)/({_COARSE})-({_ID32})\.parquet")


def _number(number: int, width: int) -> str:
    if type(number) is not int or not 1 <= number < 10 ** width:
        raise ValueError(f"version number {number!r} out of range")
    return f"{number:0{width}d}"


def version_segment_key(name: str, number: int) -> str:
    """The ledger segment that commits version ``number`` of ``name`` (its record)."""
    return f"{VERSIONS}/{name}/{_number(number, _VERSION_WIDTH)}.parquet"


def parse_version_segment_key(key: str) -> tuple[str, int] | None:
    m = _RE.segment.fullmatch(key)
    return (m[1], int(m[2])) if m is not None and int(m[2]) > 0 else None


def version_copy_key(name: str, number: int) -> str:
    """The JSON copy of a version record that resolving reads (a cache of the segment)."""
    return f"{REFS}/{name}/{_number(number, _VERSION_WIDTH)}.json"


def parse_version_copy_key(key: str) -> tuple[str, int] | None:
    m = _RE.copy.fullmatch(key)
    return (m[1], int(m[2])) if m is not None and int(m[2]) > 0 else None


class EventKey(NamedTuple):
    """What an event segment's key says: whose event, its time stamp, its id."""

    name: str
    stamp: str  # UTC, ``YYYYmmddTHHMMSSffffffZ``
    event_id: str

    @property
    def time(self) -> datetime | None:
        return _time(self.stamp, _FINE_STAMP)


def event_segment_key(name: str, time: datetime, event_id: str) -> str:
    """One event's ledger segment; keys of a model sort in time order."""
    if re.fullmatch(_ID32, event_id) is None:
        raise ValueError(f"event id {event_id!r} is not 32 hex digits")
    return f"{EVENTS}/{name}/{_stamp(time, _FINE_STAMP)}-{event_id}.parquet"


class _Event(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def event_id(self) -> str: ...


def event_key(event: _Event) -> str:
    """The segment key of an event record (:class:`casreg.records.AliasEvent`)."""
    return event_segment_key(event.name, event.time, event.event_id)


def parse_event_segment_key(key: str) -> EventKey | None:
    m = _RE.event.fullmatch(key)
    return EventKey(m[1], m[2], m[3]) if m is not None else None


def compacted_key(kind: Literal["versions", "events"], time: datetime, file_id: str) -> str:
    """A compacted ledger file (docs/FORMAT.md §6.1); its name starts with its creation time."""
    if re.fullmatch(_ID32, file_id) is None:
        raise ValueError(f"file id {file_id!r} is not 32 hex digits")
    return f"{COMPACTED}/{kind}/{_stamp(time, _COARSE_STAMP)}-{file_id}.parquet"


def parse_compacted_key(key: str) -> tuple[str, datetime, str] | None:
    """``(kind, creation time, file id)`` of a compacted file's key."""
    m = _RE.compacted.fullmatch(key)
    if m is None:
        return None
    t = _time(m[2], _COARSE_STAMP)
    return (m[1], t, m[3]) if t is not None else None


# -- pointers, policy, hooks --------------------------------------------------------------------------
_RE.define('pointer', rf"pointers/({NAME_PATTERN})/({ALIAS_PATTERN})\.json")
_RE.define('policy', rf"policy/versions/(\d{{{_POLICY_WIDTH}}})\.toml")


def pointer_key(name: str, alias: str) -> str:
    """``name@alias``: the one mutable object per alias (compare-and-swap only)."""
    return f"{POINTERS}/{name}/{alias}.json"


def parse_pointer_key(key: str) -> tuple[str, str] | None:
    m = _RE.pointer.fullmatch(key)
    return (m[1], m[2]) if m is not None else None


def policy_key(number: int) -> str:
    """Policy version ``number``; the highest one is in force."""
    return f"{POLICIES}/{_number(number, _POLICY_WIDTH)}.toml"


def parse_policy_key(key: str) -> int | None:
    m = _RE.policy.fullmatch(key)
    return int(m[1]) if m is not None and int(m[1]) > 0 else None


# -- gc's protocol records (docs/gc.md) -----------------------------------------------------------------
_RE.define('condemned', rf"gc/condemned/(({_FINE})-({_ID32}))\.json")
_RECORD_ID = rf"{_FINE}-{_ID32}"
_RE.define('rescue', rf"gc/rescued/({_RECORD_ID})/({_ID32})\.json")
_RE.define('sweeping', rf"gc/sweeping/({_RECORD_ID})/({_ID32})\.json")


def condemned_key(time: datetime, uid: str) -> str:
    """A condemnation record; its id is the key's stem, ``<time>-<uid>``."""
    if re.fullmatch(_ID32, uid) is None:
        raise ValueError(f"record id {uid!r} is not 32 hex digits")
    return f"{GC_CONDEMNED}/{_stamp(time, _FINE_STAMP)}-{uid}.json"


def parse_condemned_key(key: str) -> tuple[str, datetime] | None:
    """``(record id, creation time)`` of a condemnation record's key."""
    m = _RE.condemned.fullmatch(key)
    if m is None:
        return None
    t = _time(m[2], _FINE_STAMP)
    return (m[1], t) if t is not None else None


def rescue_key(record_id: str, uid: str) -> str:
    """A push's rescue of objects condemned by record ``record_id``."""
    if re.fullmatch(_RECORD_ID, record_id) is None or re.fullmatch(_ID32, uid) is None:
        raise ValueError(f"bad rescue key parts {record_id!r}, {uid!r}")
    return f"{GC_RESCUED}/{record_id}/{uid}.json"


def parse_rescue_key(key: str) -> tuple[str, str] | None:
    m = _RE.rescue.fullmatch(key)
    return (m[1], m[2]) if m is not None else None


def sweeping_key(record_id: str, run_id: str) -> str:
    """A gc run's announcement that it sweeps record ``record_id``."""
    if re.fullmatch(_RECORD_ID, record_id) is None or re.fullmatch(_ID32, run_id) is None:
        raise ValueError(f"bad sweep key parts {record_id!r}, {run_id!r}")
    return f"{GC_SWEEPING}/{record_id}/{run_id}.json"


def parse_sweeping_key(key: str) -> tuple[str, str] | None:
    m = _RE.sweeping.fullmatch(key)
    return (m[1], m[2]) if m is not None else None


# -- deletions (docs/retention.md) ----------------------------------------------------------------------
_RE.define('tombstone', rf"tombstones/({NAME_PATTERN})/(\d{{{_VERSION_WIDTH}}})\.json")


def tombstone_key(name: str, number: int) -> str:
    """The tombstone of version ``number`` of ``name``: written once, by create-if-absent,
    when the version is deleted (it holds the ``delete`` event); never changed or removed."""
    return f"{TOMBSTONES}/{name}/{_number(number, _VERSION_WIDTH)}.json"


def parse_tombstone_key(key: str) -> tuple[str, int] | None:
    m = _RE.tombstone.fullmatch(key)
    return (m[1], int(m[2])) if m is not None and int(m[2]) > 0 else None
# -- signatures of versions (docs/signing.md) -------------------------------------------------------------
_RE.define('signature', r"signatures/([0-9a-f]{64})/([0-9a-f]{64})\.sig\.json")


def signatures_prefix(version: str) -> str:
    """``signatures/<hex>/``: the prefix that lists every signature of the version with
    this digest (a :class:`Digest` or its hex)."""
    return f"{SIGNATURES}/{_hex(version)}/"


def signature_key(version: str, fingerprint: str) -> str:
    """The signature of version ``version`` (its digest or hex) by the key whose
    fingerprint (SHA-256 hex of its public key PEM) is ``fingerprint``; create-if-absent."""
    return f"{signatures_prefix(version)}{_hex(fingerprint)}.sig.json"


def parse_signature_key(key: str) -> tuple[str, str] | None:
    """``(version hex, key fingerprint)`` of a signature object's key, else ``None``."""
    m = _RE.signature.fullmatch(key)
    return (m[1], m[2]) if m is not None else None


# -- signatures of governance events (docs/signing.md) ------------------------------------------------------
_RE.define('event_signature', rf"signatures/events/({_ID32})/([0-9a-f]{{64}})\.json")


def event_signatures_prefix(event_id: str) -> str:
    """``signatures/events/<event id>/``: the prefix listing every signature of one event."""
    if re.fullmatch(_ID32, event_id) is None:
        raise ValueError(f"invalid event id {event_id[:40]!r}: expected 32 lowercase hex digits")
    return f"{EVENT_SIGNATURES}/{event_id}/"


def event_signature_key(event_id: str, fingerprint: str) -> str:
    """The signature of ledger event ``event_id`` by the key whose fingerprint (SHA-256
    hex of its public key PEM) is ``fingerprint``: written create-if-absent, never changed."""
    if re.fullmatch(HEX64, fingerprint) is None:
        raise ValueError(f"invalid key fingerprint {fingerprint[:80]!r}: expected 64 lowercase hex digits")
    return f"{event_signatures_prefix(event_id)}{fingerprint}.json"


def parse_event_signature_key(key: str) -> tuple[str, str] | None:
    """``(event id, key fingerprint)`` of an event signature object's key, else ``None``."""
    m = _RE.event_signature.fullmatch(key)
    return (m.group(1), m.group(2)) if m else None
