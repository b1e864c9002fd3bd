"""Version manifests: what a version contains, and how its digest is computed.

A version is one file or a directory tree. Its digest (the tree digest) is the BLAKE3 of
a canonical byte encoding of its entries, each naming a relative path, a type, a size
and the BLAKE3 of the file's bytes (exactly what ``b3sum`` prints). In tree format 2
(new registries) each file's record also holds its *layout digest*: the BLAKE3 of the
list of its chunks' digests and sizes, in order. So the version digest commits to which
chunk sits at which offset of which file, and a ranged read that checks each chunk
against its own digest has also proven that the chunk belongs at that place. Where the
chunks live (packs, offsets in packs, codecs) is recorded beside the entries but is
*not* part of the digest. docs/FORMAT.md specifies all of this for independent
implementations.

Reading a manifest is bounded: at most :data:`MAX_STORED_MANIFEST` stored bytes are
read, at most :data:`MAX_MANIFEST_BYTES` decoded, no chunk may claim more than the
registry's maximum chunk size (``casreg.json``), and parsing costs about 500 bytes of
memory per chunk reference, so the largest acceptable manifest costs under 1 GB.
"""

from __future__ import annotations

import gc
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # json.dumps' own, ensure_ascii=False
from typing import Any, Literal

import zstandard
from blake3 import blake3

from casreg.content.codec import zstd_decode
from casreg.content.config import MAX_CHUNK_BYTES, max_chunk_size
from casreg.digest import HEX64, Digest
from casreg.errors import IntegrityError, NotFoundError, UnsafePathError
from casreg.keys import manifest_key
from casreg.records import JsonValue
from casreg.storage import ByteRange, ObjectStore

__all__ = [
    "ChunkRef",
    "Entry",
    "Manifest",
    "tree_digest",
    "layout_digest",
    "validate_relpath",
    "seal_manifest",
    "read_manifest",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMATS",
    "MAX_CHUNK_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_VALUES",
    "MAX_STORED_MANIFEST",
    "MAX_PATH_BYTES",
    "MAX_PATH_DEPTH",
]

#: The manifest format of each tree format (the JSON ``format`` field).
MANIFEST_FORMATS = {1: "casreg-manifest/1", 2: "casreg-manifest/2"}
MANIFEST_FORMAT = MANIFEST_FORMATS[1]
TREE_MAGIC = {1: b"casreg-tree-v1\x00", 2: b"casreg-tree-v2\x00"}
LAYOUT_MAGIC = b"casreg-layout-v1\x00"
EntryType = Literal["f", "x", "d"]  # regular file, executable file, (empty) directory
VersionKind = Literal["file", "dir"]
MAX_PATH_BYTES = 4096
#: Components in a path at most: deep enough for any real tree, shallow enough that a
#: pull holds one descriptor per level and nothing that walks a path can run out of stack.
MAX_PATH_DEPTH = 256
#: Decoded JSON of one manifest, at most: ~1.3 M chunk references (a 1.3 TB version at the
#: default 1 MiB chunks); parsing the largest costs under 1 GB of memory.
MAX_MANIFEST_BYTES = 128 << 20
#: Stored (compressed) bytes of one manifest read, at most.
MAX_STORED_MANIFEST = MAX_MANIFEST_BYTES + (1 << 20)
#: JSON values one manifest may hold, at most, counted before parsing as its ``,``, ``:``,
#: ``[`` and ``{`` bytes (strings included, so the count never falls short). Python spends
#: up to ~72 bytes on a value however few bytes of JSON spell it (``[[],[],...]``: 3 bytes
#: each), so the byte cap alone let 128 MiB of JSON cost 3.3 GB. 10 Mi values cost under
#: 750 MB; a real manifest needs 7 per chunk reference and ~11 per file (1.4 M chunk
#: references, or 550,000 files of one chunk each).
MAX_MANIFEST_VALUES = 10 << 20


def seal_manifest(json_bytes: bytes) -> bytes:
    """The stored form of a manifest: zstd of its JSON, then the BLAKE3 of that frame.

    The version digest covers what a version *is*, not where its chunks are stored; the
    trailer covers every byte, so damage to a chunk location is reported as a corrupt
    manifest rather than as a bad pack."""
    frame = zstandard.ZstdCompressor(level=3).compress(json_bytes)
    return frame + blake3(frame).digest()


