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

import threading
from collections import OrderedDict

from blake3 import blake3

__all__ = ["FOOTER_MAGIC", "MAX_FOOTER_BYTES", "key_value_metadata"]

FOOTER_MAGIC = b"PAR1"
#: A one-row segment's footer is a few KiB, its record at most
#: :data:`casreg.records.MAX_RECORD_BYTES`; anything much larger is not ours.
MAX_FOOTER_BYTES = 4 << 20
_MAX_DEPTH = 32

# Thrift compact protocol type ids
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_IN_STRUCT, _IN_LIST = -2, -1  # frame kinds of :func:`_skip` (a map frame holds its value type)


def _varint(d: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``d[pos:]`` and the position after it."""
    result = shift = 0
    end = len(d)
    while True:
        if pos >= end:
            raise ValueError("footer ends early")
        b = d[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("footer varint too long")


def _binary(d: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _varint(d, pos)
    if pos + n > len(d):
        raise ValueError("footer field runs past its end")
    return d[pos:pos + n], pos + n


def _list_header(d: bytes, pos: int) -> tuple[int, int, int]:
    """A list (or set) header at ``d[pos:]``: ``(size, element type, position after)``;
    a size larger than what is left cannot be (every element takes at least a byte)."""
    if pos >= len(d):
        raise ValueError("footer ends early")
    head = d[pos]
    pos += 1
    size = head >> 4
    if size == 15:
        size, pos = _varint(d, pos)
    if size > len(d) - pos:
        raise ValueError("footer list longer than the footer")
    return size, head & 0x0F, pos


def _field(d: bytes, pos: int, last: int) -> tuple[int, int, int]:
    """A struct field header at ``d[pos:]``: ``(field id, type, position after)``; type
    :data:`_STOP` ends the struct."""
    if pos >= len(d):
        raise ValueError("footer ends early")
    head = d[pos]
    pos += 1
    ftype = head & 0x0F
    if ftype == _STOP:
        return last, _STOP, pos
    if head >> 4:
        return last + (head >> 4), ftype, pos
    z, pos = _varint(d, pos)
    return (z >> 1) ^ -(z & 1), ftype, pos


def _skip(d: bytes, pos: int, ftype: int) -> int:
    """The position after one value of type ``ftype`` (a struct field's value) at
    ``d[pos:]``. Iterative: containers are frames on an explicit stack of at most
    :data:`_MAX_DEPTH`, so no input can exhaust Python's stack; every position is
    checked against the end, so none can read past it.

    This is the hot path of reading a version (a segment's schema and row groups come
    before its key-value metadata), so the scalar fields of a struct, nearly all of a
    footer, are skipped in one tight loop; a read past the end surfaces as the
    ``IndexError`` of indexing ``d`` and becomes the ``ValueError`` every caller expects.
    """
    try:
        return _skip_value(d, pos, ftype)
    except IndexError:
        raise ValueError("footer ends early") from None


def _skip_varint(d: bytes, pos: int) -> int:
    """The position after the varint at ``d[pos:]`` (at most 10 bytes)."""
    first = pos
    while d[pos] >= 0x80:
        pos += 1
        if pos - first >= 9:
            if d[pos] >= 0x80:
                raise ValueError("footer varint too long")
            break
    return pos + 1


def _skip_value(d: bytes, pos: int, ftype: int) -> int:
    end = len(d)
    stack: list[list[int]] = []  # [values left, element (or map key) type, frame kind / map value type]
    t, in_collection = ftype, False
    while True:
        if t == _BINARY:
            n, pos = _varint(d, pos)
            pos += n
        elif t == _I32 or t == _I64 or t == _I16:
            pos = _skip_varint(d, pos)
        elif t == _TRUE or t == _FALSE:
            if in_collection:  # a struct field's boolean lives in its header; in a list it is a byte
                pos += 1
        elif t == _BYTE:
            pos += 1
        elif t == _DOUBLE:
            pos += 8
        elif t == _STRUCT:
            stack.append([0, 0, _IN_STRUCT])
        elif t == _LIST or t == _SET:
            size, etype, pos = _list_header(d, pos)
            stack.append([size, etype, _IN_LIST])
        elif t == _MAP:
            size, pos = _varint(d, pos)
            if size:
                if pos >= end or 2 * size > end - pos:
                    raise ValueError("footer map longer than the footer")
                kv = d[pos]
                pos += 1
                stack.append([2 * size, kv >> 4, kv & 0x0F])
        else:
            raise ValueError(f"footer has an unknown field type {t}")
        if pos > end:
            raise ValueError("footer field runs past its end")
        if len(stack) > _MAX_DEPTH:
            raise ValueError("footer nested too deeply")
        while True:  # the next value to skip: the innermost open container's next one
            if not stack:
                return pos
            top = stack[-1]
            kind = top[2]
            if kind == _IN_STRUCT:
                # the struct's fields up to the first that is not a scalar, in one loop
                while True:
                    head = d[pos]
                    pos += 1
                    t = head & 0x0F
                    if not head & 0xF0 and t != _STOP:
                        pos = _skip_varint(d, pos)  # a long-form field id (zigzag varint)
                    if t == _I32 or t == _I64 or t == _I16:
                        pos = _skip_varint(d, pos)
                    elif t == _BINARY:
                        b = d[pos]
                        if b < 0x80:
                            pos += 1 + b
                        else:
                            n, pos = _varint(d, pos)
                            pos += n
                        if pos > end:
                            raise ValueError("footer field runs past its end")
                    elif t != _TRUE and t != _FALSE:
                        break
                if t == _STOP:
                    stack.pop()
                    continue
                in_collection = False
                break
            if top[0] == 0:
                stack.pop()
                continue
            top[0] -= 1
            t = top[1] if kind == _IN_LIST or top[0] % 2 else kind
            in_collection = True
            break


def footer_of(data: bytes) -> bytes:
    """The Thrift-encoded footer of the Parquet file ``data``."""
    if len(data) < 12 or data[:4] != FOOTER_MAGIC or data[-4:] != FOOTER_MAGIC:
        raise ValueError("not a Parquet file")
    length = int.from_bytes(data[-8:-4], "little")
    if not 0 < length <= min(MAX_FOOTER_BYTES, len(data) - 12):
        raise ValueError("bad Parquet footer length")
    return data[-8 - length:-8]


#: Footers parsed lately, by the BLAKE3 of the whole file: the same bytes always give the
#: same metadata, and a process reads the same segments again and again (every resolve,
#: show, promote of a version reads its segment). Hashing takes ~10 us, parsing ~1 ms.
_PARSED: OrderedDict[bytes, dict[str, str]] = OrderedDict()
_PARSED_MAX = 4096
_PARSED_LOCK = threading.Lock()


def key_value_metadata(data: bytes) -> dict[str, str]:
    """The footer's key-value metadata of the Parquet file ``data`` (``ValueError`` if
    it is not a well-formed Parquet file); a new dict on every call."""
    digest = blake3(data).digest()
    with _PARSED_LOCK:
        known = _PARSED.get(digest)
        if known is not None:
            _PARSED.move_to_end(digest)
            return dict(known)
    parsed = _parse_key_value_metadata(data)
    with _PARSED_LOCK:
        _PARSED[digest] = parsed
        if len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return dict(parsed)


def _parse_key_value_metadata(data: bytes) -> dict[str, str]:
    d = footer_of(data)
    out: dict[str, str] = {}
    pos = fid = 0
    while True:
        fid, ftype, pos = _field(d, pos, fid)
        if ftype == _STOP:
            return out
        if fid != 5 or ftype != _LIST:
            pos = _skip(d, pos, ftype)
            continue
        size, etype, pos = _list_header(d, pos)
        if etype != _STRUCT:
            raise ValueError("footer key-value metadata is not a list of structs")
        for _ in range(size):
            key: bytes | None = None
            value: bytes | None = None
            kid = 0
            while True:
                kid, ktype, pos = _field(d, pos, kid)
                if ktype == _STOP:
                    break
                if kid in (1, 2) and ktype == _BINARY:
                    if kid == 1:
                        key, pos = _binary(d, pos)
                    else:
                        value, pos = _binary(d, pos)
                else:
                    pos = _skip(d, pos, ktype)
            if key is not None and value is not None:
                try:
                    out[key.decode("utf-8")] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError("footer metadata is not UTF-8") from None
