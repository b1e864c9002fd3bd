"""What the DELTA codec (docs/FORMAT.md §4.2) would save on a sequence of model versions.

    python -m benchmarks.delta WORKLOAD [--parents lineage|previous] [--chain bases|plain|unbounded]
                                        [--out FILE.json]

WORKLOAD is the peers workload (``../shared/bench/peers/make_workload.py``): versions
``01_base`` … ``10_real``, pushed in name order as versions of one model. Every file is
cut with the registry's default chunking; a chunk already seen costs nothing (dedup); a
new chunk is coded as a casreg/3 push codes it (zstd, or PLANES where the safetensors
header says float data) and, when its version has a parent holding a file at the same
path, also as a delta against the parent's bytes at the same offsets (K = 1: against the
parent's chunks where those are stored plain, else against the bases of the parent's
delta chunk there; casreg.content.delta). The delta is kept only when
:func:`casreg.content.delta.worth_it`. Every delta kept is decoded again from the bases'
bytes and checked against its chunk digest.

``--parents lineage``: each version's parent is what it was derived from (ft-head,
ft-full, ckpt-1 and shifted from base; ckpt-N from ckpt-N-1; real none), as
``push --parent`` would name it. ``previous``: the previous version of the model (what a
push with no ``--parent`` would imply).

``--chain``: where a parent chunk is itself a delta, ``bases`` (the default, K = 1) codes
against that delta's own bases (the grandparent's bytes at the same offsets), ``plain``
stores the new chunk plain, ``unbounded`` codes against the parent's bytes anyway (chains
grow with every version: not allowed by the format, measured for comparison; the
deepest chain is reported).

This is a payload-level measurement (what packs would hold; indexes add 52 bytes per new
chunk, manifests about 100 per chunk reference): the registry does not write codec 3 yet.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from casreg.content.chunking import DEFAULT_CHUNK_PARAMS, ChunkParams, iter_chunks
from casreg.content.codec import decode, encode
from casreg.content.delta import MAX_PIECES, Piece, decode_delta_into, encode_delta, worth_it
from casreg.content.dtypes import float_layout
from casreg.errors import IntegrityError

LINEAGE = {"02_finetune-head": "01_base", "03_finetune-full": "01_base", "04_ckpt-1": "01_base",
           "05_ckpt-2": "04_ckpt-1", "06_ckpt-3": "05_ckpt-2", "07_ckpt-4": "06_ckpt-3", "08_ckpt-5": "07_ckpt-4",
           "09_shifted": "01_base"}


@dataclass(slots=True)
class Seg:
    """File bytes ``[start, start + length)`` are bytes ``[off, off + length)`` of the plain
    chunk ``digest``."""

    start: int
    length: int
    digest: bytes
    off: int
    via_delta: bool = False  # the parent's chunk here is a delta: these are its bases


@dataclass(slots=True)
class Stats:
    raw: int = 0
    new_raw: int = 0
    plain: int = 0  # stored bytes, every new chunk plain
    stored: int = 0  # stored bytes, delta where worth it
    deltas: int = 0
    delta_raw: int = 0
    base_bytes: int = 0  # raw bytes of the distinct base chunks deltas of this version name
    new_chunks: int = 0
    seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", type=Path)
    ap.add_argument("--parents", choices=("lineage", "previous"), default="lineage")
    ap.add_argument("--chain", choices=("bases", "plain", "unbounded"), default="bases")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    params = DEFAULT_CHUNK_PARAMS
    versions = sorted(p.name for p in args.workload.iterdir() if p.is_dir())
    # digest -> where its raw bytes are (path, offset, size) and whether it is stored as a delta
    where: dict[bytes, tuple[str, int, int]] = {}
    delta_bases: dict[bytes, list[Seg]] = {}  # digest of a delta chunk -> its pieces as (chunk-relative) segs
    plain_maps: dict[tuple[str, str], list[Seg]] = {}  # (version, path) -> the file as plain-chunk segments
    maps: dict[str, mmap.mmap] = {}
    results: dict[str, dict[str, object]] = {}

    def raw_of(digest: bytes) -> memoryview:
        path, off, size = where[digest]
        return memoryview(maps[path])[off:off + size]

    def source(digest: bytes) -> tuple[memoryview, bool]:
        if digest not in where:
            raise IntegrityError(f"base blake3:{digest.hex()} is missing")
        raw = raw_of(digest)
        if blake3(raw).digest() != digest:
            raise IntegrityError(f"base blake3:{digest.hex()} is damaged")
        return raw, digest in delta_bases and args.chain != "unbounded"

    def decode_inner(codec: int, payload: memoryview, out: memoryview) -> None:
        got = decode(codec, payload, len(out))
        if len(got) != len(out):
            raise IntegrityError("residual has the wrong size")
        out[:] = got

    depth: dict[bytes, int] = {}  # chain depth of each delta chunk (--chain unbounded)
    previous: str | None = None
    for name in versions:
        parent = LINEAGE.get(name) if args.parents == "lineage" else previous
        st = Stats()
        t0 = time.perf_counter()
        vdir = args.workload / name
        for f in sorted(p for p in vdir.rglob("*") if p.is_file()):
            rel = f.relative_to(vdir).as_posix()
            size = f.stat().st_size
            st.raw += size
            fd = os.open(f, os.O_RDONLY)
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if size else None
            os.close(fd)
            if mm is None:
                plain_maps[(name, rel)] = []
                continue
            maps[str(f)] = mm
            layout = float_layout(f, size)
            pmap = plain_maps.get((parent, rel), []) if parent else []
            pstarts = [s.start for s in pmap]
            mine: list[Seg] = []
            bases_seen: set[bytes] = set()
            for off, length in _cuts(f, params):
                raw = memoryview(mm)[off:off + length]
                digest = blake3(raw).digest()
                if digest not in where:
                    st.new_raw += length
                    st.new_chunks += 1
                    hint = layout.hint(off, length) if layout is not None else None
                    codec, plain = encode(raw, 3, hint)
                    st.plain += len(plain)
                    best = len(plain)
                    pieces = _pieces(pmap, pstarts, off, length, args.chain == "plain")
                    chosen = False
                    if pieces:
                        base = [raw_of(p.digest)[p.offset:p.offset + p.length] for p in pieces]
                        code = lambda r, h=hint: encode(r, 3, h, residual=True)  # noqa: E731
                        payload = encode_delta(raw, pieces, base, code, hint)
                        if worth_it(len(payload), len(plain)):
                            out = memoryview(bytearray(length))
                            decode_delta_into(payload, out, digest, source, decode_inner)
                            best = len(payload)
                            chosen = True
                            st.deltas += 1
                            st.delta_raw += length
                            segs, pos = [], off
                            for p in pieces:
                                segs.append(Seg(pos, p.length, p.digest, p.offset))
                                pos += p.length
                                if p.digest not in bases_seen:
                                    bases_seen.add(p.digest)
                                    st.base_bytes += where[p.digest][2]
                            delta_bases[digest] = segs
                            depth[digest] = 1 + max(depth.get(p.digest, 0) for p in pieces)
                    st.stored += best
                    where[digest] = (str(f), off, length)
                    if not chosen:
                        mine.append(Seg(off, length, digest, 0))
                        continue
                if digest in delta_bases and args.chain != "unbounded":  # covered by its bases (same offsets)
                    first = delta_bases[digest][0].start
                    for s in delta_bases[digest]:
                        mine.append(Seg(off + s.start - first, s.length, s.digest, s.off, True))
                else:
                    mine.append(Seg(off, length, digest, 0))
            plain_maps[(name, rel)] = mine
        st.seconds = time.perf_counter() - t0
        results[name] = {"parent": parent, **{k: getattr(st, k) for k in Stats.__slots__ if k != "extra"},
                         "max_depth": max(depth.values(), default=0)}
        print(f"{name:18} parent={str(parent):18} raw={st.raw / 1e6:8.1f} new={st.new_raw / 1e6:7.1f} "
              f"plain={st.plain / 1e6:7.2f} delta={st.stored / 1e6:7.2f} MB  deltas={st.deltas} "
              f"({st.delta_raw / 1e6:.1f} MB raw) bases={st.base_bytes / 1e6:.1f} MB "
              f"depth<={max(depth.values(), default=0)} "
              f"{st.seconds:.1f}s", flush=True)
        previous = name
    tot_plain = sum(int(r["plain"]) for r in results.values())  # type: ignore[call-overload]
    tot = sum(int(r["stored"]) for r in results.values())  # type: ignore[call-overload]
    print(f"total plain {tot_plain / 1e9:.3f} GB, with delta {tot / 1e9:.3f} GB ({tot / tot_plain:.3f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def _cuts(path: Path, params: ChunkParams) -> list[tuple[int, int]]:
    """(offset, length) of the chunks a push cuts ``path`` into."""
    out, off = [], 0
    with open(path, "rb") as fh:
        for chunk in iter_chunks(fh, params):
            out.append((off, len(chunk)))
            off += len(chunk)
    return out


def _pieces(pmap: list[Seg], starts: list[int], off: int, length: int, plain_only: bool) -> list[Piece]:
    """The pieces of plain parent chunks covering file bytes ``[off, off + length)``
    contiguously from ``off`` (the rest of the base is zeros), merged where one chunk's
    bytes continue; none if the parent has nothing at ``off`` (or, ``plain_only``, if a
    parent chunk there is a delta)."""
    import bisect

    i = bisect.bisect_right(starts, off) - 1
    if i < 0:
        return []
    out: list[Piece] = []
    pos, end = off, off + length
    while i < len(pmap) and pos < end:
        s = pmap[i]
        if not s.start <= pos < s.start + s.length:
            break  # a gap: the rest of the base is zeros
        if plain_only and s.via_delta:
            return []
        skip = pos - s.start
        n = min(s.start + s.length - pos, end - pos)
        if out and out[-1].digest == s.digest and out[-1].offset + out[-1].length == s.off + skip:
            out[-1] = Piece(s.digest, out[-1].offset, out[-1].length + n)
        else:
            if len(out) == MAX_PIECES:
                break
            out.append(Piece(s.digest, s.off + skip, n))
        pos += n
        i += 1
    return out


if __name__ == "__main__":
    main()