_DRIVE = re.compile(r"[A-Za-z]:")
#: Unicode category Cc (control characters) is exactly these code points: a regular
#: expression finds them in a path ~20x faster than asking unicodedata per character.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_relpath(path: str) -> str:
    """Refuse any path that could escape a destination directory or is not portable
    enough to be a registry entry: absolute paths, ``.``/``..``/empty components,
    backslashes, NUL and other control characters, more than :data:`MAX_PATH_BYTES`
    bytes or :data:`MAX_PATH_DEPTH` components."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError("manifest entry has an empty path")
    if path.startswith("/") or _DRIVE.match(path):  # also Windows drive syntax
        raise UnsafePathError(f"unsafe path {path!r}: absolute paths are not allowed")
    if "\\" in path:
        raise UnsafePathError(f"unsafe path {path!r}: backslashes are not allowed")
    if _CONTROL.search(path):
        raise UnsafePathError(f"unsafe path {path!r}: control characters are not allowed")
    depth = path.count("/") + 1
    if depth > MAX_PATH_DEPTH:
        raise UnsafePathError(f"path {path[:60]!r}... has {depth} components, more than {MAX_PATH_DEPTH}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"unsafe path {path!r}: '{part or '//'}' components are not allowed")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path {path[:60]!r}... is longer than {MAX_PATH_BYTES} bytes")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"path {path!r} is not valid UTF-8") from None
    return path


_KNOWN_CODECS = frozenset({0, 1, 2, 3})
_DELTA = 3  # casreg.content.codec.Codec.DELTA  # casreg.content.codec.Codec; kept here to avoid importing zstd twice


def _parse_json(text: bytes) -> Any:
    """``json.loads`` of a manifest's JSON, refused (``ValueError``) before parsing if it
    could hold more than :data:`MAX_MANIFEST_VALUES` values; the cyclic garbage collector
    is paused meanwhile (millions of fresh lists otherwise trigger it again and again:
    seconds per manifest, for nothing, since parsing creates no cycles)."""
    values = text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")
    if values > MAX_MANIFEST_VALUES:
        raise ValueError(f"it may hold {values:,} JSON values, more than {MAX_MANIFEST_VALUES:,}")
    paused = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text)
    finally:
        if paused:
            gc.enable()


def _hex32(value: object, what: str) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise ValueError(f"{what} {str(value)[:80]!r} is not 64 lowercase hex digits")
    return value


_MAX_COUNT = 1 << 62
_U64 = struct.Struct("<Q").pack
#: Records hashed with one update, at most: one update per record cost a third of reading
#: a 5,000-file manifest, and one for all of them would hold a copy of them all.
_HASHED_AT_ONCE = 4096


def _count(value: object, what: str, limit: int = _MAX_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise ValueError(f"{what} {str(value)[:40]!r} is not a non-negative integer")
    return value


def _digest32(value: object, what: str) -> bytes:
    """The 32 bytes that ``value``, 64 lowercase hex digits, spells (else ``ValueError``)."""
    if type(value) is str and len(value) == 64:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if raw.hex() == value:  # nothing but 64 lowercase hex digits gives back the same text
            return raw
    return bytes.fromhex(_hex32(value, what))


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list")
    return value


def stored_bound(raw_size: int) -> int:
    """The most stored bytes a chunk of ``raw_size`` raw bytes can take: zstd's worst
    case (``ZSTD_compressBound``) is ``raw + raw/256 + 64 KiB`` and a raw chunk is stored
    as is, so anything larger is a forgery (and a read of it would allocate for nothing)."""
    return raw_size + (raw_size >> 8) + (64 << 10)


def _chunk(c: object, packs: list[str], max_chunk: int) -> ChunkRef:
    """One chunk reference ``[digest, pack, offset, stored, raw, codec]``, checked: the
    common, valid case in one test (a manifest holds a million of them), anything else
    by :func:`_chunk_checked`, which names what is wrong."""
    if type(c) is list and len(c) == 6:
        d, pack, offset, stored, raw, codec = c
        if (type(pack) is int and type(offset) is int
                and type(stored) is int and type(raw) is int and type(codec) is int
                and 0 <= pack < len(packs) and 0 <= offset <= _MAX_COUNT and 0 <= raw <= max_chunk
                and 0 <= stored <= stored_bound(raw) and codec in _KNOWN_CODECS):
            return ChunkRef(_digest32(d, "chunk digest"), packs[pack], offset, stored, raw, codec)
    return _chunk_checked(c, packs, max_chunk)


def _chunk_checked(c: object, packs: list[str], max_chunk: int) -> ChunkRef:
    if not isinstance(c, list) or len(c) != 6:
        raise ValueError("a chunk is not a list of 6 fields")
    pack = _count(c[1], "pack number")
    if pack >= len(packs):
        raise ValueError(f"pack number {pack} is out of range")
    codec = _count(c[5], "codec")
    if codec not in _KNOWN_CODECS:
        raise ValueError(f"unknown codec {codec}")
    raw = _count(c[4], "raw size")
    if raw > max_chunk:
        raise ValueError(f"a chunk claims {raw:,} bytes, more than the registry's maximum chunk size {max_chunk:,}")
    stored = _count(c[3], "stored size")
    if stored > stored_bound(raw):
        raise ValueError(f"a chunk of {raw:,} bytes claims {stored:,} stored bytes, more than any codec produces")
    return ChunkRef(bytes.fromhex(_hex32(c[0], "chunk digest")), packs[pack], _count(c[2], "offset"), stored, raw,
                    codec)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file and where its stored form lives."""

    digest: bytes  # BLAKE3 of the raw chunk bytes, 32 bytes
    pack: str  # hex id of the pack holding it
    offset: int  # of the stored payload inside the pack
    stored_size: int
    raw_size: int
    codec: int


