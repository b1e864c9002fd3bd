"""The pyarrow-free Parquet footer reader (casreg/ledger/footer.py): it agrees with
pyarrow on every file pyarrow writes, and hostile bytes only ever give ``ValueError``."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casreg.ledger.footer import MAX_FOOTER_BYTES, key_value_metadata

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


def parquet(metadata: dict[str, str], rows: int = 1) -> bytes:
    table = pa.table({"a": list(range(rows)), "s": [f"row {i}" for i in range(rows)],
                      "m": [[("k", 1.5)]] * rows}, schema=pa.schema([
                          ("a", pa.int64()), ("s", pa.string()), ("m", pa.map_(pa.string(), pa.float64()))]))
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buf, compression="zstd")
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(texts, texts, max_size=8), st.integers(1, 50))
def test_agrees_with_pyarrow(metadata: dict[str, str], rows: int) -> None:
    data = parquet(metadata, rows)
    want = {k.decode(): v.decode() for k, v in (pq.ParquetFile(io.BytesIO(data)).metadata.metadata or {}).items()}
    assert key_value_metadata(data) == want
    assert all(key_value_metadata(data)[k] == v for k, v in metadata.items())


def test_no_metadata() -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [1]}).replace_schema_metadata(None), buf, store_schema=False)
    assert key_value_metadata(buf.getvalue()) == {}


REAL = parquet({"casreg.record": '{"x": 1}', "other": "y" * 300}, rows=3)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_footers_give_value_error_only(data: st.DataObject) -> None:
    """Flip, drop or insert bytes anywhere in the footer: the reader returns something or
    raises ValueError; never another exception, never a hang."""
    blob = bytearray(REAL)
    length = int.from_bytes(blob[-8:-4], "little")
    start = len(blob) - 8 - length
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(start, len(blob) - 1))
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            blob[at] ^= data.draw(st.integers(1, 255))
        elif op == "drop":
            del blob[at]
        else:
            blob.insert(at, data.draw(st.integers(0, 255)))
    try:
        out = key_value_metadata(bytes(blob))
    except ValueError:
        return
    assert isinstance(out, dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_footer_bytes(footer: bytes) -> None:
    blob = b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1"
    try:
        key_value_metadata(blob)
    except ValueError:
        pass


@pytest.mark.parametrize("blob, message", [
    (b"", "not a Parquet file"),
    (b"PAR1PAR1", "not a Parquet file"),
    (b"PAR1" + b"\0" * 8 + (0).to_bytes(4, "little") + b"PAR1", "bad Parquet footer length"),
    (b"PAR1" + b"\0" * 8 + (100).to_bytes(4, "little") + b"PAR1", "bad Parquet footer length"),
    (REAL[:len(REAL) // 2], "not a Parquet file"),  # truncated
    (REAL[:4] + REAL[-8:], "bad Parquet footer length"),  # the footer claims more than there is
])
def test_malformed_files(blob: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        key_value_metadata(blob)


def _footer(body: bytes) -> bytes:
    return b"PAR1" + body + len(body).to_bytes(4, "little") + b"PAR1"


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    """A struct in a struct in ... (field 1, type struct = 0x1C): bounded depth."""
    body = b"\x1c" * 100_000 + b"\x00" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        key_value_metadata(_footer(body))


def test_a_huge_list_claim_is_refused_at_once() -> None:
    """Field 5, a list of 2**62 structs: refused by its length, not by trying."""
    body = b"\x59" + b"\xfc" + b"\xff" * 8 + b"\x3f"
    with pytest.raises(ValueError, match="longer than the footer|too long"):
        key_value_metadata(_footer(body))


def test_footer_size_is_bounded() -> None:
    body = b"\x00" * (MAX_FOOTER_BYTES + 1)
    with pytest.raises(ValueError, match="bad Parquet footer length"):
        key_value_metadata(_footer(body))


def test_metadata_that_is_not_utf8() -> None:
    # field 5 (delta 5, list=9): one struct (size 1, type 12) {1: "k", 2: b"\xff"} stop, stop
    body = b"\x59" + b"\x1c" + b"\x18\x01k" + b"\x18\x01\xff" + b"\x00" + b"\x00"
    with pytest.raises(ValueError, match="not UTF-8"):
        key_value_metadata(_footer(body))
    assert key_value_metadata(_footer(b"\x59\x1c\x18\x01k\x18\x01v\x00\x00")) == {"k": "v"}
