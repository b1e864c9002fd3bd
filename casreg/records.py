"""The typed records the public API returns, and the rules for the metadata a version
carries (metric, param and tag names and values)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from casreg.digest import Digest
from casreg.errors import InvalidInputError

__all__ = ["Lineage", "Hardware", "CodeInfo", "TensorSpec", "ModelSchema", "lineage_extras", "lineage_field",
           "Version",
           "AliasPointer", "AliasEvent", "Event", "PullResult", "FileInfo", "JsonValue",
           "clean_labels", "clean_metrics", "check_record_size", "utcnow", "iso_utc", "parse_time", "sum_time_units",
           "MAX_TEXT", "MAX_RECORD_BYTES"]

#: A value as JSON (and ``--json`` output) holds it: what SQL rows and ``to_dict`` give.
JsonValue: TypeAlias = "None | bool | int | float | str | Sequence[JsonValue] | Mapping[str, JsonValue]"
MAX_KEY = 128
#: The longest text a record field holds (a description, a param or tag value, a run id).
MAX_TEXT = 1 << 16
#: The largest record, as JSON (UTF-8): readers refuse larger ones as damaged.
MAX_RECORD_BYTES = 1 << 20


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


def iso_utc(t: datetime) -> str:
    """``t`` in UTC as ISO 8601 with a ``Z`` suffix, the form every record and message uses."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def sum_time_units(text: str, token: re.Pattern[str], units: Mapping[str | None, float]) -> float | None:
    """The seconds that ``text`` (stripped, lower case: ``2d12h``, ``1h 30m``) spells as
    a run of ``token`` matches, each a number (group 1) and a unit (group 2, a key of
    ``units``), spaces allowed between them; ``None`` if it is anything else. The shared
    scanner of gc's durations and retention's ages, whose grammars (``token``) and
    bounds differ."""
    pos, seconds = 0, 0.0
    while pos < len(text):
        m = token.match(text, pos)
        if m is None or m.end() == pos:
            return None
        seconds += float(m[1]) * units[m[2]]
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return seconds


def check_record_size(v: Version) -> None:
    """:class:`InvalidInputError` naming the field if ``v`` has a text longer than
    :data:`MAX_TEXT` characters or is larger than :data:`MAX_RECORD_BYTES` as JSON: the
    limits readers hold records to (:meth:`Version.from_dict`), checked before a push
    stores anything."""
    texts = {"description": v.description, "framework": v.framework, "author": v.author,
             **{f"lineage.{k}": t for k, t in asdict(v.lineage).items() if isinstance(t, str)},
             **{f"param {k}": t for k, t in v.params.items()}, **{f"tag {k}": t for k, t in v.tags.items()}}
    for what, text in texts.items():
        if text is not None and len(text) > MAX_TEXT:
            raise InvalidInputError(f"{what} is {len(text):,} characters long; at most {MAX_TEXT:,} are allowed")
    size = len(json.dumps(v.to_dict(), ensure_ascii=False).encode())
    if size > MAX_RECORD_BYTES:
        raise InvalidInputError(f"the version's metadata takes {size:,} bytes as JSON; at most {MAX_RECORD_BYTES:,} "
                                "are allowed (fewer or shorter metrics, params and tags)")


# -- checking records read from a store (hostile: every field is checked) -------------------------------
_MAX_TEXT = MAX_TEXT


def _time(value: object, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and len(value) < 64:
        return parse_time(value)
    raise ValueError(f"{what} is not a time")


def _text(value: object, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"{what} is not a string")
    return value


def _number(value: object, what: str, *, optional: bool = False, least: int = 0) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or value < least:
        raise ValueError(f"{what} is not an integer >= {least}")
    return value


def _digest(value: object, what: str, *, optional: bool = False) -> Digest | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a digest")
    return Digest(value)


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} is not an object")
    return value


