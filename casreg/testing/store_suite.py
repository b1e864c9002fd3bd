"""The conformance suite every storage backend runs (docs/ARCHITECTURE.md).

A backend's test file subclasses :class:`StoreSuite` and supplies only fixtures and
backdoors (zarr-python's ``zarr/testing/store.py`` has the same shape)::

    class TestMyStore(StoreSuite):
        @pytest.fixture
        def store_factory(self, tmp_path):      # makes fresh, empty stores
            ...
        def raw_read(self, store, key): ...     # the backdoors read, write and delete
        def raw_write(self, store, key, data): ...   # objects without going through
        def raw_delete(self, store, key): ...        # the store under test

Every test then runs against that backend: the contract of
:class:`casreg.storage.ObjectStore` (create-if-absent, compare-and-swap, clipped byte
ranges, exact listings, writers), thread races, readers racing writers, a hypothesis
state machine against a dict, and the backdoor tests, which check that what the store
says is what the backend holds (and that damage made behind its back is not hidden).
A backend that can hold things other than objects under a key's name (a local disk:
FIFOs, symbolic links) also supplies ``raw_plant``, and the suite checks that they are
refused, promptly and by name, and never followed.

Needs pytest and hypothesis (casreg's ``test`` extra).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from casreg.errors import ConflictError, IntegrityError, NotFoundError
from casreg.storage import ByteRange, ObjectStore, Versioned

__all__ = ["NON_OBJECTS", "StoreSuite", "StoreModel", "fresh_key", "payload", "promptly"]

#: What ``StoreSuite.raw_plant`` may be asked to put under a key's name: a FIFO; a
#: symbolic link to a file outside the store, to a device, or to nothing; or the key's
#: directory a symbolic link to a directory outside the store.
NON_OBJECTS = ("fifo", "link-to-file", "link-to-device", "dangling-link", "link-on-the-way")

N_THREADS = 16

# Hypothesis tests below reuse the function-scoped store across examples; every example
# writes under its own fresh key, so examples cannot see each other.
#: one method runs under several backend classes (each its own executor): that is the design here
SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]
fixture_ok = settings(suppress_health_check=SHARED, deadline=None)


def fresh_key(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def payload(i: int, size: int = 64 * 1024) -> bytes:
    """Distinct, non-repeating bytes per writer, large enough to span several writes."""
    head = f"writer-{i:04d}|".encode()
    return (head * (size // len(head) + 1))[:size]


def _as_buffer(kind: str, b: bytes) -> bytes | bytearray | memoryview:
    if kind == "bytearray":
        return bytearray(b)
    if kind == "memoryview":
        return memoryview(b"__" + b + b"__")[2:2 + len(b)]  # a view into a larger buffer
    return b


buffers = st.tuples(st.sampled_from(["bytes", "bytearray", "memoryview"]), st.binary(max_size=300)).map(
    lambda t: _as_buffer(*t))


# -- thread races -----------------------------------------------------------------------------
def _run_threads(n: int, fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as err:  # noqa: BLE001 - recorded and asserted on below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return results


def promptly(call: Callable[[], object], seconds: float = 10.0) -> object:
    """What ``call()`` returns or raises, failing the test if it has not finished within
    ``seconds`` (a call blocked on a FIFO is left behind in a daemon thread)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as err:  # noqa: BLE001 - handed to the caller to assert on
            out.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return out[0]


# -- stateful model check ------------------------------------------------------------------------
KEYS = ["a", "b/c", "b/d", "e/f/g"]  # no key is a "directory" of another


PREFIXES = ["", "a", "b", "b/", "e", "e/f", "zz"]


