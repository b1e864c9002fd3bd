"""A registry in an S3 bucket, or on any S3-compatible server (SeaweedFS, MinIO, ...).

URL ``s3://BUCKET/PREFIX``: key ``K`` of the registry is the object ``PREFIX/K``.
Configuration (docs/s3.md): the standard AWS credential chain; the endpoint from
``CASREG_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else
AWS; the region from ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else the AWS config.

The two atomic primitives are S3 conditional writes:

- ``create``: ``PutObject`` with ``If-None-Match: *`` (payloads of ``multipart_threshold``
  bytes or more: a multipart upload whose ``CompleteMultipartUpload`` carries the
  precondition). HTTP 412 means the key exists: ``False``.
- ``swap``: ``PutObject`` with ``If-Match: <ETag>`` (``If-None-Match: *`` when the key must
  not exist); 412 is a :class:`ConflictError`. Tokens are ETags, and
  ``read_versioned`` returns the bytes and the ETag of one and the same ``GetObject``.

A write whose response is lost is retried by botocore, and the retry then fails its own
precondition (412) although the first attempt succeeded. When a 412 arrives after a
retry (``RetryAttempts > 0``) the object is read back: if it holds exactly our bytes, the
write was ours (or someone else's of the very same bytes, which for immutable content is
the same outcome). Without this, a lost response would make a pusher skip a version number
it had in fact taken (a duplicate version) or report a lost race for an alias move that
happened.

s3fs supplies the configuration, the credentials, the aiobotocore client and its event
loop; the S3 requests themselves go to that client directly, because s3fs's file-system
view differs from ours where it matters: its ``exists``/``info`` call a key prefix a
directory, its listings are cached, a whole-object read issues a HEAD and then parallel
ranged GETs (two versions of a mutable object could be mixed), and its own retry loop
would hide whether a conditional write had been retried.

s3fs is imported only here, and this module only for ``s3://`` URLs, so a local
``casreg resolve`` stays light.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC
from typing import Any, TypeVar

import aiohttp
import s3fs
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from fsspec.asyn import sync

from casreg.errors import CasregError, ConflictError, InvalidInputError, NotFoundError, StorageError
from casreg.redact import redact_url
from casreg.storage.base import (
    Buffer,
    ByteRange,
    Capabilities,
    ObjectInfo,
    ObjectStore,
    ObjectWriter,
    Payload,
    Versioned,
    check_key,
    join_payload,
)
from casreg.storage.fileio import write_all

__all__ = ["S3Store", "ENDPOINT_ENV", "resolve_endpoint"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: casreg's own endpoint setting; wins over AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL.
ENDPOINT_ENV = "CASREG_S3_ENDPOINT_URL"
_ENDPOINT_ENVS = (ENDPOINT_ENV, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

MULTIPART_THRESHOLD = 64 << 20  # packs (32 MiB) go in one PUT; anything bigger in parts
PART_SIZE = 16 << 20
COALESCE_GAP = 1 << 20  # read_ranges: ranges of one object less than this apart share a GET
MAX_SPAN = 64 << 20  # ... as long as the merged GET stays below this
MAX_CONCURRENCY = 8  # concurrent GETs (read_ranges) or part uploads (multipart) per call
_CONFLICT_RETRIES = 5  # HTTP 409 ConditionalRequestConflict: another conditional write in flight
_BODY_RETRIES = 3  # a GET whose body broke off is re-issued

_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                 "InvalidToken", "AllAccessDisabled", "AccountProblem", "RequestTimeTooSkewed", "403"}
_BODY_ERRORS = (ResponseStreamingError, ReadTimeoutError, IncompleteReadError, aiohttp.ClientPayloadError)
_BACKEND_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


def resolve_endpoint() -> str | None:
    """The endpoint URL casreg uses: ``CASREG_S3_ENDPOINT_URL``, else
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else ``None`` (AWS itself)."""
    for name in _ENDPOINT_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


@functools.cache
def _http_session_cls() -> dict[str, Any]:
    """aiohttp (3.10+) re-sends an idempotent request (PUT included) once by itself when the
    connection drops before the response arrives. botocore never learns of that attempt, so
    a conditional write whose first response was lost would come back as a plain 412 with
    ``RetryAttempts == 0``, indistinguishable from a lost race. This session class turns
    that silent retry off, leaving retries to botocore, which counts them."""
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.httpsession import AIOHTTPSession
    except ImportError:  # pragma: no cover - other aiobotocore layouts: keep the default
        return {}
    import inspect

    if "http_session_cls" not in inspect.signature(AioConfig).parameters or not hasattr(AIOHTTPSession, "_get_session"):
        return {}  # pragma: no cover

    class _CountedRetriesSession(AIOHTTPSession):  # type: ignore[misc]
        async def _get_session(self, proxy_url: Any) -> Any:
            session = await super()._get_session(proxy_url)
            session._retry_connection = False
            return session

    return {"http_session_cls": _CountedRetriesSession}


# One s3fs filesystem (one aiobotocore session and client) per configuration and process.
_FS: dict[tuple[Any, ...], s3fs.S3FileSystem] = {}
_FS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_FS.clear)  # clients are bound to the parent's event loop


def _filesystem(endpoint: str | None, region: str | None) -> s3fs.S3FileSystem:
    creds = hashlib.sha256("\0".join(os.environ.get(v, "") for v in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")).encode()).hexdigest()
    cache_key = (endpoint, region, creds)
    with _FS_LOCK:
        fs = _FS.get(cache_key)
        if fs is None:
            fs = s3fs.S3FileSystem(
                endpoint_url=endpoint,
                client_kwargs={"region_name": region} if region else {},
                config_kwargs={
                    # botocore retries transient failures itself; casreg sees RetryAttempts
                    "retries": {"max_attempts": 3, "mode": "standard"},
                    "connect_timeout": 10,
                    "read_timeout": 120,
                    "max_pool_connections": 32,
                    # S3-compatible servers differ in their support of the newer default
                    # checksums; casreg checks every byte with BLAKE3 anyway.
                    "request_checksum_calculation": "when_required",
                    "response_checksum_validation": "when_required",
                    # S3-compatible servers answer at one host name, not one per bucket
                    **({"s3": {"addressing_style": "path"}} if endpoint else {}),
                    **_http_session_cls(),
                },
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            _FS[cache_key] = fs
        return fs


def _no_expect_continue(client: Any) -> None:
    """Send PUT bodies right behind their headers, without ``Expect: 100-continue``. It
    saves a round trip per PUT, and SeaweedFS (4.48) commits an *empty* object when a
    client that was told "100 Continue" disconnects before the first body byte (measured;
    a partial body is refused as it should be)."""
    from botocore.handlers import add_expect_header

    client.meta.events.unregister("before-call.s3", add_expect_header)


class _RangeReader(io.RawIOBase):
    """A request body read a piece at a time from where its bytes lie (a buffer, or a range
    of a file), seekable, as botocore treats a file: it seeks to the end to learn the
    length and back to the start for a retry. Given ``bytes``, botocore wraps them in a
    ``BytesIO`` and aiohttp copies that whole to send it (``getbuffer`` unshares it); given
    a ``bytearray``, asyncio's transport copies what the socket did not take at once.
    Either way every pack in flight cost twice its size (docs/benchmarks.md, "A push to
    S3"); a reader costs one piece (aiohttp reads 64 KiB at a time)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset < 0:
            raise ValueError(f"negative seek value {offset}")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)  # (as BytesIO does)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n:
            self._fill(memoryview(buffer).cast("B")[:n], self._pos)
            self._pos += n
        return n

    def _fill(self, into: memoryview, at: int) -> None:
        raise NotImplementedError