@dataclass(frozen=True, slots=True)
class Hardware:
    """What the model was trained on (docs/lineage.md): detected on the pushing machine
    (``source="detected"``) or given (``source="given"``, ``text`` as given, e.g. ``8x H100``)."""

    gpu_count: int | None = None
    gpu_type: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    memory_bytes: int | None = None
    cuda_visible_devices: str | None = None
    source: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """The training code's git state. ``source``: ``code`` (``--code DIR``), ``given``
    (``--git-commit`` alone) or ``model-path`` (the repository holding the pushed path:
    the fallback). ``remote`` never carries credentials (stripped at push)."""

    commit: str | None = None
    branch: str | None = None
    dirty: bool | None = None
    remote: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a safetensors file of the version, from its header."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """The version's schema: its safetensors tensors (``digest``: BLAKE3 of all of them,
    canonically; ``tensors`` may be cut short, then ``truncated``) and an explicit
    input/output ``signature`` (JSON text: ``{"inputs": ..., "outputs": ...}``)."""

    digest: str | None = None
    tensor_count: int | None = None
    truncated: bool | None = None
    tensors: tuple[TensorSpec, ...] = ()
    signature: str | None = None


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
    # since issue 16 (records without them read as None / empty)
    hardware: Hardware | None = None
    code: CodeInfo | None = None
    dependencies: dict[str, str] = field(default_factory=dict)  # distribution -> version or specifier
    dependencies_source: str | None = None  # "environment" or "requirements:<file name>"
    schema: ModelSchema | None = None
    links: dict[str, str] = field(default_factory=dict)  # label -> http(s) URL


def _opt_bool(value: object, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{what} is not a boolean")
    return value


def _str_map(value: object, what: str) -> dict[str, str]:
    if isinstance(value, list):  # an Arrow map<string, string> as to_pylist gives it: (key, item) pairs
        pairs = dict(value)
        if all(type(k) is str for k in pairs) and all(type(v) is str for v in pairs.values()) \
                and max(map(len, pairs.values()), default=0) <= _MAX_TEXT:
            return pairs  # the common case, checked in bulk
        value = pairs
    return {k: str(_text(v, f"{what}.{k[:40]}")) for k, v in _mapping(value, what).items()}


def _json_object(text: str, what: str) -> object:
    """A JSON object stored as text (a Parquet row's ``lineage.hardware``, ...)."""
    if len(text) > MAX_RECORD_BYTES:
        raise ValueError(f"{what} is too long")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None


def _hardware(value: object) -> Hardware | None:
    if value is None:
        return None
    h = _mapping(value, "lineage.hardware")
    return Hardware(
        gpu_count=_number(h.get("gpu_count"), "lineage.hardware.gpu_count", optional=True),
        gpu_type=_text(h.get("gpu_type"), "lineage.hardware.gpu_type", optional=True),
        cpu_model=_text(h.get("cpu_model"), "lineage.hardware.cpu_model", optional=True),
        cpu_count=_number(h.get("cpu_count"), "lineage.hardware.cpu_count", optional=True),
        memory_bytes=_number(h.get("memory_bytes"), "lineage.hardware.memory_bytes", optional=True),
        cuda_visible_devices=_text(h.get("cuda_visible_devices"), "lineage.hardware.cuda_visible_devices",
                                   optional=True),
        source=_text(h.get("source"), "lineage.hardware.source", optional=True),
        text=_text(h.get("text"), "lineage.hardware.text", optional=True))


def _code(value: object) -> CodeInfo | None:
    if value is None:
        return None
    c = _mapping(value, "lineage.code")
    return CodeInfo(
        commit=_text(c.get("commit"), "lineage.code.commit", optional=True),
        branch=_text(c.get("branch"), "lineage.code.branch", optional=True),
        dirty=_opt_bool(c.get("dirty"), "lineage.code.dirty"),
        remote=_text(c.get("remote"), "lineage.code.remote", optional=True),
        source=_text(c.get("source"), "lineage.code.source", optional=True))


def _schema(value: object) -> ModelSchema | None:
    if value is None:
        return None
    s = _mapping(value, "lineage.schema")
    tensors = []
    raw = s.get("tensors") or []
    if not isinstance(raw, (list, tuple)):
        raise ValueError("lineage.schema.tensors is not a list")
    for t in raw:
        tm = _mapping(t, "lineage.schema.tensors[]")
        shape = tm.get("shape") or []
        if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError("lineage.schema.tensors[].shape is not a list of sizes")
        tensors.append(TensorSpec(str(_text(tm.get("file"), "lineage.schema.tensors[].file")),
                                  str(_text(tm.get("name"), "lineage.schema.tensors[].name")),
                                  str(_text(tm.get("dtype"), "lineage.schema.tensors[].dtype")), tuple(shape)))
    return ModelSchema(
        digest=_text(s.get("digest"), "lineage.schema.digest", optional=True),
        tensor_count=_number(s.get("tensor_count"), "lineage.schema.tensor_count", optional=True),
        truncated=_opt_bool(s.get("truncated"), "lineage.schema.truncated"), tensors=tuple(tensors),
        signature=_text(s.get("signature"), "lineage.schema.signature", optional=True))


_LINEAGE_FIELDS: dict[str, Callable[[object], object]] = {
    "hardware": _hardware,
    "code": _code,
    "dependencies": lambda v: _str_map(v, "lineage.dependencies"),
    "dependencies_source": lambda v: _text(v, "lineage.dependencies_source", optional=True),
    "schema": _schema,
    "links": lambda v: _str_map(v, "lineage.links"),
}


def lineage_field(name: str, value: object) -> object:
    """One field of :class:`Lineage` added in issue 16 (``hardware``, ``code``,
    ``dependencies``, ``dependencies_source``, ``schema``, ``links``) from its stored form:
    an object (a record), JSON text of one (``hardware``, ``code``, ``schema`` in a Parquet
    row), a mapping or (key, item) pairs (the maps); checked, ``ValueError`` naming the
    field if it is not one; None or empty when absent."""
    if isinstance(value, str) and name in ("hardware", "code", "schema"):
        value = _json_object(value, f"lineage.{name}")
    return _LINEAGE_FIELDS[name](value)


def lineage_extras(lin: Mapping[str, object]) -> dict[str, object]:
    """Every field :func:`lineage_field` reads, from a record's ``lineage``."""
    return {name: lineage_field(name, lin.get(name)) for name in _LINEAGE_FIELDS}


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
        d["created_at"] = iso_utc(self.created_at)
        return d

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> Version:
        """A record as :meth:`to_dict` (or a ledger row) gives it, every field checked
        (types, ranges, a valid name, a well-formed digest); ``ValueError`` naming the
        field when it is not one. Unknown fields are ignored (newer writers)."""
        from casreg.refs import validate_name

        d = _mapping(record, "the record")
        lin = _mapping(d.get("lineage"), "lineage")
        dirty = lin.get("git_dirty")
        if dirty is not None and not isinstance(dirty, bool):
            raise ValueError("lineage.git_dirty is not a boolean")
        lineage = Lineage(
            git_commit=_text(lin.get("git_commit"), "lineage.git_commit", optional=True), git_dirty=dirty,
            hostname=_text(lin.get("hostname"), "lineage.hostname", optional=True),
            python_version=_text(lin.get("python_version"), "lineage.python_version", optional=True),
            casreg_version=_text(lin.get("casreg_version"), "lineage.casreg_version", optional=True),
            parent=_digest(lin.get("parent"), "lineage.parent", optional=True),
            run_id=_text(lin.get("run_id"), "lineage.run_id", optional=True),
            dataset=_text(lin.get("dataset"), "lineage.dataset", optional=True), **lineage_extras(lin))  # type: ignore[arg-type]  # checked there
        metrics: dict[str, float] = {}
        for k, v in _mapping(d.get("metrics"), "metrics").items():
            if type(v) not in (int, float):
                raise ValueError(f"metric {k[:40]!r} is not a number")
            metrics[k] = float(v)  # type: ignore[arg-type]  # an int or a float, just checked
        labels = {}
        for field_name in ("params", "tags"):
            labels[field_name] = {k: str(_text(v, f"{field_name}.{k[:40]}"))
                                  for k, v in _mapping(d.get(field_name), field_name).items()}
        kind = d.get("kind")
        if kind not in ("file", "dir"):
            raise ValueError("kind is not 'file' or 'dir'")
        name = _text(d.get("name"), "name")
        assert name is not None
        return cls(
            name=validate_name(name), version=int(_number(d.get("version"), "version", least=1) or 0),
            digest=Digest(str(_text(d.get("digest"), "digest"))), kind=str(kind),
            size=int(_number(d.get("size"), "size") or 0),
            stored_bytes=int(_number(d.get("stored_bytes"), "stored_bytes") or 0),
            new_bytes=int(_number(d.get("new_bytes"), "new_bytes") or 0),
            file_count=int(_number(d.get("file_count"), "file_count") or 0),
            chunk_count=int(_number(d.get("chunk_count"), "chunk_count") or 0),
            created_at=_time(d.get("created_at"), "created_at"), author=str(_text(d.get("author"), "author")),
            framework=_text(d.get("framework"), "framework", optional=True),
            description=_text(d.get("description"), "description", optional=True),
            metrics=metrics, params=labels["params"], tags=labels["tags"], lineage=lineage)


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
        d["time"] = iso_utc(self.time)
        return d

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> AliasEvent:
        """An event as :meth:`to_dict` (or a ledger row) gives it, every field checked (a
        32-hex id, a valid model name or ``_registry``, a valid alias, well-formed digests,
        version numbers >= 1, ``details`` a JSON object); ``ValueError`` naming the field
        when it is not one."""
        from casreg.refs import validate_alias, validate_name

        d = _mapping(record, "the event")
        event_id = _text(d.get("event_id"), "event_id")
        if event_id is None or len(event_id) != 32 or any(c not in "0123456789abcdef" for c in event_id):
            raise ValueError("event_id is not 32 lowercase hex digits")
        name = str(_text(d.get("name"), "name"))
        if name != "_registry":
            validate_name(name)
        alias = _text(d.get("alias"), "alias", optional=True)
        if alias is not None:
            validate_alias(alias)
        kind = str(_text(d.get("kind"), "kind"))
        if not kind or len(kind) > 64:
            raise ValueError("kind is empty or too long")
        details = d.get("details")
        if isinstance(details, str):
            details = json.loads(details) if details else None
        if details is not None and not isinstance(details, Mapping):
            raise ValueError("details is not a JSON object")
        return cls(
            event_id=event_id, time=_time(d.get("time"), "time"), kind=kind, name=name, alias=alias,
            from_digest=_digest(d.get("from_digest"), "from_digest", optional=True),
            to_digest=_digest(d.get("to_digest"), "to_digest", optional=True),
            from_version=_number(d.get("from_version"), "from_version", optional=True, least=1),
            to_version=_number(d.get("to_version"), "to_version", optional=True, least=1),
            author=str(_text(d.get("author"), "author")), host=str(_text(d.get("host"), "host")),
            reason=_text(d.get("reason"), "reason", optional=True),
            details=dict(details) if details is not None else None)


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
                "updated_at": iso_utc(self.event.time), "author": self.event.author, "reason": self.event.reason,
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
    #: files in the whole version when only part of it was pulled (``include``, ``REF/PATH``); else None
    version_files: int | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        return asdict(self)
