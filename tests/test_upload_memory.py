"""What a push to S3 holds for its uploads: packs staged in temporary files, not memory
(casreg/storage/s3.py's ``_SpooledWriter``), sent from where they lie (``_RangeReader``).

On S3 a sealed pack waits for its PUT, and a push keeps one per request slot plus the one
filling: 10 packs of 32 MiB, each twice over in memory (botocore's ``BytesIO`` of the body,
copied whole by aiohttp), made a push to S3 peak at 1.07 GB (docs/benchmarks.md, "A push
to S3").
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_index_bundles import _open_files

import casreg.storage.s3 as s3mod
from casreg import Registry
from casreg.storage.base import ObjectWriter
from casreg.storage.memory import MemoryStore
from casreg.storage.s3 import S3Store, _BufferReader, _FileRangeReader, _Spool


@pytest.fixture
def store(s3_env: Any) -> S3Store:
    return S3Store(s3_env.url())


def _staged() -> set[str]:
    """The staged packs (unlinked ``casreg-pack-*`` files) this process has open."""
    return {target for _, target in _open_files()
            if os.path.basename(target).startswith("casreg-pack-") and target.endswith(" (deleted)")}


def _pieces() -> list[bytes]:
    return [os.urandom(n) for n in (1, 1000, 300_000, 3, 70_000)]


def test_an_s3_writer_stages_the_pack_in_a_file_not_in_memory(store: S3Store) -> None:
    """The pieces go to an unlinked temporary file as they come (the writer keeps none of
    them); publishing sends that file's bytes; a second publish (after a damaged object was
    removed) sends them again; closing the writer closes the file."""
    before = _staged()
    pieces = _pieces()
    writer = store.open_writer("packs")
    for piece in pieces:
        writer.write(memoryview(piece))
    writer.write_many([b"tail", bytearray(b"end")])
    whole = b"".join(pieces) + b"tailend"
    assert writer.parts == [] and writer.size == len(whole)
    assert len(_staged() - before) == 1
    assert writer.publish("packs/p1", size=len(whole)) is True
    assert store.read("packs/p1") == whole
    assert writer.publish("packs/p1", size=len(whole)) is False  # create-if-absent, as ever
    store.delete("packs/p1")
    assert writer.publish("packs/p1", size=len(whole)) is True and store.read("packs/p1") == whole
    writer.close()
    assert _staged() <= before


def test_a_staged_object_over_the_multipart_threshold_goes_up_in_parts(s3_env: Any) -> None:
    """An object staged larger than the multipart threshold (an index bundle of millions of
    chunks: ``casreg compact`` writes it through the same writer) is uploaded in parts read
    from the staged file, and created only if absent, as any multipart object is."""
    store = S3Store(s3_env.url(), multipart_threshold=5 << 20, part_size=5 << 20)
    data = os.urandom(12 << 20)
    writer = store.open_writer("bundles")
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start:start + (1 << 20)])
    assert writer.parts == []
    assert writer.publish("bundles/ab/big.bundle", size=len(data)) is True
    assert store.requests["create_multipart_upload"] == 1 and store.requests["upload_part"] == 3
    assert store.read("bundles/ab/big.bundle") == data
    assert writer.publish("bundles/ab/big.bundle", size=len(data)) is False  # If-None-Match on completion
    assert store.requests["abort_multipart_upload"] == 1
    writer.close()


def test_without_room_to_stage_the_writer_keeps_the_pack_in_memory(store: S3Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary file (a temporary directory that does not exist): the pack is kept in
    memory, as the default writer keeps it, and published the same."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    pieces = _pieces()
    writer = store.open_writer("packs")
    for piece in pieces:
        writer.write(piece)
    assert writer.parts != [] and writer.size == sum(map(len, pieces))
    assert writer.publish("packs/p2", size=writer.size) is True
    assert store.read("packs/p2") == b"".join(pieces)
    writer.close()


def test_a_staged_pack_that_runs_out_of_space_goes_on_in_memory(store: S3Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up in the middle of a pack (the third write fails after writing half
    of it): what was staged is read back into memory, the rest is kept there, the file is
    closed, and the object published holds exactly the bytes written."""
    real = s3mod.write_all
    calls = 0

    def filling(fd: int, parts: Sequence[Any], *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            half = bytes(parts[0])[:len(parts[0]) // 2]
            real(fd, [half])  # a partial write before the error
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, parts, *args)

    monkeypatch.setattr(s3mod, "write_all", filling)
    before = _staged()
    pieces = _pieces()
    writer = store.open_writer("packs")
    for piece in pieces:
        writer.write(piece)
    assert calls == 3 and _staged() <= before and len(writer.parts) >= 2
    assert writer.publish("packs/p3", size=sum(map(len, pieces))) is True
    assert store.read("packs/p3") == b"".join(pieces)
    writer.close()


def test_a_push_to_s3_stages_its_packs_and_leaves_none_open(s3_env: Any, tmp_path: Path) -> None:
    """A push of several packs publishes them from staged files, closes every one, and
    what it stored pulls back whole."""
    before = _staged()
    reg = Registry(s3_env.url())
    model = tmp_path / "model.bin"
    data = os.urandom(40 << 20)  # incompressible: two packs
    model.write_bytes(data)
    version = reg.push("m", model)
    assert version.new_bytes == len(data)
    assert _staged() <= before
    reg.pull(version.ref, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_writer_publishes_its_pieces_as_one_buffer() -> None:
    """The default writer (in memory) joins its pieces into one buffer when it publishes,
    which replaces them (a retried publish holds the object once)."""
    store = MemoryStore(f"memory://writer-{uuid.uuid4().hex}")
    writer = ObjectWriter(store)
    pieces = _pieces()
    for piece in pieces:
        writer.write(memoryview(piece))
    assert writer.publish("packs/a", size=sum(map(len, pieces))) is True
    assert writer.parts == [b"".join(pieces)]
    assert store.read("packs/a") == b"".join(pieces)


_Maker = Callable[[bytes], tuple[io.RawIOBase, Callable[[], None]]]  # a body of the bytes, and what closes it


def _from_buffer(data: bytes) -> tuple[io.RawIOBase, Callable[[], None]]:
    return _BufferReader(data), lambda: None


def _from_file(data: bytes) -> tuple[io.RawIOBase, Callable[[], None]]:
    spool = _Spool()
    spool.append([b"before", data, b"after"])  # a range in the middle of the file
    return _FileRangeReader(spool.fd, len(b"before"), len(b"before") + len(data)), spool.close


@pytest.mark.parametrize(("make", "preadv"), [(_from_buffer, True), (_from_file, True), (_from_file, False)],
                         ids=["buffer", "file-range", "file-range-without-preadv"])
@given(data=st.binary(max_size=5000),
       ops=st.lists(st.tuples(st.sampled_from(["read", "readinto", "seek"]), st.integers(-10, 6000),
                              st.sampled_from([0, 1, 2])), max_size=12))
def test_a_request_body_reads_and_seeks_as_a_file_of_its_bytes(make: _Maker, preadv: bool, data: bytes,
                                                               ops: list[tuple[str, int, int]]) -> None:
    """A request body reads, seeks and tells as ``BytesIO`` of the same bytes does:
    botocore seeks it to learn its length and back to its start for a retry, aiohttp reads
    it in pieces (a staged file's range through ``os.preadv``, or ``os.pread`` where the
    platform lacks it)."""
    body, done = make(data)
    try:
        with mock.patch.object(s3mod, "_PREADV", s3mod._PREADV if preadv else None):
            _reads_as_bytesio(body, data, ops)
    finally:
        done()


def _reads_as_bytesio(body: io.RawIOBase, data: bytes, ops: list[tuple[str, int, int]]) -> None:
    model = io.BytesIO(data)
    for op, n, whence in ops:
        if op == "read":
            assert body.read(n) == model.read(n)
        elif op == "readinto":
            a, b = bytearray(max(n, 0)), bytearray(max(n, 0))
            assert body.readinto(a) == model.readinto(b) and a == b
        else:
            try:
                want = model.seek(n, whence)
            except ValueError:
                with pytest.raises(ValueError):
                    body.seek(n, whence)
                continue
            assert body.seek(n, whence) == want
        assert body.tell() == model.tell()
    body.seek(0)
    assert body.read() == data