@dataclass(slots=True)
class Entry:
    path: str
    type: EntryType
    size: int = 0
    digest: bytes = b""  # BLAKE3 of the file's bytes; empty for directories
    chunks: list[ChunkRef] = field(default_factory=list)

    def canonical(self, tree: int = 1) -> bytes:
        """This entry's record in the tree digest of format ``tree`` (docs/FORMAT.md §5)."""
        p = self.path.encode("utf-8")
        if self.type == "d":
            return b"d " + p + b"\x00"
        if tree == 1:
            return b"%s %d %s %s\x00" % (self.type.encode(), self.size, self.digest.hex().encode(), p)
        return b"%s %d %s %s %s\x00" % (self.type.encode(), self.size, self.digest.hex().encode(),
                                        layout_digest(self.chunks).hex().encode(), p)


def layout_digest(chunks: list[ChunkRef]) -> bytes:
    """BLAKE3 of ``"casreg-layout-v1\\0"`` followed by, for each chunk in file order, its
    32-byte digest and its raw size as 8 bytes little-endian: which bytes sit where in the
    file (nothing about where they are stored)."""
    if len(chunks) == 1:  # (most files: one update of 57 bytes, half the time of the loop below)
        return blake3(LAYOUT_MAGIC + chunks[0].digest + _U64(chunks[0].raw_size)).digest()
    h = blake3(LAYOUT_MAGIC)
    for i in range(0, len(chunks), _HASHED_AT_ONCE):  # a few big updates, in bounded memory
        h.update(b"".join([c.digest + _U64(c.raw_size) for c in chunks[i:i + _HASHED_AT_ONCE]]))
    return h.digest()


def _sort_key(e: Entry) -> bytes:
    return e.path.encode("utf-8")


def tree_digest(kind: VersionKind, entries: list[Entry], tree: int = 1) -> bytes:
    """BLAKE3 of ``"casreg-tree-vN\\0" kind "\\0"`` followed by every entry's canonical
    record (format ``tree``), entries sorted by the UTF-8 bytes of their paths."""
    return _sorted_tree_digest(kind, sorted(entries, key=_sort_key), tree)


def _sorted_tree_digest(kind: VersionKind, entries: list[Entry], tree: int) -> bytes:
    """:func:`tree_digest` of ``entries`` already in its order."""
    h = blake3(TREE_MAGIC[tree] + kind.encode() + b"\x00")
    for i in range(0, len(entries), _HASHED_AT_ONCE):
        h.update(b"".join([e.canonical(tree) for e in entries[i:i + _HASHED_AT_ONCE]]))
    return h.digest()


