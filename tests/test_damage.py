"""The damage suite (issue 11): every kind of object a registry holds is flipped, truncated,
emptied, deleted and replaced by well-formed but wrong content, on a local directory and on
S3; then every command runs against the damaged registry.

Each command must either work exactly as on the undamaged registry (same exit code, same
output; pulled and ``casreg://`` bytes equal to what was pushed), or fail with the
documented exit code for damage (6) and exactly one ``casreg: error:`` line on stderr that
names the damaged key; never a traceback, never wrong bytes, never a silently different
listing or log. A full ``casreg verify`` must fail naming the damaged key for every
mutation except those listed in :data:`HARMLESS` (with the reason each one is harmless).

How it runs: the registry is built once per backend through the library (every kind of
object: file and directory versions, packs, indexes, version and event segments, a
compacted ledger and its HEAD, pointers, a policy, a hooks config, and a second registry of
format 1 with its ``refs/`` copies). Its objects are snapshotted; each case writes the
snapshot, with one object mutated, into a fresh store of the backend under test and runs the
commands in-process (``casreg_cli.main.run`` with captured stdout and stderr; an exception
escaping it is the traceback this suite hunts). ``test_damage_subprocess`` runs a
representative subset through the real ``casreg`` executable. Every mutation runs on a local
directory; S3 runs the representative ones (:data:`S3_MUTATIONS`).

Exceptions are explicit: :data:`HARMLESS` (verify may pass), :data:`COMMANDS_MAY_DIFFER`
(commands cannot notice; never a traceback still) and :data:`OTHER_BRANCH` (fixed on another
branch; strict xfail).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.config import init_config
from casreg.governance.hooks import write_hooks
from casreg.keys import (
    CONFIG_KEY,
    HEAD_KEY,
    HOOKS_KEY,
    index_key,
    manifest_key,
    pack_key,
    pointer_key,
    policy_key,
    version_copy_key,
    version_segment_key,
)
from casreg.ledger.head import read_head
from casreg.ledger.schema import parquet_bytes
from casreg.ledger.segments import events_table
from casreg.storage import ObjectStore
from casreg_cli.main import run as cli_run

SCRIPT = Path(sys.executable).with_name("casreg")

PUSHER, REVIEWER, LATE_REVIEWER = "alice@example.test", "rev@example.test", "rev2@example.test"

POLICY = """\
[gates.production]
rules = ["metrics.auc >= 0.9"]
approvals = 1
"""

HOOKS = """\
[[hooks]]
name = "archived"
command = ["true"]
events = ["archive"]
"""


# -- building the registries -------------------------------------------------------------------
@dataclass
class Built:
    """A registry's objects (key -> bytes) and the keys of its representative objects."""

    objects: dict[str, bytes]
    keys: dict[str, str]
    content: dict[str, bytes]  # what was pushed: "m:3" -> file bytes, "m:2/<path>" -> file bytes


def _payload(tag: str, size: int = 3000) -> bytes:
    import hashlib

    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{tag}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {k: store.read(k) for k in sorted(store.list(""))}


