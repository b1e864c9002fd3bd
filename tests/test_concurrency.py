"""Real processes racing on one registry: version numbering and alias compare-and-swap,
on a local directory and on S3 (SeaweedFS, see conftest.s3_server). Workers are spawned
(fresh interpreters) and started together with a multiprocessing Barrier; an S3 worker
finds the endpoint and credentials in the environment it inherits (set by ``s3_env``)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import casreg
from casreg.errors import ConflictError
from casreg.ledger.pointers import move_alias, read_pointer

N = 8
ROUNDS = 3
SPAWN = multiprocessing.get_context("spawn")
TIMEOUT = 120


@pytest.fixture
def url(shared_url: str) -> str:
    return shared_url


def content(i: int) -> bytes:
    """Different small bytes per process (and not a prefix of one another)."""
    return (f"model weights of process {i}\n".encode() * (50 + 7 * i)) + os.urandom(64)


def _run(
    target: Callable[..., None], args_for: Callable[[int], tuple[Any, ...]], per_proc: int
) -> list[tuple[Any, ...]]:
    """Start N spawned workers sharing a Barrier and a Queue; collect per_proc results each."""
    barrier = SPAWN.Barrier(N)
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(N)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=TIMEOUT) for _ in range(N * per_proc)]
        for p in procs:
            p.join(timeout=TIMEOUT)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return results


# -- 8 processes pushing versions of one model --------------------------------------------------
def _push_worker(url: str, src: str, i: int, barrier: Any, out: Any) -> None:
    os.environ["CASREG_USER"] = f"proc-{i}"
    reg = casreg.Registry(url, threads=1)
    barrier.wait(timeout=TIMEOUT)
    try:
        v = reg.push("racer", src, description=f"from process {i}")
        out.put((i, v.version, v.digest, None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        out.put((i, None, None, repr(err)))


def test_concurrent_pushes_get_versions_one_to_n(tmp_path: Path, url: str) -> None:
    srcs = []
    for i in range(N):
        src = tmp_path / f"src{i}" / "model.bin"
        src.parent.mkdir()
        src.write_bytes(content(i))
        srcs.append(src)

    results = _run(_push_worker, lambda i: (url, str(srcs[i]), i), 1)
    errors = [r for r in results if r[3] is not None]
    assert errors == []
    by_proc = {i: (version, digest) for i, version, digest, _ in results}
    assert sorted(v for v, _ in by_proc.values()) == list(range(1, N + 1))  # no gaps, no duplicates
    assert len({d for _, d in by_proc.values()}) == N

    reg = casreg.Registry(url)
    listed = reg.ls("racer")
    assert [v.version for v in listed] == list(range(1, N + 1))
    for i, (version, digest) in by_proc.items():
        assert listed[version - 1].digest == digest
        assert listed[version - 1].description == f"from process {i}"
        assert listed[version - 1].author == f"proc-{i}"
        dest = tmp_path / "out" / f"v{version}"
        result = reg.pull(f"racer:{version}", dest / "model.bin")
        assert result.version == version and result.digest == digest
        assert (dest / "model.bin").read_bytes() == srcs[i].read_bytes()
    rows = reg.sql("select version, digest from versions where name = 'racer' order by version")
    assert [(r["version"], r["digest"]) for r in rows] == sorted(by_proc.values())
    if "://" not in url:
        leftovers = [f for _, _, files in os.walk(url) for f in files if f.startswith(".tmp-")]
        assert leftovers == []


# -- 8 processes racing on one alias --------------------------------------------------------------
def _alias_worker(url: str, digests: dict[int, str], i: int, barrier: Any, out: Any) -> None:
    os.environ["CASREG_USER"] = f"proc-{i}"
    reg = casreg.Registry(url)
    for rnd in range(ROUNDS):
        target = (i + rnd) % N + 1  # in each round every process aims at a different version
        barrier.wait(timeout=TIMEOUT)
        seen = read_pointer(reg.store, "m", "prod")
        barrier.wait(timeout=TIMEOUT)  # everyone has read the same pointer before anyone moves
        seen_id = seen.event.event_id if seen else None
        try:
            ev = move_alias(reg.store, "m", "prod", (digests[target], target),
                            reason=f"round {rnd} by {i}", expected=seen)
            out.put(("strict", rnd, i, target, seen_id, "won", ev.event_id))
        except ConflictError as err:
            # retrying with the same stale pointer must fail again, however late it comes
            try:
                move_alias(reg.store, "m", "prod", (digests[target], target), expected=seen)
                out.put(("strict", rnd, i, target, seen_id, "error", "a stale retry succeeded"))
            except ConflictError:
                out.put(("strict", rnd, i, target, seen_id, "lost", str(err)))
        except BaseException as err:  # noqa: BLE001
            out.put(("strict", rnd, i, target, seen_id, "error", repr(err)))
    # a free-for-all: Registry.set_alias reads and swaps by itself, so several may win
    # one after another, but every win must be logged exactly once and in order
    barrier.wait(timeout=TIMEOUT)
    try:
        ev = reg.set_alias("m", "prod", i + 1, reason=f"free-for-all by {i}")
        out.put(("free", ROUNDS, i, i + 1, None, "won", ev.event_id))
    except ConflictError as err:
        out.put(("free", ROUNDS, i, i + 1, None, "lost", str(err)))
    except BaseException as err:  # noqa: BLE001
        out.put(("free", ROUNDS, i, i + 1, None, "error", repr(err)))


def test_racing_alias_moves_have_one_winner_and_match_the_ledger(tmp_path: Path, url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_USER", "setup")
    reg = casreg.Registry(url, threads=1)
    digests = {}
    for i in range(N):
        src = tmp_path / f"v{i}.bin"
        src.write_bytes(content(i))
        v = reg.push("m", src)
        digests[v.version] = v.digest
    assert sorted(digests) == list(range(1, N + 1))

    results = _run(_alias_worker, lambda i: (url, digests, i), ROUNDS + 1)
    assert [r for r in results if r[5] == "error"] == []

    winners: list[tuple[int, str]] = []  # (version, event id) of each successful move, in order
    previous: tuple[int, str] | None = None
    for rnd in range(ROUNDS):
        rows = [r for r in results if r[0] == "strict" and r[1] == rnd]
        assert sorted(r[2] for r in rows) == list(range(N))
        # all read the pointer the previous round's winner left
        assert {r[4] for r in rows} == {previous[1] if previous else None}
        won = [r for r in rows if r[5] == "won"]
        assert len(won) == 1, f"round {rnd}: {len(won)} winners"
        _, _, _, target, _, _, event_id = won[0]
        for r in rows:
            if r[5] == "lost":
                assert f"m@prod was moved to m:{target} by " in r[6], r[6]
                assert "nothing was changed" in r[6]
        previous = (target, event_id)
        winners.append(previous)

    free = [r for r in results if r[0] == "free"]
    assert len(free) == N
    free_won = {r[6]: r[3] for r in free if r[5] == "won"}
    assert len(free_won) >= 1
    for r in free:
        if r[5] == "lost":
            assert "m@prod was moved to m:" in r[6]

    events = reg.sql("select * from events where kind like 'alias%' order by time")
    assert len(events) == ROUNDS + len(free_won)  # every successful move, once
    assert len({e["event_id"] for e in events}) == len(events)
    assert [(e["to_version"], e["event_id"]) for e in events[:ROUNDS]] == winners
    assert {e["event_id"]: e["to_version"] for e in events[ROUNDS:]} == free_won
    for before, after in zip([None, *events], events):  # each move starts where the last ended
        assert after["kind"] == "alias.set" and after["name"] == "m" and after["alias"] == "prod"
        assert after["from_version"] == (before["to_version"] if before else None)
        assert after["from_digest"] == (before["to_digest"] if before else None)
        assert after["to_digest"] == digests[after["to_version"]]
    pointer = read_pointer(reg.store, "m", "prod")
    assert pointer is not None
    last = events[-1]
    assert (pointer.event.event_id, pointer.version, pointer.digest) == (
        last["event_id"], last["to_version"], last["to_digest"])
    assert reg.resolve("m@prod").version == last["to_version"]
    aliases = reg.sql("select name, alias, version, digest from aliases")
    assert aliases == [{"name": "m", "alias": "prod", "version": last["to_version"], "digest": last["to_digest"]}]
