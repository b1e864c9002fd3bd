"""The storage interface: a bytes-only key/value store with two atomic primitives.

The store knows nothing of chunks, packs, manifests or ledgers; keys are ``/``-separated
strings relative to the registry root (:mod:`casreg.keys` names them). Shared state
changes only through :meth:`ObjectStore.create` (create-if-absent) and
:meth:`ObjectStore.swap` (compare-and-swap); a backend that cannot offer both atomically
must not exist. What a backend offers beyond that is declared in its
:class:`Capabilities`, and every optional operation has a correct fallback here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from casreg.errors import IntegrityError, NotFoundError
from casreg.redact import redact_url

__all__ = ["ByteRange", "Capabilities", "Leftover", "ObjectInfo", "ObjectStore", "ObjectWriter", "Payload",
           "Versioned", "check_key", "join_payload", "utc"]


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


Buffer = bytes | bytearray | memoryview
#: What ``create`` accepts: one buffer, or several to be stored back to back (a pack's
#: payloads are handed over as written, so no 32 MiB join is needed on a local disk).
Payload = Buffer | Sequence[Buffer]


def check_key(key: str) -> str:
    """Keys are ``/``-separated names; no component may be empty, start with ``.`` (the
    local backend keeps its temporary and lock files under such names) or be ``..``."""
    if not key or any(not part or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def join_payload(data: Payload) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return b"".join(data)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open byte range ``[start, end)`` of one object."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid byte range [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a backend knows of one object without reading it."""

    size: int
    modified: datetime | None  # UTC; None where the backend keeps no times (memory://)


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something an interrupted write left in the store that is not an object (a local
    disk's temporary file): invisible to :meth:`ObjectStore.list`, but it holds space.
    ``name`` is the backend's own, relative to the registry root."""

    name: str
    size: int
    modified: datetime  # UTC


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend offers beyond the contract every backend honours.

    - ``list_after``: :meth:`ObjectStore.list_after` skips the keys up to its start key
      on the server (S3's ``StartAfter``); without it the fallback filters a full listing,
      which is correct but saves nothing, so readers only prefer it where this is set.
    - ``object_times``: :meth:`ObjectStore.stat` reports when an object was written (gc's
      grace period needs it; objects without a time count as old, docs/gc.md).
    - ``leftovers``: interrupted writes can leave temporary files behind, which
      :meth:`ObjectStore.leftovers` reports and :meth:`ObjectStore.delete_leftover`
      removes (gc reclaims them after its grace period).
    - ``remote``: every request costs a network round trip, so independent small reads
      are worth issuing at once (a local disk answers in microseconds: readers then keep
      to one thread).
    """

    list_after: bool = False
    object_times: bool = True
    leftovers: bool = False
    remote: bool = False


@dataclass(frozen=True, slots=True)
class Versioned:
    """An object's bytes plus the opaque token a compare-and-swap must present."""

    data: bytes
    token: str


class ObjectWriter:
    """An object written piece by piece and published under a key chosen at the end (a
    pack is named by the hash of its index, known only once it is full).

    This default keeps the pieces in memory and publishes them with one
    :meth:`ObjectStore.create`, which is what an object store needs for a single PUT (the
    pieces joined into one buffer first, which replaces them). A
    backend that can stage bytes more cheaply (a local disk: straight into a temporary
    file, so a push holds a few chunks in memory instead of whole packs) overrides
    :meth:`ObjectStore.open_writer`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.parts: list[Buffer] = []
        self.size = 0

    def write(self, data: Buffer) -> None:
        """Append ``data``; the caller may reuse its buffer as soon as this returns."""
        self.parts.append(data if isinstance(data, bytes) else bytes(data))
        self.size += len(data)

    def write_many(self, parts: Sequence[Buffer]) -> None:
        """:meth:`write` of each of ``parts``, in order (a backend may write them at once)."""
        for data in parts:
            self.write(data)

    def publish(self, key: str, *, size: int) -> bool:
        """Create ``key`` with the bytes written so far unless it exists; return whether
        this call created it. ``size`` is what the caller wrote: if the writer holds any
        other number of bytes, nothing is published (:class:`IntegrityError`). May be called
        again (after the caller deleted a damaged object under that key, say) until
        :meth:`close`."""
        self.check_size(key, size)
        if len(self.parts) > 1:  # one buffer from here on: the pieces go (a retried publish holds it once)
            self.parts = [b"".join(self.parts)]
        return self.store.create(key, self.parts)

    def check_size(self, key: str, size: int) -> None:
        """Refuse to publish ``key`` unless exactly ``size`` bytes were written."""
        if self.size != size:
            raise IntegrityError(f"refusing to publish {key}: {self.size} bytes were written, not {size}")

    def close(self) -> None:
        """Drop the staged bytes (published objects stay)."""
        self.parts = []

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObjectStore(ABC):
    """Contract every backend honours (checked by the conformance suite every backend
    runs, :mod:`casreg.testing.store_suite`):

    - ``create`` never overwrites: of N concurrent creators of one key exactly one gets
      ``True``; the object is never visible partially written.
    - ``swap`` replaces an object only if its current token equals ``expected``
      (``None`` meaning "must not exist"), otherwise raises ``ConflictError``. Tokens
      never come back for different bytes.
    - ``read`` raises ``NotFoundError`` for a missing key; other failures raise
      ``StorageError`` with the backend's error as ``__cause__``.
    - Only objects are read, and nothing else is taken for one: where a backend can hold
      something else under a key's name (a local disk: a symbolic link, a FIFO, a
      device), every operation on that key but ``delete`` (``read``, ``read_ranges``,
      ``read_versioned``, ``size``, ``stat``, ``exists``, ``create``, ``swap``) raises
      ``IntegrityError`` naming the key, promptly: it never blocks on it, never reads or
      writes through it, and never reports it missing (a create-if-absent that took it
      for absent would write around it). ``delete`` removes the name itself, never what
      it points to (or refuses with ``IntegrityError``).
    - A byte range is clipped to the object: a range that runs past the end returns the
      bytes up to the end, one that starts at or past the end returns ``b""`` (the key
      must still exist: a missing key is ``NotFoundError`` whatever the range).
    - Keys are flat strings: ``list(prefix)`` yields every key equal to ``prefix`` or
      below ``prefix + "/"`` (never ``prefix + "x"``), each once, in no particular
      order. A key that existed for the whole listing is in it; one created or deleted
      while it runs may or may not be. ``f/g`` below a key ``f``, or a prefix ``a/b`` of
      a key ``a/b/c``, are simply absent.
    """

    url: str
    #: How many requests are worth having in flight at once. A local disk gains nothing
    #: from more than one writer; an object store hides its latency behind many.
    io_concurrency: int = 1
    #: What this backend offers beyond the contract (see :class:`Capabilities`).
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The bytes of ``key`` (or of ``byte_range`` of it, clipped as the class says).

        A whole-object read returns every byte, however many there are: the store does
        not know what size an object should have. A caller reading an object whose size
        it cannot trust (anything in a registry someone else can write) bounds the read
        with ``byte_range``, or checks :meth:`size` first."""

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Read several ranges of one object; backends may coalesce them."""
        return [self.read(key, r) for r in ranges]

    @abstractmethod
    def create(self, key: str, data: Payload) -> bool:
        """Write ``data`` at ``key`` unless it exists; return whether this call created it."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is an object."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size of ``key`` in bytes; ``NotFoundError`` if it does not exist."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and last-modified time of ``key``, or ``None`` if it does not exist
        (gc's grace period needs the time; backends that keep one must report it)."""
        try:
            return ObjectInfo(self.size(key), None)
        except NotFoundError:
            return None

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (recursively), in no particular order."""

    def list_after(self, prefix: str, start_after: str) -> Iterator[str]:
        """The keys :meth:`list` yields that sort after ``start_after``, in sorted order
        (as S3 lists). This fallback sorts a filtered full listing; a backend that skips
        on the server says so in ``capabilities.list_after``."""
        return iter(sorted(k for k in self.list(prefix) if k > start_after))

    def listing_token(self, prefix: str) -> Hashable | None:
        """A value that changes whenever the keys under ``prefix`` or a swapped object there
        change: equal tokens taken at two moments mean :meth:`list` (and every
        :meth:`swap`-ed object's bytes) under ``prefix`` stayed the same between them.
        ``None``: the backend cannot tell cheaply now (callers list instead); the default.
        Lets readers reuse what they derived from a listing (docs/FORMAT.md §6.1)."""
        return None

    @abstractmethod
    def read_versioned(self, key: str) -> Versioned | None:
        """Current bytes and swap token of ``key``, or ``None`` if it does not exist."""

    @abstractmethod
    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        """Replace ``key`` with ``data`` if its token is still ``expected``; return the new token."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (used only by gc and tests); missing keys are not an error."""

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files of interrupted writes (none on a backend without
        ``capabilities.leftovers``)."""
        return iter(())

    def delete_leftover(self, name: str, *, dry_run: bool = False) -> bool:
        """Remove the leftover ``name`` (as :meth:`leftovers` named it); whether it
        existed. Anything that is not such a leftover is refused (``False``), so a
        damaged gc record cannot make this delete an object."""
        return False

    def open_writer(self, prefix: str) -> ObjectWriter:
        """A writer whose object will be published under a key starting with ``prefix``
        (a local disk stages the bytes in that directory, so publishing is a link)."""
        return ObjectWriter(self)

    def check_writable(self) -> None:  # noqa: B027 - optional hook: by default every store is taken as writable
        """Raise ``StorageError`` early if writes cannot succeed (read-only, unreachable)."""

    def unwrap(self) -> ObjectStore:
        """The store that holds the bytes: this one, or for a wrapper (retries, counting,
        caching) the store it wraps, unwrapped."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(repr(self.url))})"
