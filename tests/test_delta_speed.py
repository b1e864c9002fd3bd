"""The push and pull shortcuts of delta coding (issue 14): the plain payload coded only as
far as the delta decision needs, and base chunks decoded once while kept."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from casreg import Registry
from casreg.content.codec import encode, encode_unless
from casreg.content.fetch import DecodedBases
from casreg.content.manifest import ChunkRef
from casreg.errors import IntegrityError


def _floats(seed: int, size: int, width: int) -> bytes:
    """Float tensor bytes like weights: bf16 (the top halves of float32) or float32."""
    x = np.random.default_rng(seed).normal(0, 0.02, size // width + 1).astype("<f4")
    if width == 2:
        return (x.view("<u4") >> 16).astype("<u2").tobytes()[:size]
    return x.tobytes()[:size]


@pytest.mark.parametrize("width,head", [(2, 0), (2, 1), (4, 0), (4, 3)])
def test_encode_unless_stops_only_below_the_payload_it_would_give(width: int, head: int) -> None:
    raw = _floats(width + head, 300_001, width)
    codec, full = encode(raw, 3, (width, head))
    assert encode_unless(raw, 3, (width, head), None) == (codec, full)
    stopped = 0
    for t in range(0, len(raw) + 2, 9_973):
        asked: list[int] = []

        def enough(n: int, t: int = t, asked: list[int] = asked) -> bool:
            asked.append(n)
            return n >= t
        got = encode_unless(raw, 3, (width, head), enough)
        if got is None:  # stopped: the payload it would have given is at least what was accepted
            stopped += 1
            assert len(full) >= asked[-1] >= t
        else:
            assert got == (codec, full)
        assert all(n <= len(full) for n in asked)  # every size asked about is a lower bound
    assert stopped  # the mantissa planes alone settle some thresholds


def _chunks(tmp_path: Path) -> tuple[Registry, list[ChunkRef]]:
    reg = Registry(tmp_path / "reg")
    src = tmp_path / "data.bin"
    src.write_bytes(np.random.default_rng(7).integers(0, 256, 6 << 20, dtype=np.uint8).tobytes())
    reg.push("m", src)
    refs = list(reg.manifest("m:1").files[0].chunks)
    assert len(refs) >= 3
    return reg, refs


def test_decoded_bases_reads_each_base_once_while_kept(tmp_path: Path) -> None:
    reg, refs = _chunks(tmp_path)
    kept = DecodedBases(reg.store)
    for _ in range(3):
        for r in refs:
            assert len(kept.get(r, cache=None)) == r.raw_size
    assert kept.reads == len(refs)
    small = DecodedBases(reg.store, limit=1)  # keeps only the last base
    for r in refs + refs:
        small.get(r, cache=None)
    small.get(refs[-1], cache=None)
    assert small.reads == 2 * len(refs) and len(small.kept) == 1


def test_decoded_bases_one_read_for_threads_that_want_the_same_base(tmp_path: Path) -> None:
    reg, refs = _chunks(tmp_path)
    kept = DecodedBases(reg.store)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(kept.get(refs[0], cache=None))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kept.reads == 1 and len(got) == 6 and len(set(got)) == 1


def test_decoded_bases_never_keeps_a_damaged_base(tmp_path: Path) -> None:
    reg, refs = _chunks(tmp_path)
    kept = DecodedBases(reg.store)
    wrong = replace(refs[0], digest=refs[1].digest)  # another chunk's digest at this place
    for _ in range(2):
        with pytest.raises(IntegrityError):
            kept.get(wrong, cache=None)
    assert kept.reads == 0 and not kept.kept and not kept.loading
    assert kept.get(refs[1], cache=None)  # the genuine chunk of that digest still reads
