"""``casreg.json``: the registry's format and the content parameters every push uses.

Written once, by the first push, with create-if-absent (docs/FORMAT.md §2): the
chunking parameters are fixed for the registry's life, since changing them would stop
new pushes from deduplicating against old data; ``zstd_level`` is only a default.

The format says how versions are written: ``casreg/4`` (every new registry) writes
manifests of tree format 2, whose version digests commit to each file's chunk layout,
may store chunks of floating-point tensors with the ``PLANES`` codec and chunks of a
version with a parent as deltas against it (codec 3, bases listed in the manifest);
``casreg/3`` registries write the same but never deltas; a ``casreg/2``
registry writes the same manifests but only the ``RAW`` and ``ZSTD`` codecs, and a
``casreg/1`` registry keeps writing format 1, so that older casreg readers can read
everything in them (format-1 versions have the weaker guarantee docs/FORMAT.md §5 states).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from casreg.content.codec import DEFAULT_ZSTD_LEVEL
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import CONFIG_KEY
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    from casreg.content.chunking import ChunkParams

__all__ = ["MAX_CHUNK_BYTES", "REGISTRY_FORMAT", "REGISTRY_FORMATS", "RegistryConfig", "read_config", "init_config",
           "max_chunk_size"]

#: No chunk may claim more raw bytes than this, whatever a registry's ``casreg.json`` says
#: (its ``max_size``, 4 MiB by default, is the bound readers apply).
MAX_CHUNK_BYTES = 64 << 20
#: ``casreg.json`` is read at most this far (it is a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20
#: The format of new registries; every format here is read.
REGISTRY_FORMAT = "casreg/4"
#: Registry format -> the tree format of the manifests its pushes write.
REGISTRY_FORMATS = {"casreg/1": 1, "casreg/2": 2, "casreg/3": 2, "casreg/4": 2}
#: Registry formats whose pushes may use the PLANES codec (casreg.content.planes).
FLOAT_CODEC_FORMATS = frozenset({"casreg/3", "casreg/4"})
#: Registry formats whose pushes may code chunks as deltas against the parent version
#: (codec 3, casreg.content.delta), recording each delta's bases in its manifest.
DELTA_CODEC_FORMATS = frozenset({"casreg/4"})
#: ``casreg.json`` is a few hundred bytes; it is read at most this large.
MAX_CONFIG_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """The content of ``casreg.json``."""

    format: str
    created_at: str
    chunking: dict[str, Any] = field(default_factory=dict)
    zstd_level: int = DEFAULT_ZSTD_LEVEL

    @property
    def tree(self) -> int:
        """The tree format new versions of this registry are written in (1 or 2)."""
        return REGISTRY_FORMATS[self.format]

    @property
    def float_codec(self) -> bool:
        """Whether pushes may store tensor data with the PLANES codec (format ``casreg/3``;
        older formats keep to codecs that older casreg readers know)."""
        return self.format in FLOAT_CODEC_FORMATS

    @property
    def delta_codec(self) -> bool:
        """Whether pushes may store chunks as deltas against the parent version (codec 3,
        format ``casreg/4``; older formats never do, so older readers read them)."""
        return self.format in DELTA_CODEC_FORMATS

    @property
    def max_chunk(self) -> int:
        """The largest raw chunk this registry's parameters allow (readers refuse larger
        chunk claims), capped at :data:`MAX_CHUNK_BYTES`."""
        size = self.chunking.get("max_size")
        return min(size, MAX_CHUNK_BYTES) if type(size) is int and size > 0 else MAX_CHUNK_BYTES

    def chunk_params(self) -> ChunkParams:
        """The registry's chunking parameters (importing the chunker only when asked)."""
        from casreg.content.chunking import ChunkParams

        try:
            return ChunkParams.from_dict(self.chunking)
        except (TypeError, ValueError) as err:
            raise IntegrityError(f"{CONFIG_KEY} has invalid chunking parameters: {err}") from None

    def to_json(self) -> bytes:
        return json.dumps({"format": self.format, "created_at": self.created_at, "chunking": self.chunking,
                           "zstd_level": self.zstd_level}, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> RegistryConfig:
        """Parse and check ``casreg.json``; a registry of another format is refused."""
        try:
            if len(data) > MAX_CONFIG_BYTES:
                raise ValueError("too large")
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (not JSON, or larger than "
                                 f"{MAX_CONFIG_BYTES:,} bytes)") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (not a JSON object)")
        fmt = doc.get("format")
        if not isinstance(fmt, str) or re.fullmatch(r"casreg/[1-9][0-9]{0,3}", fmt) is None:
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (format {str(fmt)[:40]!r})")
        if fmt not in REGISTRY_FORMATS:  # a newer casreg's registry, not damage
            raise CasregError(f"{where} holds a registry of format {str(doc.get('format'))[:40]!r}; "
                              f"this casreg reads {', '.join(REGISTRY_FORMATS)}")
        chunking, level, created = doc.get("chunking"), doc.get("zstd_level", DEFAULT_ZSTD_LEVEL), \
            doc.get("created_at")
        if not isinstance(chunking, dict) or type(level) is not int or not isinstance(created, str):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (a field is missing or has the wrong type)")
        if not 1 <= level <= 22:
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (zstd_level {level} is not 1-22)")
        return cls(str(doc["format"]), created, chunking, level)


_MAX_CHUNK: weakref.WeakKeyDictionary[ObjectStore, int] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def read_config(store: ObjectStore) -> RegistryConfig | None:
    """The registry's configuration, or ``None`` if nothing was ever pushed to it."""
    try:
        data = store.read(CONFIG_KEY, ByteRange(0, MAX_CONFIG_BYTES + 1))
    except NotFoundError:
        return None
    if len(data) > MAX_CONFIG_BYTES:
        raise IntegrityError(f"{CONFIG_KEY} in {store.url} is corrupt (larger than {MAX_CONFIG_BYTES:,} bytes)")
    config = RegistryConfig.from_json(data, store.url)
    with _LOCK:  # casreg.json never changes: later readers of the bound need not read it again
        _MAX_CHUNK[store] = config.max_chunk
    return config


def init_config(store: ObjectStore, chunking: ChunkParams, *,
                registry_format: str = REGISTRY_FORMAT) -> RegistryConfig:
    """The registry's configuration, written first (create-if-absent) if there is none:
    of two first pushes racing, both end up with the one that was written.
    ``registry_format`` makes a registry of an older format (for compatibility tests)."""
    if registry_format not in REGISTRY_FORMATS:
        raise ValueError(f"unknown registry format {registry_format!r}")
    config = read_config(store)
    if config is None:
        store.check_writable()
        created = datetime.now(UTC).isoformat()
        doc = RegistryConfig(registry_format, created, dict(chunking.to_dict()))
        store.create(CONFIG_KEY, doc.to_json())
        config = read_config(store)
        assert config is not None
    return config


def max_chunk_size(store: ObjectStore) -> int:
    """The registry's maximum chunk size (:attr:`RegistryConfig.max_chunk`), read once per
    store object (``casreg.json`` never changes); the absolute cap for a registry without
    one (nothing pushed yet: no manifest to read either)."""
    with _LOCK:
        cached = _MAX_CHUNK.get(store)
    if cached is not None:
        return cached
    config = read_config(store)
    size = config.max_chunk if config is not None else MAX_CHUNK_BYTES
    with _LOCK:
        _MAX_CHUNK[store] = size
    return size