def _chunk_json(c: ChunkRef, packs: dict[str, int]) -> str:
    """A chunk reference as a manifest lists it, in JSON (its pack numbered in ``packs``
    if new)."""
    pack = packs.setdefault(c.pack, len(packs))
    return f'["{c.digest.hex()}",{pack},{c.offset},{c.stored_size},{c.raw_size},{c.codec}]'


def _entry_json(e: Entry, packs: dict[str, int]) -> str:
    """An entry as a manifest lists it, in JSON (``json.dumps`` writes a string with the
    same ``encode_basestring``, an int as ``str`` does)."""
    if e.type == "d":
        return f'{{"path":{_json_string(e.path)},"type":"d"}}'
    chunks = ",".join([_chunk_json(c, packs) for c in e.chunks])
    return (f'{{"path":{_json_string(e.path)},"type":{_json_string(e.type)},"size":{e.size},'
            f'"digest":"{e.digest.hex()}","chunks":[{chunks}]}}')


@dataclass(slots=True)
class Manifest:
    kind: VersionKind
    entries: list[Entry]
    chunking: Mapping[str, JsonValue]
    digest: bytes = b""
    #: The tree format: 2 commits each file's chunk layout (new registries), 1 does not.
    tree: int = 1
    #: Where the base chunks of this version's delta chunks (codec 3) are stored: every
    #: chunk a delta payload names, each stored with a plain codec (docs/FORMAT.md §4.2).
    #: Not part of the version digest (like every chunk location); gc keeps their packs.
    bases: list[ChunkRef] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tree not in TREE_MAGIC:
            raise ValueError(f"unknown tree format {self.tree}")
        self.entries.sort(key=_sort_key)
        if not self.digest:
            self.digest = _sorted_tree_digest(self.kind, self.entries, self.tree)

    @property
    def commits_layout(self) -> bool:
        """Whether the version digest commits to where each chunk sits in its file, so a
        ranged read is verified against the version (format 2), not only chunk by chunk."""
        return self.tree >= 2

    @property
    def hexdigest(self) -> str:
        return self.digest.hex()

    @property
    def base_map(self) -> dict[bytes, ChunkRef]:
        """The recorded base chunks by digest (what a reader decodes delta chunks with)."""
        return {c.digest: c for c in self.bases}

    @property
    def pack_ids(self) -> set[str]:
        """Every pack this version's bytes need: its chunks' and its delta bases'."""
        return {c.pack for e in self.entries for c in e.chunks} | {c.pack for c in self.bases}

    @property
    def version_digest(self) -> Digest:
        """The version digest (this manifest's tree digest), as records spell it."""
        return Digest.from_bytes(self.digest)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.type != "d"]

    # -- serialisation ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """zstd-compressed JSON (:meth:`to_json`), sealed (:func:`seal_manifest`)."""
        return seal_manifest(self.to_json())

    def to_json(self) -> bytes:
        """The manifest's JSON (docs/FORMAT.md §5), UTF-8: the bytes ``json.dumps(doc,
        separators=(",", ":"), ensure_ascii=False)`` gives for its document, written entry
        by entry with the same string encoder (tests/test_manifest.py compares them), which
        is over twice as fast. Packs are listed once and chunks refer to them by position,
        which keeps a 100 GB file's manifest near 100 bytes per chunk."""
        packs: dict[str, int] = {}
        entries = [_entry_json(e, packs) for e in self.entries]
        bases = ",".join([_chunk_json(c, packs) for c in self.bases])
        head = json.dumps({"format": MANIFEST_FORMATS[self.tree], "digest": str(self.version_digest),
                           "kind": self.kind, "chunking": self.chunking, "packs": list(packs)},
                          separators=(",", ":"), ensure_ascii=False)
        tail = f',"bases":[{bases}]' if self.bases else ""
        return (head[:-1] + ',"entries":[' + ",".join(entries) + "]" + tail + "}").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, expected: bytes, where: str, max_chunk: int = MAX_CHUNK_BYTES) -> Manifest:
        """Decode and *verify* a stored manifest: every field has the right type and range,
        every path is safe, sizes add up, no chunk claims more than ``max_chunk`` raw bytes
        (or more stored bytes than a codec can produce), and the recomputed tree digest
        equals ``expected``. Anything else is an :class:`IntegrityError` naming ``where``."""
        if len(data) > MAX_STORED_MANIFEST:
            raise IntegrityError(f"manifest {where} is corrupt: it is larger than {MAX_STORED_MANIFEST:,} bytes")
        body, trailer = memoryview(data)[:-32], data[-32:]
        if len(data) < 32 or blake3(body).digest() != trailer:
            raise IntegrityError(f"manifest {where} is corrupt: its checksum does not match its bytes")
        try:
            doc = _parse_json(zstd_decode(body, MAX_MANIFEST_BYTES))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            tree = next((n for n, f in MANIFEST_FORMATS.items() if f == doc.get("format")), None)
            if tree is None:
                raise ValueError(f"unknown format {str(doc.get('format'))[:80]!r}")
            kind = doc["kind"]
            if kind not in ("file", "dir"):
                raise ValueError(f"unknown kind {kind!r}")
            chunking = doc.get("chunking") or {}
            if not isinstance(chunking, dict):
                raise ValueError("chunking is not an object")
            packs = [_hex32(p, "pack id") for p in _list(doc["packs"], "packs")]
            entries: list[Entry] = []
            for item in _list(doc["entries"], "entries"):
                if not isinstance(item, dict):
                    raise ValueError("an entry is not an object")
                path = validate_relpath(item["path"])
                etype = item["type"]
                if etype == "d":
                    entries.append(Entry(path, "d"))
                    continue
                if etype not in ("f", "x"):
                    raise ValueError(f"entry {path!r} has unsupported type {etype!r}")
                chunks = [_chunk(c, packs, max_chunk) for c in _list(item["chunks"], "chunks")]
                size = _count(item["size"], "size")
                if sum([c.raw_size for c in chunks]) != size:
                    raise ValueError(f"entry {path!r}: chunk sizes do not add up to {size}")
                entries.append(Entry(path, etype, size, _digest32(item["digest"], "file digest"), chunks))
            bases = [_chunk(c, packs, max_chunk) for c in _list(doc.get("bases", []), "bases")]
            if any(c.codec == _DELTA for c in bases):
                raise ValueError("a delta base is itself a delta chunk")
        except UnsafePathError as err:
            raise UnsafePathError(f"manifest {where} is hostile: {err}") from None
        except IntegrityError as err:
            raise IntegrityError(f"manifest {where} is corrupt: {err}") from None
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError) as err:
            raise IntegrityError(f"manifest {where} is corrupt: {err}") from None
        if kind == "file" and (len(entries) != 1 or entries[0].type == "d" or "/" in entries[0].path):
            raise IntegrityError(f"manifest {where} is corrupt: a file version must hold exactly one file")
        types = {e.path: e.type for e in entries}
        if len(types) != len(entries):
            raise IntegrityError(f"manifest {where} is corrupt: duplicate paths")
        dirs: set[str] = set()  # parents found to be directories, with all of theirs
        for e in entries:  # a file may not also be the parent directory of another entry
            parent = e.path.rpartition("/")[0]
            while parent and parent not in dirs:
                if types.get(parent, "d") != "d":
                    raise UnsafePathError(f"manifest {where} is hostile: {parent!r} is both a file and a directory")
                dirs.add(parent)
                parent = parent.rpartition("/")[0]
        manifest = cls(kind, entries, chunking, tree=tree, bases=bases)
        if manifest.digest != expected:
            raise IntegrityError(
                f"manifest {where} is corrupt: its entries hash to blake3:{manifest.hexdigest}, "
                f"not blake3:{expected.hex()}"
            )
        return manifest


def read_manifest(store: ObjectStore, digest: Digest, *, max_chunk: int | None = None) -> Manifest:
    """The manifest of version ``digest``, read (at most :data:`MAX_STORED_MANIFEST` bytes)
    and verified (:meth:`Manifest.from_bytes`: its recomputed digest must be ``digest``,
    no chunk larger than ``max_chunk``, by default the registry's ``casreg.json`` bound).
    A missing manifest of a version that a reference resolved to means a damaged
    registry: :class:`IntegrityError`, naming it."""
    key = manifest_key(digest)
    try:
        data = store.read(key, ByteRange(0, MAX_STORED_MANIFEST + 1))
    except NotFoundError:
        raise IntegrityError(f"object {key} is missing: the registry is damaged (run casreg verify)") from None
    if max_chunk is None:
        max_chunk = max_chunk_size(store)
    return Manifest.from_bytes(data, expected=digest.raw, where=key, max_chunk=max_chunk)
