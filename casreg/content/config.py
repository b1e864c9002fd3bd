"""``casreg.json``: the registry's format and the content parameters every push uses.

Written once, by the first push, with create-if-absent (docs/FORMAT.md §2): the
chunking parameters are fixed for the registry's life, since changing them would stop
new pushes from deduplicating against old data; ``zstd_level`` is only a default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from casreg.content.codec import DEFAULT_ZSTD_LEVEL
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import CONFIG_KEY
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    from casreg.content.chunking import ChunkParams

__all__ = ["REGISTRY_FORMAT", "RegistryConfig", "read_config", "init_config"]

REGISTRY_FORMAT = "casreg/1"


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """The content of ``casreg.json``."""

    format: str
    created_at: str
    chunking: dict[str, Any] = field(default_factory=dict)
    zstd_level: int = DEFAULT_ZSTD_LEVEL

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
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (not JSON)") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (not a JSON object)")
        if doc.get("format") != REGISTRY_FORMAT:
            raise CasregError(f"{where} holds a registry of format {doc.get('format')!r}; "
                              f"this casreg reads {REGISTRY_FORMAT}")
        chunking, level, created = doc.get("chunking", {}), doc.get("zstd_level", DEFAULT_ZSTD_LEVEL), \
            doc.get("created_at", "")
        if not isinstance(chunking, dict) or type(level) is not int or not isinstance(created, str):
            raise IntegrityError(f"{CONFIG_KEY} in {where} is corrupt (a field has the wrong type)")
        return cls(REGISTRY_FORMAT, created, chunking, level)


def read_config(store: ObjectStore) -> RegistryConfig | None:
    """The registry's configuration, or ``None`` if nothing was ever pushed to it."""
    try:
        data = store.read(CONFIG_KEY)
    except NotFoundError:
        return None
    return RegistryConfig.from_json(data, store.url)


def init_config(store: ObjectStore, chunking: ChunkParams) -> RegistryConfig:
    """The registry's configuration, written first (create-if-absent) if there is none:
    of two first pushes racing, both end up with the one that was written."""
    config = read_config(store)
    if config is None:
        store.check_writable()
        created = datetime.now(UTC).isoformat()
        store.create(CONFIG_KEY, RegistryConfig(REGISTRY_FORMAT, created, dict(chunking.to_dict())).to_json())
        config = read_config(store)
        assert config is not None
    return config