class _BufferReader(_RangeReader):
    """A body read from a buffer."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        super().__init__(len(self._view))

    def _fill(self, into: memoryview, at: int) -> None:
        into[:] = self._view[at:at + len(into)]


class _FileRangeReader(_RangeReader):
    """A body read from ``[start, end)`` of the file ``fd`` (positional reads: any thread)."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd, self._start = fd, start
        super().__init__(end - start)

    def _fill(self, into: memoryview, at: int) -> None:
        done = 0
        while done < len(into):
            where = self._start + at + done
            if _PREADV is not None:
                got = _PREADV(self._fd, [into[done:]], where)
            else:  # (no preadv: read, then copy)
                data = os.pread(self._fd, len(into) - done, where)
                got = len(data)
                into[done:done + got] = data
            if got <= 0:
                raise OSError(f"a staged pack ended {len(into) - done} bytes early")
            done += got


#: ``os.preadv`` (reads straight into the caller's buffer) where the platform has it.
_PREADV = getattr(os, "preadv", None)


class _Spool:
    """Bytes staged in a temporary file of this process's own (``$TMPDIR``), unlinked as
    soon as it is created, so nothing is left behind, even by a crash. ``OSError`` if it
    cannot be made."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="casreg-pack-")
        try:
            os.unlink(path)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, parts: Sequence[Buffer]) -> None:
        """Write ``parts`` after what is staged; ``OSError`` (no space) leaves ``size`` as
        it was (bytes written past it are ignored)."""
        os.lseek(self.fd, self.size, os.SEEK_SET)
        write_all(self.fd, parts)
        self.size += sum(len(p) for p in parts)

    def read_all(self) -> bytes:
        data = bytearray(self.size)
        _FileRangeReader(self.fd, 0, self.size).readinto(data)
        return bytes(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_Body = bytes | _Spool


def _reader(body: _Body, start: int = 0, end: int | None = None) -> _RangeReader:
    """A request body of ``body[start:end]``."""
    end = len(body) if end is None else min(end, len(body))
    if isinstance(body, _Spool):
        return _FileRangeReader(body.fd, start, end)
    return _BufferReader(memoryview(body)[start:end])


class _SpooledWriter(ObjectWriter):
    """A pack staged in a :class:`_Spool`, not in memory, until it is published: on S3 a
    sealed pack waits for its PUT, and a push keeps ``io_concurrency + 1`` of them (one
    per request slot), 10 packs of 32 MiB with the one filling. Where the temporary file
    cannot be made or written (no space), the writer keeps the bytes in memory instead,
    as the default writer does."""

    store: S3Store

    def __init__(self, store: S3Store) -> None:
        super().__init__(store)
        try:
            self._spool: _Spool | None = _Spool()
        except OSError as err:
            log.debug("casreg: staging a pack in memory: %s", err)
            self._spool = None

    def write(self, data: Buffer) -> None:
        self.write_many([data])

    def write_many(self, parts: Sequence[Buffer]) -> None:
        if self._spool is not None:
            try:
                self._spool.append(parts)
                self.size = self._spool.size
                return
            except OSError as err:
                log.debug("casreg: staging a pack in memory from here on: %s", err)
                self.parts = [self._spool.read_all()]
                self._spool.close()
                self._spool = None
        for data in parts:
            super().write(data)

    def publish(self, key: str, *, size: int) -> bool:
        if self._spool is None:
            return super().publish(key, size=size)
        self.check_size(key, size)
        return self.store._create_staged(key, self._spool)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        super().close()


def _meta(err: ClientError) -> dict[str, Any]:
    return err.response.get("ResponseMetadata", {}) or {}


def _code(err: ClientError) -> str:
    return str((err.response.get("Error", {}) or {}).get("Code", ""))


def _status(err: ClientError) -> int | None:
    return _meta(err).get("HTTPStatusCode")


def _precondition_failed(err: ClientError) -> bool:
    return _code(err) == "PreconditionFailed" or _status(err) == 412


def _not_found(err: ClientError) -> bool:
    return _code(err) in ("NoSuchKey", "404", "NotFound") or (_status(err) == 404 and _code(err) != "NoSuchBucket")


def _in_flight_conflict(err: ClientError) -> bool:
    return _code(err) == "ConditionalRequestConflict" or _status(err) == 409


def _retried(err: ClientError) -> bool:
    return int(_meta(err).get("RetryAttempts", 0) or 0) > 0


async def _gather(coros: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, but the first failure cancels the others before it propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class S3Store(ObjectStore):
    """See the module docstring. ``requests`` counts the S3 requests this store issued,
    by operation (botocore's own retries not included)."""

    capabilities = Capabilities(list_after=True, object_times=True, leftovers=False, remote=True)
    list_page_size = 1000  # keys per ListObjectsV2 request (S3's maximum)
    io_concurrency = 8  # packs uploaded / ranges fetched at once: hides request latency

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE) -> None:
        if not url.startswith("s3://"):
            raise InvalidInputError(f"not an S3 URL: {redact_url(repr(url))} (expected s3://BUCKET/PREFIX)")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if any(c in bucket for c in "@?#"):  # never quote it: it may hold a credential
            raise InvalidInputError(f"registry URL {redact_url(repr(url))}: expected s3://BUCKET/PREFIX with no "
                                    "user name, password or query (S3 credentials come from the AWS credential "
                                    "chain, docs/s3.md)")
        if not _BUCKET_RE.fullmatch(bucket):
            raise InvalidInputError(f"registry URL {redact_url(repr(url))}: {bucket!r} is not a valid bucket name "
                                    "(expected s3://BUCKET/PREFIX)")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise InvalidInputError(f"registry URL {redact_url(repr(url))}: the prefix may not contain empty, "
                                    "'.' or '..' parts")
        if part_size < 5 << 20:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self.endpoint_url = endpoint_url or resolve_endpoint()
        self.region = region or _region()
        self.requests: Counter[str] = Counter()
        self._fs = _filesystem(self.endpoint_url, self.region)
        self._client: Any = None

    # -- plumbing ------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The endpoint in use, for messages: credentials in it (``http://user:pass@host``)
        redacted (:func:`casreg.redact.redact_url`)."""
        if self._client is not None:
            return redact_url(str(self._client.meta.endpoint_url))
        return redact_url(self.endpoint_url or "AWS S3")

    def _k(self, key: str) -> str:
        return self._root + check_key(key)

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"object {key} not found in {self.url}")

    async def _call(self, op: str, **kwargs: Any) -> Any:
        self._client = client = await self._fs.set_session()  # cheap once set up
        if not getattr(client, "_casreg_ready", False):
            _no_expect_continue(client)
            client._casreg_ready = True
        self.requests[op] += 1
        return await getattr(client, op)(Bucket=self.bucket, **kwargs)

    def _run(self, action: str, key: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on s3fs's event loop; translate backend errors at this boundary."""
        try:
            result: T = sync(self._fs.loop, fn, *args)
            return result
        except CasregError:
            raise
        except _BACKEND_ERRORS as err:
            raise self._error(err, action, key) from err
        except ValueError as err:  # botocore refuses a malformed endpoint URL this way
            raise StorageError(f"registry {self.url}: invalid S3 configuration: {_line(err)}") from err

    def _error(self, err: BaseException, action: str, key: str) -> StorageError:
        what = f"{action} {key}" if key else action
        if isinstance(err, ClientError):
            code, status = _code(err), _status(err)
            if code == "NoSuchBucket":
                return StorageError(f"registry {self.url}: bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code in _ACCESS_CODES or status == 403:
                return StorageError(f"registry {self.url}: access denied ({code or status}) trying to {what}; "
                                    "check the AWS credentials and the bucket's permissions")
            message = (err.response.get("Error", {}) or {}).get("Message") or str(err)
            return StorageError(f"registry {self.url}: cannot {what}: {code or status}: {_line(message)}")
        if isinstance(err, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return StorageError(f"registry {self.url}: no usable AWS credentials ({_line(err)}); set "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageError(f"registry {self.url}: cannot connect to the S3 endpoint {self.endpoint}; "
                                "is the server running and the endpoint right?")
        if isinstance(err, (ReadTimeoutError, asyncio.TimeoutError)):
            return StorageError(f"registry {self.url}: the S3 endpoint {self.endpoint} timed out trying to {what}")
        if isinstance(err, (HTTPClientError, aiohttp.ClientError)):
            return StorageError(f"registry {self.url}: connection to {self.endpoint} failed trying to {what} "
                                f"({_line(err)})")
        return StorageError(f"registry {self.url}: cannot {what}: {_line(err)}")

    # -- async primitives ----------------------------------------------------------------
    async def _get(self, key: str, rng: str | None = None) -> tuple[bytes, str]:
        """One GET (re-issued if the body breaks off): the bytes and their ETag."""
        kwargs = {"Range": rng} if rng else {}
        for attempt in range(_BODY_RETRIES):
            try:
                resp = await self._call("get_object", Key=self._k(key), **kwargs)
            except ClientError as err:
                if _not_found(err):
                    raise self._missing(key) from None
                raise
            try:
                async with resp["Body"] as body:
                    return await body.read(), resp.get("ETag", "")
            except _BODY_ERRORS:
                if attempt == _BODY_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            data, _ = await self._get(key, f"bytes={start}-{end - 1}")
        except ClientError as err:
            if _code(err) == "InvalidRange" or _status(err) == 416:
                return b""  # the object exists but ends before ``start``
            raise
        return data

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._call("head_object", Key=self._k(key))
            return head
        except ClientError as err:
            if _not_found(err):
                return None
            raise

    async def _read(self, key: str, byte_range: ByteRange | None) -> bytes:
        if byte_range is None:
            return (await self._get(key))[0]
        if byte_range.length == 0:  # no valid HTTP range is empty; the key must still exist
            if await self._head(key) is None:
                raise self._missing(key)
            return b""
        return await self._get_range(key, byte_range.start, byte_range.end)

    async def _read_ranges(self, key: str, ranges: list[ByteRange]) -> list[bytes]:
        spans: list[tuple[int, int, list[int]]] = []
        for i in sorted(range(len(ranges)), key=lambda i: (ranges[i].start, ranges[i].end)):
            r = ranges[i]
            if r.length == 0:
                continue
            if spans and r.start <= spans[-1][1] + COALESCE_GAP and max(spans[-1][1], r.end) - spans[-1][0] <= MAX_SPAN:
                start, end, members = spans[-1]
                spans[-1] = (start, max(end, r.end), members + [i])
            else:
                spans.append((r.start, r.end, [i]))
        out = [b""] * len(ranges)
        if not spans:
            if await self._head(key) is None:
                raise self._missing(key)
            return out
        limit = asyncio.Semaphore(MAX_CONCURRENCY)

        async def fetch(start: int, end: int, members: list[int]) -> None:
            async with limit:
                data = await self._get_range(key, start, end)
            for i in members:
                out[i] = data[ranges[i].start - start:ranges[i].end - start]

        await _gather([fetch(*span) for span in spans])
        return out

    async def _holds(self, key: str, data: _Body) -> bool:
        """Whether ``key`` now holds exactly ``data`` (a conditional write that failed after a
        retry may have succeeded on its first attempt)."""
        try:
            return (await self._get(key))[0] == (data.read_all() if isinstance(data, _Spool) else data)
        except NotFoundError:
            return False

    async def _create(self, key: str, body: _Body) -> bool:
        if len(body) >= self.multipart_threshold:
            return await self._create_multipart(key, body)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                await self._call("put_object", Key=self._k(key), Body=_reader(body), IfNoneMatch="*")
                return True
            except ClientError as err:
                if _in_flight_conflict(err) and attempt < _CONFLICT_RETRIES - 1:
                    await asyncio.sleep(0.05 * 2 ** attempt)
                    continue
                if not _precondition_failed(err):
                    raise
                return await self._holds(key, body) if _retried(err) else False
        raise AssertionError("unreachable")

    async def _create_multipart(self, key: str, body: _Body) -> bool:
        k = self._k(key)
        upload = (await self._call("create_multipart_upload", Key=k))["UploadId"]
        done = False
        try:
            limit = asyncio.Semaphore(MAX_CONCURRENCY)

            async def part(number: int, start: int) -> dict[str, Any]:
                async with limit:
                    resp = await self._call("upload_part", Key=k, UploadId=upload, PartNumber=number,
                                            Body=_reader(body, start, start + self.part_size))
                return {"PartNumber": number, "ETag": resp["ETag"]}

            parts = await _gather([part(n + 1, start) for n, start in enumerate(range(0, len(body), self.part_size))])
            try:
                await self._call("complete_multipart_upload", Key=k, UploadId=upload,
                                 MultipartUpload={"Parts": parts}, IfNoneMatch="*")
                done = True
                return True
            except ClientError as err:
                if _precondition_failed(err):
                    return await self._holds(key, body) if _retried(err) else False
                if _code(err) == "NoSuchUpload" and _retried(err):  # completed by the lost attempt
                    done = await self._holds(key, body)
                    if done:
                        return True
                raise
        finally:
            if not done:
                try:
                    await asyncio.shield(self._call("abort_multipart_upload", Key=k, UploadId=upload))
                except Exception:  # noqa: BLE001 - best effort; a lifecycle rule reclaims the rest
                    pass

    async def _swap(self, key: str, data: bytes, expected: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        for attempt in range(_CONFLICT_RETRIES):
            try:
                resp = await self._call("put_object", Key=self._k(key), Body=data, **condition)
            except ClientError as err:
                if _in_flight_conflict(err) and attempt < _CONFLICT_RETRIES - 1:
                    await asyncio.sleep(0.05 * 2 ** attempt)
                    continue
                # If-Match on a missing key: 412 here and on SeaweedFS, 404 NoSuchKey on some servers
                if not (_precondition_failed(err) or (expected is not None and _not_found(err))):
                    raise
                if _retried(err):
                    current = await self._versioned(key)
                    if current is not None and current.data == data:
                        return current.token
                raise ConflictError(f"{key} changed since it was read (someone else wrote it first)") from None
            token = resp.get("ETag")
            if not token:
                raise StorageError(f"registry {self.url}: the server returned no ETag for {key}; "
                                   "it cannot be used for compare-and-swap")
            return str(token)
        raise AssertionError("unreachable")

    async def _versioned(self, key: str) -> Versioned | None:
        try:
            data, etag = await self._get(key)
        except NotFoundError:
            return None
        if not etag:
            raise StorageError(f"registry {self.url}: the server returned no ETag for {key}; "
                               "it cannot be used for compare-and-swap")
        return Versioned(data, etag)

    async def _list_page(self, prefix: str, token: str | None, start_after: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ContinuationToken": token} if token else {}
        if start_after and not token:
            kwargs["StartAfter"] = start_after
        page: dict[str, Any] = await self._call("list_objects_v2", Prefix=prefix, MaxKeys=self.list_page_size, **kwargs)
        return page

    async def _delete(self, key: str) -> None:
        try:
            await self._call("delete_object", Key=self._k(key))
        except ClientError as err:
            if not _not_found(err):
                raise

    async def _check_bucket(self) -> None:
        try:
            await self._call("head_bucket")
        except ClientError as err:
            if _status(err) == 404 or _code(err) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"registry {self.url}: bucket {self.bucket!r} does not exist at "
                                   f"{self.endpoint} (create it first)") from err
            raise

    # -- ObjectStore -----------------------------------------------------------------------
    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return self._run("read", key, self._read, key, byte_range)

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Ranges of one object, coalesced into few GETs that run concurrently."""
        ranges = list(ranges)
        if not ranges:
            return []
        return self._run("read", key, self._read_ranges, key, ranges)

    def create(self, key: str, data: Payload) -> bool:
        check_key(key)
        return self._run("write", key, self._create, key, join_payload(data))

    def _create_staged(self, key: str, spool: _Spool) -> bool:
        """:meth:`create` of the bytes ``spool`` holds (:class:`_SpooledWriter`)."""
        check_key(key)
        return self._run("write", key, self._create, key, spool)

    def open_writer(self, prefix: str) -> ObjectWriter:
        """A writer that stages the object in a temporary file (:class:`_SpooledWriter`)."""
        return _SpooledWriter(self)

    def exists(self, key: str) -> bool:
        return self._run("check", key, self._head, key) is not None

    def size(self, key: str) -> int:
        head = self._run("check", key, self._head, key)
        if head is None:
            raise self._missing(key)
        return int(head["ContentLength"])

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and ``Last-Modified`` (UTC) from one HEAD."""
        head = self._run("check", key, self._head, key)
        if head is None:
            return None
        modified = head.get("LastModified")
        if modified is not None and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return ObjectInfo(int(head["ContentLength"]), modified)

    def list(self, prefix: str) -> Iterator[str]:
        return self._list(prefix, None)

    def list_after(self, prefix: str, start_after: str) -> Iterator[str]:
        """Keys under ``prefix`` that sort after ``start_after`` (S3's ``StartAfter``):
        readers skip the ledger segments a compacted file already covers."""
        return self._list(prefix, start_after)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[str]:
        p = prefix.strip("/")
        where = self._root + p + "/" if p else self._root
        after = self._root + start_after if start_after else None
        token: str | None = None
        found = False
        while True:
            page = self._run("list", p or "the registry", self._list_page, where, token, after)
            for obj in page.get("Contents", ()):
                name = obj["Key"]
                if name.endswith("/") or not name.startswith(self._root):
                    continue  # "directory" markers made by consoles and other tools
                found = True
                yield name[len(self._root):]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        if p and not found and after is None and self.exists(p):  # the prefix is a key itself
            yield p

    def read_versioned(self, key: str) -> Versioned | None:
        return self._run("read", key, self._versioned, key)

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        check_key(key)
        return self._run("write", key, self._swap, key, bytes(data), expected)

    def delete(self, key: str) -> None:
        self._run("delete", key, self._delete, key)

    def check_writable(self) -> None:
        """One HEAD of the bucket: it exists and these credentials may see it. (Whether
        they may write shows only at the first write, which fails as cleanly.)"""
        self._run("check", "", self._check_bucket)


def _line(err: object) -> str:
    """A backend's error as one line for a message, URL credentials redacted (botocore
    quotes the endpoint URL in some of its errors)."""
    text = redact_url(" ".join(str(err).split()))
    return text[:300] or type(err).__name__
