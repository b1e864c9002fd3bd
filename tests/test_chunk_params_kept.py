"""A registry's chunking parameters are fixed by its ``casreg.json`` (docs/FORMAT.md §2):
a new registry records :data:`DEFAULT_CHUNK_PARAMS`, an existing one keeps cutting with
what it recorded, whatever the current default is, and one whose ``chunking`` names no
parameters keeps the 1 MiB parameters every registry had before the default was re-chosen
(docs/chunking.md), so changing the default never breaks an old registry's dedup."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS, ChunkParams, chunk_bytes
from casreg.content.config import REGISTRY_FORMAT, REGISTRY_FORMATS, read_config
from casreg.keys import CONFIG_KEY
from casreg.storage.memory import MemoryStore

#: What every registry of casreg/1-3 was created with (and what ``{}`` means).
ONE_MIB = ChunkParams(avg_size=1 << 20, min_size=1 << 18, max_size=1 << 22, normalization=1)
OTHER = ChunkParams(avg_size=128 << 10, min_size=32 << 10, max_size=512 << 10, normalization=1)


@pytest.fixture
def reg() -> Iterator[Registry]:
    url = f"memory://chunk-params-{uuid.uuid4().hex}"
    try:
        yield Registry(url)
    finally:
        MemoryStore.wipe(url)


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _cuts(reg: Registry, ref: str) -> list[int]:
    return [c.raw_size for e in reg.manifest(ref).entries for c in e.chunks]


def _file(tmp_path: Path) -> tuple[Path, bytes]:
    data = random_bytes(5 << 20, seed=5)
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    return path, data


def test_empty_chunking_means_the_one_mib_parameters() -> None:
    assert ChunkParams.from_dict({}) == ONE_MIB


def test_a_new_registry_records_the_default(reg: Registry, tmp_path: Path) -> None:
    path, data = _file(tmp_path)
    v = reg.push("m", path)
    config = read_config(reg.store)
    assert config is not None and config.format == REGISTRY_FORMAT
    assert config.chunk_params() == DEFAULT_CHUNK_PARAMS
    assert _cuts(reg, v.ref) == [n for _, n in chunk_bytes(data, DEFAULT_CHUNK_PARAMS)]


@pytest.mark.parametrize("fmt", sorted(REGISTRY_FORMATS))
@pytest.mark.parametrize("chunking, expected", [
    ({}, ONE_MIB), (ONE_MIB.to_dict(), ONE_MIB), (OTHER.to_dict(), OTHER)], ids=["unnamed", "1MiB", "128KiB"])
def test_an_existing_registry_keeps_its_chunking(reg: Registry, tmp_path: Path, fmt: str,
                                                 chunking: dict[str, Any], expected: ChunkParams) -> None:
    doc = json.dumps({"format": fmt, "created_at": "2026-01-01T00:00:00Z", "chunking": chunking,
                      "zstd_level": 3}).encode()
    assert reg.store.create(CONFIG_KEY, doc)
    path, data = _file(tmp_path)
    v = reg.push("m", path)
    assert _cuts(reg, v.ref) == [n for _, n in chunk_bytes(data, expected)]
    assert len(_cuts(reg, v.ref)) != len(chunk_bytes(data, OTHER if expected == ONE_MIB else ONE_MIB))
    assert reg.store.read(CONFIG_KEY) == doc  # the push did not rewrite it
