"""Reading a Parquet file's key-value metadata without pyarrow.

A version's ledger segment (one Parquet file, the record of the version: the authority)
also carries the record as JSON in its footer's key-value metadata (docs/FORMAT.md §6),
so that resolving ``NAME:N`` reads the authority itself, with one small read and no
pyarrow import (``casreg resolve`` must stay light). This module decodes just enough of
the footer: the last 8 bytes give its length (``<u32 length> "PAR1"``), and the footer
is a Thrift compact-protocol ``FileMetaData`` struct whose field 5 is
``list<KeyValue{1: string key, 2: string value}>``; every other field is skipped.

Hostile input is expected: every length and count is checked against what is left, the
nesting depth is bounded, and anything malformed is a ``ValueError`` (the caller names
the object).
"""

from __future__ import annotations

__all__ = ["FOOTER_MAGIC", "MAX_FOOTER_BYTES", "key_value_metadata"]

FOOTER_MAGIC = b"PAR1"
#: A one-row segment's footer is a few KiB, its record at most
#: :data:`casreg.records.MAX_RECORD_BYTES`; anything much larger is not ours.
MAX_FOOTER_BYTES = 4 << 20
_MAX_DEPTH = 32

# Thrift compact protocol type ids
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("footer ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("footer field runs past its end")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("footer varint too long")

    def binary(self) -> bytes:
        return self.take(self.varint())

    def skip(self, ftype: int, depth: int) -> None:
        """Skip one value of type ``ftype`` (iteratively bounded by ``depth``)."""
        if depth > _MAX_DEPTH:
            raise ValueError("footer nested too deeply")
        if ftype in (_TRUE, _FALSE):
            return  # a struct field's boolean lives in its header
        if ftype == _BYTE:
            self.take(1)
        elif ftype in (_I16, _I32, _I64):
            self.varint()
        elif ftype == _DOUBLE:
            self.take(8)
        elif ftype == _BINARY:
            self.binary()
        elif ftype in (_LIST, _SET):
            size, etype = self.list_header()
            for _ in range(size):
                if etype in (_TRUE, _FALSE):
                    self.take(1)  # in a list a boolean is one byte
                else:
                    self.skip(etype, depth + 1)
        elif ftype == _MAP:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4, depth + 1)
                    self.skip(kv & 0x0F, depth + 1)
        elif ftype == _STRUCT:
            for _fid, ft in self.fields():
                self.skip(ft, depth + 1)
        else:
            raise ValueError(f"footer has an unknown field type {ftype}")

    def list_header(self) -> tuple[int, int]:
        head = self.byte()
        size = head >> 4
        if size == 15:
            size = self.varint()
        if size > len(self.data) - self.pos + 1:  # every element takes at least a byte (or none: bools)
            raise ValueError("footer list longer than the footer")
        return size, head & 0x0F

    def fields(self) -> _Fields:
        return _Fields(self)


class _Fields:
    """Iterates ``(field id, type)`` of a struct; the caller reads or skips each value."""

    __slots__ = ("reader", "last")

    def __init__(self, reader: _Reader) -> None:
        self.reader, self.last = reader, 0

    def __iter__(self) -> _Fields:
        return self

    def __next__(self) -> tuple[int, int]:
        head = self.reader.byte()
        ftype = head & 0x0F
        if ftype == _STOP:
            raise StopIteration
        delta = head >> 4
        if delta:
            self.last += delta
        else:
            z = self.reader.varint()
            self.last = (z >> 1) ^ -(z & 1)
        return self.last, ftype


def footer_of(data: bytes) -> bytes:
    """The Thrift-encoded footer of the Parquet file ``data``."""
    if len(data) < 12 or data[:4] != FOOTER_MAGIC or data[-4:] != FOOTER_MAGIC:
        raise ValueError("not a Parquet file")
    length = int.from_bytes(data[-8:-4], "little")
    if not 0 < length <= min(MAX_FOOTER_BYTES, len(data) - 12):
        raise ValueError("bad Parquet footer length")
    return data[-8 - length:-8]


def key_value_metadata(data: bytes) -> dict[str, str]:
    """The footer's key-value metadata of the Parquet file ``data`` (``ValueError`` if
    it is not a well-formed Parquet file)."""
    r = _Reader(footer_of(data))
    out: dict[str, str] = {}
    for fid, ftype in r.fields():
        if fid != 5 or ftype != _LIST:
            r.skip(ftype, 0)
            continue
        size, etype = r.list_header()
        if etype != _STRUCT:
            raise ValueError("footer key-value metadata is not a list of structs")
        for _ in range(size):
            key: bytes | None = None
            value: bytes | None = None
            for kid, ktype in r.fields():
                if kid in (1, 2) and ktype == _BINARY:
                    if kid == 1:
                        key = r.binary()
                    else:
                        value = r.binary()
                else:
                    r.skip(ktype, 1)
            if key is not None and value is not None:
                try:
                    out[key.decode("utf-8")] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError("footer metadata is not UTF-8") from None
    return out