class StoreModel(RuleBasedStateMachine):
    """The store against a dict. Tokens are opaque: a token read from a key stays valid
    until that key changes; if it changed back to the same bytes (ABA) either outcome
    of a swap is accepted, since content-derived tokens (ETags, hashes) legitimately
    cannot tell."""

    make_store: Callable[[], ObjectStore]

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.model: dict[str, bytes] = {}
        # key -> (token, bytes when the token was obtained, changed since?)
        self.seen: dict[str, tuple[str, bytes, bool]] = {}

    def _changed(self, key: str) -> None:
        if key in self.seen:
            token, data, _ = self.seen[key]
            self.seen[key] = (token, data, True)

    @rule(key=st.sampled_from(KEYS), data=st.binary(max_size=40))
    def create(self, key: str, data: bytes) -> None:
        created = self.store.create(key, data)
        assert created == (key not in self.model)
        if created:
            self.model[key] = data
            self._changed(key)

    @rule(key=st.sampled_from(KEYS))
    def read_versioned(self, key: str) -> None:
        v = self.store.read_versioned(key)
        if key not in self.model:
            assert v is None
            return
        assert v is not None and v.data == self.model[key]
        self.seen[key] = (v.token, v.data, False)

    @rule(key=st.sampled_from(KEYS), data=st.binary(max_size=40), use_seen=st.booleans())
    def swap(self, key: str, data: bytes, use_seen: bool) -> None:
        if use_seen and key in self.seen:
            token, then, changed = self.seen[key]
            if not changed:
                must: bool | None = key in self.model
            elif key in self.model and self.model[key] == then:
                must = None  # ABA: either outcome is correct
            else:
                must = False
            expected: str | None = token
        else:
            must, expected = key not in self.model, None
        try:
            new = self.store.swap(key, data, expected)
        except ConflictError:
            assert must in (False, None), f"swap of {key} with a valid token conflicted"
            if key in self.model:
                assert self.store.read(key) == self.model[key]
            else:
                assert not self.store.exists(key)
            return
        assert must in (True, None), f"swap of {key} with a stale token succeeded"
        self.model[key] = data
        self.seen[key] = (new, data, False)
        assert self.store.read_versioned(key) == Versioned(data, new)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.store.delete(key)
        if self.model.pop(key, None) is not None:
            self._changed(key)

    @rule(key=st.sampled_from(KEYS), draw=st.data())
    def read(self, key: str, draw: st.DataObject) -> None:
        if key not in self.model:
            with pytest.raises(NotFoundError):
                self.store.read(key)
            return
        data = self.model[key]
        assert self.store.read(key) == data
        start = draw.draw(st.integers(0, len(data) + 2), label="start")
        end = draw.draw(st.integers(start, len(data) + 3), label="end")
        assert self.store.read(key, ByteRange(start, end)) == data[start:end]

    @rule(prefix=st.sampled_from(PREFIXES))
    def list(self, prefix: str) -> None:
        p = prefix.rstrip("/")
        want = sorted(k for k in self.model if not p or k == p or k.startswith(p + "/"))
        assert sorted(self.store.list(prefix)) == want

    @invariant()
    def exists_and_size_agree(self) -> None:
        for key in KEYS:
            assert self.store.exists(key) == (key in self.model)
            if key in self.model:
                assert self.store.size(key) == len(self.model[key])