def _build_main(store: ObjectStore, work: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """Format 2: file and dir versions, aliases, a policy with approvals, promotions, an
    archive, a rollback, a hooks config, a compaction, and after it an uncovered version
    and uncovered events."""
    reg = Registry(store.url)
    content: dict[str, bytes] = {}

    def push_file(tag: str, auc: float) -> int:
        data = _payload(tag)
        f = work / f"{tag}.src" / "model.bin"
        f.parent.mkdir()
        f.write_bytes(data)
        v = reg.push("m", str(f), metrics={"auc": auc}, description=f"version {tag}")
        content[f"m:{v.version}"] = data
        return v.version

    monkeypatch.setenv("CASREG_USER", PUSHER)
    assert push_file("one", 0.91) == 1
    d = work / "dir.src"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes(b"a text file\n")
    (d / "sub" / "b.bin").write_bytes(_payload("two", 5000))
    assert reg.push("m", str(d), metrics={"auc": 0.93}).version == 2
    content["m:2/a.txt"], content["m:2/sub/b.bin"] = b"a text file\n", _payload("two", 5000)
    assert push_file("three", 0.95) == 3
    assert push_file("four", 0.5) == 4
    reg.set_alias("m", "champion", 1, reason="first")
    reg.set_policy(POLICY, reason="gate production")
    for n in (1, 2):
        monkeypatch.setenv("CASREG_USER", REVIEWER)
        reg.approve("m", n, stage="production", comment="ok")
        monkeypatch.setenv("CASREG_USER", PUSHER)
        reg.promote("m", n, "production", reason=f"v{n}")
    reg.rollback("m", "production", reason="back")  # archives m:2
    write_hooks(store, HOOKS)
    reg.compact(full=True)
    # after the compaction: an uncovered version, an alias on it, an uncovered approval
    assert push_file("five", 0.96) == 5
    reg.set_alias("m", "canary", 5, reason="try")
    monkeypatch.setenv("CASREG_USER", REVIEWER)
    reg.approve("m", 3, stage="production", comment="later")
    monkeypatch.setenv("CASREG_USER", PUSHER)

    head = read_head(store)
    assert head is not None and head.covered == {"m": 4}
    events = events_table(store, with_segment=True).to_pylist()
    covered = set(_compacted_segments(store))

    def event(kind: str, pred: Callable[[dict], bool]) -> str:
        keys = [e["segment"] for e in events if e["kind"] == kind and pred(e)]
        assert len(keys) == 1, (kind, keys)
        return str(keys[0])

    m3 = reg.manifest("m:3")
    pack_id = m3.entries[0].chunks[0].pack
    keys = {
        "config": CONFIG_KEY,
        "manifest-file": manifest_key(reg.resolve("m:3").digest),
        "manifest-dir": manifest_key(reg.resolve("m:2").digest),
        "pack": pack_key(pack_id),
        "index": index_key(pack_id),
        "segment-covered": version_segment_key("m", 3),
        "segment-uncovered": version_segment_key("m", 5),
        "event-covered": event("promote", lambda e: e["to_version"] == 2),
        "event-uncovered": event("approve", lambda e: e["to_version"] == 3),
        "event-registry": event("policy.set", lambda e: True),
        "compacted-versions": head.versions[0].key,
        "compacted-events": head.events[0].key,
        "head": HEAD_KEY,
        "pointer": pointer_key("m", "production"),
        "policy": policy_key(1),
        "hooks": HOOKS_KEY,
    }
    assert keys["event-covered"] in covered and keys["event-registry"] in covered
    assert keys["event-uncovered"] not in covered
    return Built(_snapshot(store), keys, content)


def _compacted_segments(store: ObjectStore) -> list[str]:
    from casreg.ledger.head import read_compacted_events

    head = read_head(store)
    assert head is not None
    return [str(s) for s in read_compacted_events(store, head).column("segment").to_pylist()]


def _build_legacy(store: ObjectStore, work: Path, monkeypatch: pytest.MonkeyPatch) -> Built:
    """Format 1 (``refs/`` copies, segments without a footer record): the same versions and
    aliases as the main registry, without policy, hooks or compaction."""
    init_config(store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
    reg = Registry(store.url)
    monkeypatch.setenv("CASREG_USER", PUSHER)
    content: dict[str, bytes] = {}
    for n, tag in enumerate(("one", "two", "three", "four", "five"), start=1):
        src = work / f"legacy-{tag}" / "model.bin"
        src.parent.mkdir()
        src.write_bytes(_payload("legacy-" + tag))
        if n == 2:  # a directory version, as in the main registry
            (src.parent / "a.txt").write_bytes(b"a text file\n")
        v = reg.push("m", str(src.parent if n == 2 else src), metrics={"auc": 0.9 + n / 100})
        assert v.version == n
        content[f"m:{n}"] = _payload("legacy-" + tag)
    content["m:2/a.txt"], content["m:2/model.bin"] = b"a text file\n", content.pop("m:2")
    reg.set_alias("m", "production", 1)
    reg.set_alias("m", "canary", 5)
    keys = {"legacy-refs": version_copy_key("m", 3), "legacy-segment": version_segment_key("m", 3)}
    for k in keys.values():
        assert store.exists(k)
    return Built(_snapshot(store), keys, content)


_BUILT: dict[tuple[str, str], Built] = {}


@pytest.fixture
def built(backend: str, store_factory: Callable[[], ObjectStore], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Built]:
    """``built(which)``: the snapshot of the ``main`` or ``legacy`` registry, built once per
    backend (on that backend)."""

    def get(which: str) -> Built:
        if (backend, which) not in _BUILT:
            work = tmp_path / f"build-{which}"
            work.mkdir()
            with monkeypatch.context() as m:
                builder = _build_main if which == "main" else _build_legacy
                _BUILT[backend, which] = builder(store_factory(), work, m)
        return _BUILT[backend, which]

    return get


# -- mutations ---------------------------------------------------------------------------------
def _flip(at: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        i = at(len(data))
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    return mutate


MUTATIONS: dict[str, Callable[[bytes], bytes] | None] = {
    "flip-start": _flip(lambda n: 0),
    "flip-mid": _flip(lambda n: n // 2),
    "flip-end": _flip(lambda n: n - 1),
    "truncate": lambda b: b[:len(b) // 2],
    "empty": lambda b: b"",
    "delete": None,
}


def _wrong_parquet() -> bytes:
    import pyarrow as pa

    return parquet_bytes(pa.table({"x": pa.array([1], pa.int64())}))


def _json_with(field_name: str, value: object) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        doc = json.loads(data)
        doc[field_name] = value
        return json.dumps(doc).encode()
    return mutate


_DEEP_TOML = ("a = " + "[" * 50_000 + "]" * 50_000 + "\n").encode()

#: Well-formed but wrong replacements, per kind (name -> mutation).
WRONG: dict[str, dict[str, Callable[[bytes], bytes]]] = {
    "config": {"wrong-shape": lambda b: b'{"format": "casreg/2"}', "wrong-type": _json_with("chunking", [1, 2])},
    "segment-covered": {"wrong-columns": lambda b: _wrong_parquet()},
    "segment-uncovered": {"wrong-columns": lambda b: _wrong_parquet()},
    "event-covered": {"wrong-columns": lambda b: _wrong_parquet()},
    "event-uncovered": {"wrong-columns": lambda b: _wrong_parquet()},
    "event-registry": {"wrong-columns": lambda b: _wrong_parquet()},
    "compacted-versions": {"wrong-columns": lambda b: _wrong_parquet()},
    "compacted-events": {"wrong-columns": lambda b: _wrong_parquet()},
    "head": {"wrong-shape": lambda b: b'{"format": "casreg-ledger-head/1"}', "wrong-type": _json_with("covered", [])},
    "pointer": {"wrong-shape": lambda b: b'["m", "production"]', "wrong-type": _json_with("to_version", "3")},
    "policy": {"wrong-shape": lambda b: b"gates = 5\n", "deep": lambda b: _DEEP_TOML},
    "hooks": {"wrong-shape": lambda b: b"hooks = 5\n", "deep": lambda b: _DEEP_TOML},
    "legacy-refs": {"wrong-shape": lambda b: b'{"name": "m"}', "wrong-type": _json_with("version", "3"),
                    "wrong-digest": _json_with("digest", "blake3:" + "ab" * 32)},
    "legacy-segment": {"wrong-columns": lambda b: _wrong_parquet()},
}

def _oversized(limit: int) -> Callable[[bytes], bytes]:
    """The object grown one byte past the bound its readers read it to (trailing
    whitespace: still well-formed JSON or TOML, and still Parquet at the front)."""
    return lambda b: b + b" " * (limit + 1 - len(b))


WRONG["config"]["oversized"] = _oversized(64 << 10)
WRONG["hooks"]["oversized"] = _oversized(256 << 10)
WRONG["event-uncovered"]["oversized"] = _oversized(4 << 20)
WRONG["legacy-refs"]["oversized"] = _oversized(4 << 20)

KINDS = ["config", "manifest-file", "manifest-dir", "pack", "index", "segment-covered", "segment-uncovered",
         "event-covered", "event-uncovered", "event-registry", "compacted-versions", "compacted-events", "head",
         "pointer", "policy", "hooks", "legacy-refs", "legacy-segment"]


def _registry_of(kind: str) -> str:
    return "legacy" if kind.startswith("legacy-") else "main"


def _mutation(kind: str, name: str) -> Callable[[bytes], bytes] | None:
    return MUTATIONS[name] if name in MUTATIONS else WRONG[kind][name]


#: JSON and TOML objects: their first and last bytes are syntax (``{``, ``}``, ``[``, a
#: newline), so a flip there is a syntax error like a truncation; they get the middle flip.
TEXT_KINDS = {"config", "head", "pointer", "policy", "hooks", "legacy-refs"}
CASES = [(k, m) for k in KINDS for m in [*MUTATIONS, *WRONG.get(k, {})]
         if not (k in TEXT_KINDS and m in ("flip-start", "flip-end"))]

#: Mutations after which ``verify`` may pass, and why each is harmless.
HARMLESS: dict[tuple[str, str], str] = {
    ("index", "delete"): "an index object is a copy of its pack's trailer that only pushes read (to dedup); "
                         "reads and verify use the pack's own; verify warns that it is gone",
    ("head", "delete"): "HEAD is derived: without it every reader reads the segments (always correct) and "
                        "casreg compact rebuilds it; the compacted files are then unreferenced leftovers",
    ("legacy-refs", "delete"): "a refs/ copy is a cache of the segment's row (format 1): readers use the row "
                               "and write the copy back",
    ("event-uncovered", "delete"): "an uncovered approval event that no later record mentions cannot be told "
                                   "from one never written (no index of event segments exists but compaction)",
}

#: A flipped byte in a Parquet segment's footer metadata (the Thrift ``FileMetaData``:
#: statistics, encodings, ``created_by``) that leaves every value decoding equal to the record
#: the segment's checksummed footer record holds. Harmless to casreg (every reader and verify
#: compare the decoded row with that record), but not proven harmless to an engine that
#: trusts Parquet statistics: a documented gap (docs/FORMAT.md §6). The test asserts that the
#: flip lies in the footer.
FOOTER_FLIPS = {("segment-covered", "flip-mid"), ("segment-uncovered", "flip-mid"), ("legacy-segment", "flip-mid"),
                ("event-covered", "flip-mid"), ("event-uncovered", "flip-mid"), ("event-registry", "flip-mid")}
for _case in FOOTER_FLIPS:
    HARMLESS[_case] = "the flip lies in the Parquet footer metadata and every value still decodes equal to the " \
                      "segment's checksummed record"

#: Mutations after which commands may answer differently from the undamaged registry (still
#: never a traceback), and why nothing can notice at read time; verify must still name the key
#: unless the case is also in HARMLESS.
COMMANDS_MAY_DIFFER: dict[tuple[str, str], str] = {
    ("segment-uncovered", "delete"): "the newest version's segment is its commit: without it the push is undone "
                                     "for every reader (the alias and event naming it are what verify reports)",
    ("event-uncovered", "delete"): "an event no later record mentions is simply absent (see HARMLESS)",
    ("hooks", "empty"): "an empty hooks config is a valid one (no hooks); verify compares it with the digest the "
                        "latest hooks.set event recorded",
    ("hooks", "delete"): "no hooks config means no hooks; verify reports it against the latest hooks.set event",
}

#: Deletions whose key no reader can know (nothing lists it any more): the error must name
#: instead the object that proves something is missing.
NAMED_INSTEAD: dict[tuple[str, str], tuple[str, str]] = {
    ("event-registry", "delete"): (
        "policy/versions/",
        "the deleted policy.set event cannot be named, but the policy file it pinned is now newer "
        "than every pin, and every governed action and verify name that file (fail closed)"),
}

#: Cases whose fix belongs to another branch: (kind, mutation) -> reason; marked xfail(strict).
OTHER_BRANCH: dict[tuple[str, str], str] = {
}


def _in_parquet_footer(data: bytes, pos: int) -> bool:
    footer = int.from_bytes(data[-8:-4], "little")
    return len(data) - 8 - footer <= pos < len(data) - 8


#: On S3 each case runs the representative mutations only (one flip, a truncation, a deletion,
#: the first wrong-content replacement): the objects' bytes are the same as on a local
#: directory; what S3 adds is its read paths (ranged reads, listings, missing keys), which
#: these exercise for every kind. The full matrix runs on a local directory.
S3_MUTATIONS = ("flip-mid", "truncate", "delete")


def _params() -> Iterator[object]:
    for backend in ("local", "s3"):
        for kind, mut in CASES:
            if backend == "s3" and mut not in S3_MUTATIONS and mut != next(iter(WRONG.get(kind, {})), None):
                continue
            marks = []
            if (kind, mut) in OTHER_BRANCH:
                marks.append(pytest.mark.xfail(strict=True, reason=OTHER_BRANCH[kind, mut]))
            yield pytest.param(backend, kind, mut, id=f"{backend}-{kind}-{mut}", marks=marks)


# -- running commands --------------------------------------------------------------------------
@dataclass
class Ran:
    code: int
    out: str
    err: str
    crashed: bool = False


def cli(*args: str) -> Ran:
    """``casreg ARGS`` in this process: exit code, stdout, stderr; an exception escaping the
    CLI is a crash (what the real executable would print as a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    crashed = False
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli_run(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the bug this suite hunts
            crashed, code = True, -1
            err.write(traceback.format_exc())
    return Ran(code, out.getvalue(), err.getvalue(), crashed)


@dataclass
class Step:
    """One command of a case: how to run it and what the undamaged registry gives."""

    name: str
    run: Callable[[str, Path], Ran]  # (registry url, scratch dir) -> result
    compare_out: bool = True  # output must equal the undamaged run's (besides the exit code)


def _as(user: str, *args: str) -> Callable[[str, Path], Ran]:
    def go(url: str, scratch: Path) -> Ran:
        saved = os.environ.get("CASREG_USER")
        os.environ["CASREG_USER"] = user
        try:
            return cli(*args, "-r", url)
        finally:
            if saved is None:
                os.environ.pop("CASREG_USER", None)
            else:
                os.environ["CASREG_USER"] = saved
    return go


def _plain(*args: str) -> Callable[[str, Path], Ran]:
    return lambda url, scratch: cli(*args, "-r", url)


def _pull(ref: str, content: dict[str, bytes]) -> Callable[[str, Path], Ran]:
    """Pull, then compare every byte with what was pushed (the output: the file list)."""

    def go(url: str, scratch: Path) -> Ran:
        dest = scratch / f"pulled-{ref.replace(':', '-')}"
        r = cli("pull", ref, str(dest), "-r", url)
        if r.code == 0:
            if dest.is_file():
                got = {ref: dest.read_bytes()}
            else:
                got = {f"{ref}/{p.relative_to(dest).as_posix()}": p.read_bytes()
                       for p in sorted(dest.rglob("*")) if p.is_file()}
            want = {k: v for k, v in content.items() if k == ref or k.startswith(ref + "/")}
            r.out = "same bytes" if got == want else f"WRONG BYTES: {sorted(got)} vs {sorted(want)}"
        return r

    return go


def _fsspec_read(path: str, content: dict[str, bytes]) -> Callable[[str, Path], Ran]:
    """A ``casreg://`` read: the whole file and a seek + read in the middle."""

    def go(url: str, scratch: Path) -> Ran:
        import fsspec

        from casreg import CasregError

        err = io.StringIO()
        try:
            with redirect_stderr(err), fsspec.open(f"casreg://{path}", "rb", registry=url) as f:
                whole = f.read()
                f.seek(1000)
                part = f.read(100)
        except CasregError as exc:
            return Ran(exc.exit_code, "", err.getvalue() + f"casreg: error: {exc}\n")
        except Exception:  # noqa: BLE001
            return Ran(-1, "", err.getvalue() + traceback.format_exc(), crashed=True)
        want = content[path.split("/")[0]]
        ok = whole == want and part == want[1000:1100]
        return Ran(0, "same bytes" if ok else "WRONG BYTES", err.getvalue())

    return go


def _steps(content: dict[str, bytes]) -> list[Step]:
    return [
        Step("resolve m:3", _plain("resolve", "m:3")),
        Step("resolve m@production", _plain("resolve", "m@production")),
        Step("show m:3", _plain("show", "m:3")),
        Step("ls", _plain("ls")),
        Step("ls m", _plain("ls", "m")),
        Step("log m", _plain("log", "m")),
        Step("pull m:3", _pull("m:3", content)),
        Step("pull m:2", _pull("m:2", content)),
        Step("sql", _plain("sql", "select count(*) from versions")),
        Step("hooks show", _plain("hooks", "show")),
        Step("casreg://m:3", _fsspec_read("m:3/model.bin", content)),
        Step("verify m:3", _plain("verify", "m:3")),
        Step("approve m 5", _as(LATE_REVIEWER, "approve", "m", "5", "--stage", "production"), compare_out=False),
        Step("promote m 3", _as(PUSHER, "promote", "m", "3", "production"), compare_out=False),
        Step("promote m 4", _as(PUSHER, "promote", "m", "4", "production"), compare_out=False),
        Step("verify", _plain("verify"), compare_out=False),
    ]


def _materialise(store: ObjectStore, objects: dict[str, bytes]) -> None:
    from casreg.concurrency import map_concurrently

    map_concurrently(lambda kv: store.create(kv[0], kv[1]), list(objects.items()), threads=8)


def _normalise(text: str, url: str) -> str:
    return text.replace(url, "<registry>")


_BASELINE: dict[tuple[str, str], dict[str, Ran]] = {}


def _run_steps(store: ObjectStore, steps: list[Step], scratch: Path) -> dict[str, Ran]:
    out = {}
    for step in steps:
        sub = scratch / step.name.replace(" ", "_").replace("/", "_").replace(":", "_").replace("@", "_")
        sub.mkdir(parents=True)
        r = step.run(store.url, sub)
        r.out = _normalise(r.out, store.url)
        out[step.name] = r
    return out


def _judge(step: Step, got: Ran, want: Ran, key: str) -> str | None:
    """Why ``got`` is not acceptable, or ``None``. ``key``: what the error must name."""
    if got.crashed or "Traceback" in got.err:
        return f"traceback:\n{got.err[-1500:]}"
    if got.code == want.code and (not step.compare_out or got.out == want.out):
        return None
    if got.code == want.code:
        return f"exit {got.code} as undamaged, but different output:\n{got.out[:800]}\n--- vs ---\n{want.out[:800]}"
    if got.code != 6:
        return f"exit {got.code} (undamaged: {want.code}); stderr: {got.err.strip()[-500:]}"
    errors = [ln for ln in got.err.splitlines() if ln.startswith("casreg: error:")]
    if step.name.startswith("verify"):  # one line per problem, then the summary error
        return None if key in got.err else f"verify failed without naming {key}:\n{got.err[-800:]}"
    if len(errors) != 1:
        return f"exit 6 with {len(errors)} error lines:\n{got.err[-800:]}"
    if key not in errors[0]:
        return f"exit 6 without naming {key}: {errors[0][:400]}"
    return None


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, author: Callable[[str], None]) -> None:
    author(PUSHER)
    monkeypatch.setenv("CASREG_CACHE", "off")  # the registry's bytes, never a cached verified copy
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "0")  # nothing compacts behind the suite's back
    monkeypatch.delenv("CASREG_HOOKS", raising=False)
    monkeypatch.delenv("CASREG_REGISTRY", raising=False)


def _baseline(backend: str, which: str, b: Built, store_factory: Callable[[], ObjectStore],
              scratch: Path) -> dict[str, Ran]:
    if (backend, which) not in _BASELINE:
        store = store_factory()
        _materialise(store, b.objects)
        runs = _run_steps(store, _steps(b.content), scratch / f"baseline-{which}")
        for name, r in runs.items():  # the undamaged registry: every command works
            assert not r.crashed and r.code in (0, 8), (name, r)
        _BASELINE[backend, which] = runs
    return _BASELINE[backend, which]


@pytest.mark.parametrize(("backend", "kind", "mutation"), list(_params()))
def test_damage(kind: str, mutation: str, backend: str, built: Callable[[str], Built],
                store_factory: Callable[[], ObjectStore], tmp_path: Path) -> None:
    """One mutation of one object, every command (see the module docstring). The suite runs
    on a local directory and S3; memory:// shares their code paths above the store."""
    which = _registry_of(kind)
    b = built(which)
    baseline = _baseline(backend, which, b, store_factory, tmp_path)
    key = b.keys[kind]
    objects = dict(b.objects)
    mutate = _mutation(kind, mutation)
    if (kind, mutation) in FOOTER_FLIPS:
        assert _in_parquet_footer(objects[key], len(objects[key]) // 2)
    if mutate is None:
        del objects[key]
    else:
        objects[key] = mutate(objects[key])
    store = store_factory()
    _materialise(store, objects)
    runs = _run_steps(store, _steps(b.content), tmp_path / "case")
    problems = []
    may_differ = (kind, mutation) in COMMANDS_MAY_DIFFER
    for step in _steps(b.content):
        named = NAMED_INSTEAD.get((kind, mutation), (key, ""))[0]
        why = _judge(step, runs[step.name], baseline[step.name], named)
        if why is not None and may_differ and step.name != "verify" and not why.startswith("traceback"):
            why = None
        if step.name == "verify" and why is None and runs[step.name].code == 0 and (kind, mutation) not in HARMLESS:
            why = "verify passed (all good) on a damaged registry"
        if why is not None:
            problems.append(f"[{step.name}] {why}")
    assert not problems, f"{kind} {mutation} ({key}):\n" + "\n".join(problems)


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize(("kind", "mutation", "args"), [
    ("event-uncovered", "truncate", ("log", "m")),
    ("pointer", "truncate", ("resolve", "m@production")),
    ("segment-uncovered", "wrong-columns", ("sql", "select count(*) from versions")),
    ("legacy-refs", "wrong-digest", ("pull", "m:3")),
    ("compacted-events", "flip-mid", ("verify",)),
])
def test_damage_subprocess(kind: str, mutation: str, args: tuple[str, ...], backend: str,
                           built: Callable[[str], Built], store_factory: Callable[[], ObjectStore],
                           tmp_path: Path) -> None:
    """The real executable: exit 6, no traceback, the last line of stderr the one error
    line, naming the damaged key."""
    b = built(_registry_of(kind))
    key = b.keys[kind]
    objects = dict(b.objects)
    mutate = _mutation(kind, mutation)
    assert mutate is not None
    objects[key] = mutate(objects[key])
    store = store_factory()
    _materialise(store, objects)
    proc = subprocess.run([str(SCRIPT), *args, "-r", store.url], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 6, proc.stderr
    assert key in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("casreg: error:"), proc.stderr
    if args[0] != "verify":
        assert key in lines[-1] and len([ln for ln in lines if ln.startswith("casreg: error:")]) == 1, proc.stderr