class StoreSuite:
    """The tests; see the module docstring for what a subclass supplies."""

    # -- what a backend's test file supplies ------------------------------------------------------
    @pytest.fixture
    def store_factory(self) -> Callable[[], ObjectStore]:
        raise NotImplementedError("a backend's test class provides the store_factory fixture")

    def raw_read(self, store: ObjectStore, key: str) -> bytes | None:
        """The bytes the backend holds under ``key`` (``None``: none), read without ``store``."""
        raise NotImplementedError

    def raw_write(self, store: ObjectStore, key: str, data: bytes) -> None:
        """Put ``data`` under ``key`` behind the store's back (another client, damage)."""
        raise NotImplementedError

    def raw_delete(self, store: ObjectStore, key: str) -> None:
        """Remove ``key`` behind the store's back."""
        raise NotImplementedError

    def raw_plant(self, store: ObjectStore, key: str, kind: str) -> Callable[[], object] | None:
        """Put something that is not an object under ``key``'s name, behind the store's
        back (``kind`` is one of :data:`NON_OBJECTS`); return a function that snapshots
        whatever outside the store the plant leads to. ``None`` (the default): the backend
        cannot hold such things (an object store), and the tests that need them skip."""
        return None

    @pytest.fixture
    def store(self, store_factory: Callable[[], ObjectStore]) -> ObjectStore:
        return store_factory()

    # -- backdoors: what the store says is what the backend holds -------------------------------
    def test_created_bytes_are_what_the_backend_holds(self, store: ObjectStore) -> None:
        data = payload(1, 5000)
        assert store.create("bd/a", data)
        assert store.swap("bd/p", b"pointer", None)
        assert self.raw_read(store, "bd/a") == data and self.raw_read(store, "bd/p") == b"pointer"
        assert self.raw_read(store, "bd/none") is None

    def test_objects_written_behind_its_back_are_seen(self, store: ObjectStore) -> None:
        """Another client's writes are visible (the store keeps no state of its own)."""
        self.raw_write(store, "other/x", b"from elsewhere")
        assert store.exists("other/x") and store.read("other/x") == b"from elsewhere"
        assert store.size("other/x") == 14 and sorted(store.list("other")) == ["other/x"]
        assert store.create("other/x", b"mine") is False

    def test_damage_is_returned_as_it_is_never_hidden(self, store: ObjectStore) -> None:
        """The store is bytes only: it returns damaged bytes as they are (verifying is the
        layers' job), with the size they now have."""
        assert store.create("dmg/obj", b"0123456789")
        self.raw_write(store, "dmg/obj", b"0123X")
        assert store.read("dmg/obj") == b"0123X" and store.size("dmg/obj") == 5
        assert store.read("dmg/obj", ByteRange(3, 10)) == b"3X"
        v = store.read_versioned("dmg/obj")
        assert v is not None and v.data == b"0123X"

    def test_an_object_deleted_behind_its_back_is_missing(self, store: ObjectStore) -> None:
        assert store.create("gone/obj", b"here")
        self.raw_delete(store, "gone/obj")
        assert store.exists("gone/obj") is False and store.read_versioned("gone/obj") is None
        with pytest.raises(NotFoundError):
            store.read("gone/obj")
        assert sorted(store.list("gone")) == []
        assert store.create("gone/obj", b"again") and self.raw_read(store, "gone/obj") == b"again"

    def test_swap_sees_a_change_made_behind_its_back(self, store: ObjectStore) -> None:
        token = store.swap("cas/k", b"mine", None)
        self.raw_write(store, "cas/k", b"someone else's")
        with pytest.raises(ConflictError):
            store.swap("cas/k", b"clobber", token)
        assert self.raw_read(store, "cas/k") == b"someone else's"
        self.raw_delete(store, "cas/k")
        with pytest.raises(ConflictError):
            store.swap("cas/k", b"clobber", token)
        assert self.raw_read(store, "cas/k") is None

    def test_capabilities_are_declared(self, store: ObjectStore) -> None:
        caps = store.capabilities
        assert isinstance(caps.list_after, bool) and isinstance(caps.leftovers, bool)
        assert isinstance(caps.remote, bool)
        assert store.create("cap/a", b"x")
        info = store.stat("cap/a")
        assert info is not None and info.size == 1
        assert (info.modified is not None) == caps.object_times
        assert store.stat("cap/none") is None
        if not caps.leftovers:
            assert list(store.leftovers()) == [] and store.delete_leftover("cap/a") is False
        assert store.delete_leftover("cap/a") is False and store.read("cap/a") == b"x"  # never an object

    @pytest.mark.parametrize("kind", NON_OBJECTS)
    def test_a_non_object_under_a_key_is_refused_and_never_followed(self, store: ObjectStore, kind: str) -> None:
        """Whatever else than an object sits under a key's name, every operation on the key
        fails promptly with an IntegrityError naming it: none blocks on a FIFO, reads or
        writes through a link, or reports the key missing (which would make a
        create-if-absent write around it). ``delete`` removes the name, not its target."""
        key = "planted/obj"
        outside = self.raw_plant(store, key, kind)
        if outside is None:
            pytest.skip(f"{type(store).__name__} holds nothing but objects")
        before = outside()
        calls: dict[str, Callable[[], object]] = {
            "read": lambda: store.read(key),
            "read a range": lambda: store.read(key, ByteRange(0, 4)),
            "read_ranges": lambda: store.read_ranges(key, [ByteRange(0, 4)]),
            "read_versioned": lambda: store.read_versioned(key),
            "size": lambda: store.size(key),
            "stat": lambda: store.stat(key),
            "exists": lambda: store.exists(key),
            "create": lambda: store.create(key, b"mine"),
            "swap": lambda: store.swap(key, b"mine", None),
        }
        for what, call in calls.items():
            got = promptly(call)
            assert isinstance(got, IntegrityError), (what, got)
            assert key in str(got) and "\n" not in str(got), (what, got)
            assert outside() == before, f"{what} changed what the {kind} leads to"
        deleted = promptly(lambda: store.delete(key))
        assert deleted is None or (isinstance(deleted, IntegrityError) and kind == "link-on-the-way"), deleted
        assert outside() == before
        if deleted is None:
            assert store.exists(key) is False and store.create(key, b"mine") and store.read(key) == b"mine"

    # -- reads of missing keys ----------------------------------------------------------------
    def test_read_missing_raises_not_found(self, store: ObjectStore) -> None:
        for call in (
            lambda: store.read("missing/key"),
            lambda: store.read("missing/key", ByteRange(0, 1)),
            lambda: store.read_ranges("missing/key", [ByteRange(0, 1)]),
            lambda: store.size("missing/key"),
            lambda: store.read("top-level-missing"),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            assert isinstance(info.value, FileNotFoundError)
            assert "missing" in str(info.value)
        assert store.exists("missing/key") is False
        assert store.read_versioned("missing/key") is None
        assert sorted(store.list("missing")) == []

    @pytest.mark.parametrize("where", ["below", "prefix"])
    @pytest.mark.parametrize("op", ["read", "read_ranges", "size", "read_versioned", "exists"])
    def test_non_key_paths_are_just_missing(self, store: ObjectStore, where: str, op: str) -> None:
        """Keys are flat strings: with only ``f`` and ``a/b/c`` stored, ``f/g`` (below a key)
        and ``a/b`` (a prefix of a key) are simply absent."""
        assert store.create("f", b"abc")
        assert store.create("a/b/c", b"xyz")
        key = {"below": "f/g", "prefix": "a/b"}[where]
        if op == "exists":
            assert store.exists(key) is False
        elif op == "read_versioned":
            assert store.read_versioned(key) is None
        else:
            call: Callable[[], object] = {
                "read": lambda: store.read(key),
                "read_ranges": lambda: store.read_ranges(key, [ByteRange(0, 1)]),
                "size": lambda: store.size(key),
            }[op]
            with pytest.raises(NotFoundError):
                call()
        assert store.read("f") == b"abc" and store.read("a/b/c") == b"xyz"

    # -- create ---------------------------------------------------------------------------------
    def test_create_then_never_overwrite(self, store: ObjectStore) -> None:
        assert store.create("a/b/c.bin", b"first") is True
        assert store.exists("a/b/c.bin")
        assert store.create("a/b/c.bin", b"second, longer bytes") is False
        assert store.create("a/b/c.bin", b"") is False
        assert store.read("a/b/c.bin") == b"first"
        assert store.size("a/b/c.bin") == 5

    def test_create_empty_and_binary_objects(self, store: ObjectStore) -> None:
        blob = bytes(range(256)) * 3
        assert store.create("empty", b"")
        assert store.create("bin/all-bytes", blob)
        assert store.read("empty") == b""
        assert store.size("empty") == 0
        assert store.read("bin/all-bytes") == blob
        assert store.size("bin/all-bytes") == len(blob)
        v = store.read_versioned("bin/all-bytes")
        assert isinstance(v, Versioned) and v.data == blob and isinstance(v.token, str) and v.token

    @fixture_ok
    @given(parts=st.lists(buffers, max_size=12), as_tuple=st.booleans())
    def test_create_accepts_payload_parts(self, store: ObjectStore, parts: list[bytes], as_tuple: bool) -> None:
        """``create`` takes one buffer or a sequence of buffers stored back to back."""
        key = fresh_key("parts")
        joined = b"".join(bytes(p) for p in parts)
        assert store.create(key, tuple(parts) if as_tuple else parts) is True
        assert store.read(key) == joined
        assert store.size(key) == len(joined)
        assert store.create(key, [b"other"]) is False
        assert store.read(key) == joined
        single = fresh_key("single")
        buf = parts[0] if parts else memoryview(b"")
        assert store.create(single, buf) is True
        assert store.read(single) == bytes(buf)

    def test_create_with_more_parts_than_iov_max(self, store: ObjectStore) -> None:
        parts = [i.to_bytes(3, "little") for i in range(5000)] + [b""] * 10 + [memoryview(b"tail")]
        assert store.create("many/parts", parts)
        assert store.read("many/parts") == b"".join(bytes(p) for p in parts)
        assert store.size("many/parts") == 3 * 5000 + 4

    @fixture_ok
    @given(data=st.binary(max_size=3000),
           ranges=st.lists(st.tuples(st.integers(0, 3100), st.integers(0, 400)), min_size=1, max_size=8))
    def test_read_ranges_equal_slices(self, store: ObjectStore, data: bytes, ranges: list[tuple[int, int]]) -> None:
        key = fresh_key("ranges")
        assert store.create(key, data)
        brs = [ByteRange(start, start + length) for start, length in ranges]
        for br in brs:
            assert store.read(key, br) == data[br.start:br.end]
        assert store.read_ranges(key, brs) == [data[br.start:br.end] for br in brs]
        assert store.read(key) == data
        assert store.size(key) == len(data)

    def test_byte_range_rejects_bad_bounds(self) -> None:
        with pytest.raises(ValueError):
            ByteRange(-1, 3)
        with pytest.raises(ValueError):
            ByteRange(5, 4)
        assert ByteRange(4, 4).length == 0

    # -- list -----------------------------------------------------------------------------------
    def test_list_is_recursive_and_exact(self, store: ObjectStore) -> None:
        inside = {"m/a", "m/b/c", "m/b/d/e.json", "m/b/d/f.parquet"}
        outside = {"mx/a", "m.json", "other/m/a", "top"}
        for k in inside | outside:
            assert store.create(k, k.encode())
        # a swapped key is listed too (and, for local, its lock file is not)
        assert store.swap("m/s", b"swapped", None)
        inside.add("m/s")

        assert sorted(store.list("m")) == sorted(inside)
        assert sorted(store.list("m/")) == sorted(inside)
        assert sorted(store.list("m/b")) == sorted(k for k in inside if k.startswith("m/b/"))
        assert sorted(store.list("m/b/d")) == ["m/b/d/e.json", "m/b/d/f.parquet"]
        assert sorted(store.list("other")) == ["other/m/a"]
        assert sorted(store.list("nothing")) == []
        assert sorted(store.list("m/b/d/e")) == []  # a string prefix is not a key prefix
        assert sorted(store.list("")) == sorted(inside | outside)
        for k in store.list(""):
            assert store.read(k) == (b"swapped" if k == "m/s" else k.encode())

    def test_list_after_delete(self, store: ObjectStore) -> None:
        for k in ("p/a", "p/b", "p/c/d"):
            store.create(k, b"x")
        store.delete("p/b")
        store.delete("p/c/d")
        assert sorted(store.list("p")) == ["p/a"]

    def test_key_named_like_a_lock_file_is_an_ordinary_key(self, store: ObjectStore) -> None:
        store.swap("k", b"v1", None)
        assert store.create("k.lock", b"payload") is True
        assert store.read("k.lock") == b"payload"
        assert sorted(store.list("")) == ["k", "k.lock"]

    # -- versioned reads and compare-and-swap -----------------------------------------------------
    def test_swap_protocol(self, store: ObjectStore) -> None:
        key = "cas/m/prod.json"
        assert store.read_versioned(key) is None

        t1 = store.swap(key, b"one", None)  # expected=None: must not exist, creates
        assert isinstance(t1, str) and t1
        v1 = store.read_versioned(key)
        assert v1 == Versioned(b"one", t1)

        with pytest.raises(ConflictError):
            store.swap(key, b"clobber", None)  # exists now
        with pytest.raises(ConflictError):
            store.swap(key, b"clobber", "not-a-token")
        assert store.read(key) == b"one"

        t2 = store.swap(key, b"two", t1)
        assert t2 != t1
        assert store.read_versioned(key) == Versioned(b"two", t2)
        with pytest.raises(ConflictError):
            store.swap(key, b"stale", t1)  # the old token is spent
        assert store.read(key) == b"two"

        store.delete(key)
        with pytest.raises(ConflictError):
            store.swap(key, b"after delete", t2)
        assert store.exists(key) is False
        t3 = store.swap(key, b"three", None)
        assert store.read_versioned(key) == Versioned(b"three", t3)

    def test_swap_on_created_key_uses_read_token(self, store: ObjectStore) -> None:
        assert store.create("k", b"created")
        v = store.read_versioned("k")
        assert v is not None and v.data == b"created"
        t = store.swap("k", b"replaced", v.token)
        assert store.read("k") == b"replaced"
        assert store.read_versioned("k") == Versioned(b"replaced", t)
        assert store.create("k", b"again") is False
        assert store.read("k") == b"replaced"

    def test_delete(self, store: ObjectStore) -> None:
        store.delete("never/existed")  # not an error
        assert store.create("d/k", b"x")
        store.delete("d/k")
        assert store.exists("d/k") is False
        with pytest.raises(NotFoundError):
            store.read("d/k")
        store.delete("d/k")  # twice is fine
        assert store.create("d/k", b"y") is True
        assert store.read("d/k") == b"y"

    # -- writers: an object written piece by piece, published under a key chosen at the end ----
    @settings(max_examples=25, deadline=None, suppress_health_check=SHARED)
    @given(pieces=st.lists(st.binary(max_size=3000), max_size=8), split=st.integers(0, 8))
    def test_writer_publishes_its_pieces_once(self, store: ObjectStore, pieces: list[bytes], split: int) -> None:
        """Nothing is visible before ``publish``; publishing creates the key with the pieces
        back to back, whether written one by one or several at once (``write_many``), buffers
        reused once either returns; a second publish, or one onto an existing key, changes
        nothing; ``close`` leaves only published objects."""
        prefix, key, taken = fresh_key("w"), fresh_key("w"), fresh_key("w")
        assert store.create(taken, b"first")
        before = sorted(store.list("w"))
        with store.open_writer(prefix) as writer:
            scratch = bytearray()
            for p in pieces[:split]:
                scratch[:] = p
                writer.write(memoryview(scratch))
                scratch[:] = b"\xff" * len(p)  # the caller reuses its buffer
            rest = [bytearray(p) for p in pieces[split:]]
            writer.write_many([memoryview(b) for b in rest])
            for b in rest:
                b[:] = b"\xff" * len(b)
            assert writer.size == sum(map(len, pieces))
            assert sorted(store.list("w")) == before
            n = sum(map(len, pieces))
            assert writer.publish(key, size=n) is True and writer.publish(key, size=n) is False
            assert writer.publish(taken, size=n) is False
        assert store.read(key) == b"".join(pieces) and store.read(taken) == b"first"
        assert sorted(store.list("w")) == sorted(before + [key])

    def test_writer_republishes_after_a_delete_and_close_discards(self, store: ObjectStore) -> None:
        """A writer can publish again until closed (push replaces a damaged pack that way);
        a writer closed unpublished leaves nothing behind."""
        key = fresh_key("packs")
        with store.open_writer("packs") as writer:
            writer.write(b"pack bytes")
            assert writer.publish(key, size=10)
            store.delete(key)
            assert writer.publish(key, size=10) and store.read(key) == b"pack bytes"
        with store.open_writer("packs") as dropped:
            dropped.write(b"never published")
        assert sorted(store.list("packs")) == [key]
        assert list(store.leftovers()) == []  # nothing staged is left behind

    def test_threads_racing_publish_have_one_winner(self, store: ObjectStore) -> None:
        key = fresh_key("race")

        def publish(i: int) -> bool:
            with store.open_writer("race") as writer:
                writer.write(payload(i)[:1000])
                writer.write(payload(i)[1000:])
                return writer.publish(key, size=len(payload(i)))

        results = _run_threads(N_THREADS, publish)
        winners = [i for i, r in enumerate(results) if r is True]
        assert len(winners) == 1 and store.read(key) == payload(winners[0])

    def test_threads_racing_create_have_one_winner(self, store: ObjectStore) -> None:
        for rnd in range(3):
            key = f"race/create-{rnd}"
            def create(i: int, key: str = key) -> bool:
                return store.create(key, payload(i))

            results = _run_threads(N_THREADS, create)
            assert all(isinstance(r, bool) for r in results), results
            winners = [i for i, r in enumerate(results) if r is True]
            assert len(winners) == 1
            assert store.read(key) == payload(winners[0])
            assert sorted(store.list("race")) == [f"race/create-{r}" for r in range(rnd + 1)]

    def test_threads_racing_swap_have_one_winner(self, store: ObjectStore) -> None:
        key = "race/swap"
        token = store.swap(key, b"start", None)
        for rnd in range(3):
            # every writer's bytes differ from the current ones (content-derived tokens
            # cannot see a rewrite of identical bytes, which is fine for a CAS)
            def swap(i: int, rnd: int = rnd, token: str = token) -> str:
                return store.swap(key, payload(100 * rnd + i), token)

            results = _run_threads(N_THREADS, swap)
            tokens = [r for r in results if isinstance(r, str)]
            winners = [i for i, r in enumerate(results) if isinstance(r, str)]
            losers = [r for r in results if not isinstance(r, str)]
            assert len(winners) == 1, results
            assert all(isinstance(r, ConflictError) for r in losers), losers
            assert store.read_versioned(key) == Versioned(payload(100 * rnd + winners[0]), tokens[0])
            token = tokens[0]  # next round races from the winner's token

    def test_threads_racing_swap_from_unset(self, store: ObjectStore) -> None:
        results = _run_threads(N_THREADS, lambda i: store.swap("race/unset", payload(i), None))
        winners = [i for i, r in enumerate(results) if isinstance(r, str)]
        assert len(winners) == 1
        assert all(isinstance(r, ConflictError) for i, r in enumerate(results) if i not in winners)
        assert store.read("race/unset") == payload(winners[0])

    def test_readers_never_see_partial_objects(self, store: ObjectStore) -> None:
        """Concurrent readers only ever see a complete version of a swapped/created key."""
        big = [payload(i, 512 * 1024) for i in range(6)]
        allowed = set(big)
        token = store.swap("hot", big[0], None)
        stop = threading.Event()
        bad: list[int] = []
        seen = 0

        def reader() -> None:
            nonlocal seen
            while not stop.is_set():
                v = store.read_versioned("hot")
                if v is None or v.data not in allowed:
                    bad.append(-1 if v is None else len(v.data))
                seen += 1
                try:
                    data = store.read("created")
                except NotFoundError:
                    continue
                if data != big[-1]:
                    bad.append(len(data))

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        try:
            for data in big[1:]:
                token = store.swap("hot", data, token)
            store.create("created", big[-1])
            for data in big[:3]:
                token = store.swap("hot", data, token)
        finally:
            stop.set()
            for t in readers:
                t.join(timeout=30)
        assert bad == []
        assert seen > 0

    def test_store_matches_dict_model(self, store_factory: Callable[[], ObjectStore]) -> None:
        machine = type("Machine", (StoreModel,), {"make_store": staticmethod(store_factory)})
        run_state_machine_as_test(
            machine,
            settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                              suppress_health_check=list(HealthCheck)),
        )

    def test_list_after_skips_keys_up_to_the_start_key(self, store: ObjectStore) -> None:
        """``list_after`` returns exactly the keys under the prefix that sort after the start
        key, in order, even when they span several listing pages (natively or by the
        ABC's fallback, as ``capabilities.list_after`` says)."""
        list_after = store.list_after
        keys = [f"seg/m/{i:010d}.parquet" for i in range(1, 26)] + ["seg/n/0000000001.parquet", "segx/a"]
        for k in keys:
            assert store.create(k, b"x")
        page = getattr(store, "list_page_size", None)
        if page is not None:
            store.list_page_size = 7  # type: ignore[attr-defined]
        try:
            got = list(list_after("seg/m", "seg/m/0000000009.parquet"))
            assert got == [f"seg/m/{i:010d}.parquet" for i in range(10, 26)]
            assert list(list_after("seg/m", "seg/m/0000000025.parquet")) == []
            assert sorted(list_after("seg", "seg/m/0000000024.parquet")) == [
                "seg/m/0000000025.parquet", "seg/n/0000000001.parquet"]
        finally:
            if page is not None:
                store.list_page_size = page  # type: ignore[attr-defined]
