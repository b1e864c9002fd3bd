"""Who and where: the author of an event and the lineage of a push: git state, the
hardware, the training code, its dependencies, its signature and links (docs/lineage.md)."""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

from casreg.errors import InvalidInputError
from casreg.records import MAX_TEXT, CodeInfo, Hardware, clean_labels
from casreg.redact import redact_url

__all__ = ["current_author", "acting_as", "hostname", "git_state", "GitState", "detect_hardware", "given_hardware",
           "strip_credentials", "code_state", "check_commit", "capture_environment", "read_requirements",
           "read_signature", "clean_signature", "clean_links", "normalize_distribution"]


def _git(args: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_ACTING: ContextVar[str | None] = ContextVar("casreg_acting_as", default=None)


@contextmanager
def acting_as(author: str) -> Iterator[None]:
    """Within the block, in this thread or task only, :func:`current_author` is
    ``author`` (for a server acting for the user its request names: ``casreg ui
    --author-header``); the caller has checked ``author``. Nested blocks restore the
    outer author on exit."""
    token = _ACTING.set(author)
    try:
        yield
    finally:
        _ACTING.reset(token)


def current_author() -> str:
    """The author :func:`acting_as` sets in this thread or task, else ``CASREG_USER``,
    else git's ``user.email``, else the OS user (read on every call, so a process that
    changes ``CASREG_USER`` acts as the new user)."""
    acting = _ACTING.get()
    if acting is not None:
        return acting
    user = os.environ.get("CASREG_USER", "").strip()
    if user:
        return user
    return _fallback_author()


@lru_cache(maxsize=1)
def _fallback_author() -> str:
    email = _git(["config", "user.email"])
    if email:
        return email
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def hostname() -> str:
    return socket.gethostname() or platform.node() or "unknown"


@dataclass(frozen=True, slots=True)
class GitState:
    commit: str | None
    dirty: bool | None


def git_state(path: str) -> GitState:
    """HEAD commit and dirty flag of the repository holding ``path``, if any."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    commit = _git(["rev-parse", "HEAD"], cwd=directory)
    if commit is None:
        return GitState(None, None)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd=directory)
    return GitState(commit, bool(status) if status is not None else None)


# -- issue 16: hardware, training code, dependencies, links (docs/lineage.md) -------------------------------
#: ``nvidia-smi`` gets this long; a push never waits more for the hardware.
NVIDIA_SMI_TIMEOUT = 3.0
#: The largest requirements file, signature file and number of dependencies read.
MAX_FILE_BYTES = 1 << 20
MAX_DEPENDENCIES = 10_000
_HARDWARE_TEXT = re.compile(r"^\s*(\d{1,6})\s*[xX×*]\s*(\S.*?)\s*$")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*(.*)$")


def _gpus_from_nvidia_smi() -> list[str] | None:
    """GPU names from ``nvidia-smi`` (one per GPU), ``None`` if it is absent, fails or is slow."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=NVIDIA_SMI_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()][:1024]


def _gpus_from_torch() -> list[str] | None:
    """GPU names from ``torch.cuda``, only if the process already imported torch (importing
    it here would cost seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_available():
            return []
        return [str(cuda.get_device_name(i)) for i in range(int(cuda.device_count()))]
    except Exception:  # noqa: BLE001  (a broken CUDA setup must not fail a push)
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()[:256]
    except OSError:
        pass
    return (platform.processor() or platform.machine() or None)


def _memory_bytes() -> int | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _visible(devices: str | None, gpus: list[str] | None) -> tuple[int | None, str | None]:
    """(count, type) of the GPUs a process sees: ``CUDA_VISIBLE_DEVICES`` (when set)
    narrows what ``nvidia-smi`` lists; set alone, it gives the count but no type."""
    if devices is not None:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        if any(d.startswith("-") for d in ids):  # "-1": no device, and none after the first invalid one
            ids = ids[:next(i for i, d in enumerate(ids) if d.startswith("-"))]
        if gpus is None:
            return len(ids), None
        chosen = [gpus[int(d)] for d in ids if d.isdigit() and int(d) < len(gpus)]
        if len(chosen) != len(ids):  # UUIDs or MIG names: the count, types of all listed
            chosen = gpus[:len(ids)]
        return len(chosen), (_gpu_type(chosen) if chosen else None)
    if gpus is None:
        return None, None
    return len(gpus), (_gpu_type(gpus) if gpus else None)


def _gpu_type(names: list[str]) -> str:
    kinds = sorted(set(names))
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds)


@lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    """The pushing machine's hardware, once per process: GPUs from ``nvidia-smi`` (if on
    PATH, at most :data:`NVIDIA_SMI_TIMEOUT` seconds) or an already imported ``torch``,
    narrowed by ``CUDA_VISIBLE_DEVICES``; CPU model and count; physical memory. Nothing
    here fails: what cannot be seen is None."""
    gpus = _gpus_from_nvidia_smi()
    if gpus is None:
        gpus = _gpus_from_torch()
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    count, kind = _visible(devices, gpus)
    return Hardware(gpu_count=count, gpu_type=kind, cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
                    memory_bytes=_memory_bytes(), cuda_visible_devices=devices[:256] if devices is not None else None,
                    source="detected")


def given_hardware(spec: str | Mapping[str, object]) -> Hardware:
    """Hardware as a user gives it: text (``"8x H100"`` → 8 GPUs of type H100; any other
    text is kept as ``text`` only) or a mapping of :class:`~casreg.records.Hardware`'s
    fields. :class:`InvalidInputError` for anything else."""
    if isinstance(spec, str):
        text = spec.strip()
        if not text or len(text) > 256 or not text.isprintable():
            raise InvalidInputError("--hardware: give a short description such as '8x H100' (1-256 characters)")
        m = _HARDWARE_TEXT.match(text)
        if m:
            return Hardware(gpu_count=int(m[1]), gpu_type=m[2], source="given", text=text)
        return Hardware(source="given", text=text)
    known = {"gpu_count", "gpu_type", "cpu_model", "cpu_count", "memory_bytes", "text"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InvalidInputError(f"hardware: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    values: dict[str, object] = {}
    for k, v in spec.items():
        if k in ("gpu_count", "cpu_count", "memory_bytes"):
            if type(v) is not int or v < 0:
                raise InvalidInputError(f"hardware: {k} must be a whole number >= 0, not {v!r}")
        elif v is not None and (not isinstance(v, str) or len(v) > 256):
            raise InvalidInputError(f"hardware: {k} must be text of at most 256 characters")
        values[k] = v
    return Hardware(source="given", **values)  # type: ignore[arg-type]  # each checked above


def strip_credentials(url: str) -> str:
    """A remote URL without credentials: the userinfo of ``SCHEME://user:token@host/...``
    is dropped, secret-looking query parameters are redacted (:func:`redact_url`); an
    scp-like ``git@host:org/repo`` (a user name, no secret) is kept."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/]*@)?(.*)$", url.strip())
    if m:
        url = m[1] + m[3]
    return redact_url(url)


def code_state(directory: str | os.PathLike[str]) -> CodeInfo:
    """Git commit, branch (None when detached), dirty flag and remote URL (``origin``, else
    the first remote; credentials stripped) of the repository holding ``directory``;
    :class:`InvalidInputError` if it is not a directory inside a git repository."""
    path = os.fspath(directory)
    if not os.path.isdir(path):
        raise InvalidInputError(f"--code {path}: not a directory")
    commit = _git(["rev-parse", "HEAD"], cwd=path)
    if commit is None:
        raise InvalidInputError(f"--code {path}: not in a git repository with a commit")
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd=path)
    branch = _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=path)
    remote = _git(["remote", "get-url", "origin"], cwd=path)
    if remote is None:
        names = (_git(["remote"], cwd=path) or "").split()
        remote = _git(["remote", "get-url", names[0]], cwd=path) if names else None
    return CodeInfo(commit=commit, branch=branch or None, dirty=bool(status) if status is not None else None,
                    remote=strip_credentials(remote)[:2048] if remote else None, source="code")


def check_commit(sha: str) -> str:
    """A commit id as given (``--git-commit``): 7 to 64 hex digits, lowercased."""
    if not _SHA.match(sha.strip()):
        raise InvalidInputError(f"--git-commit {sha[:80]!r}: expected a commit id of 7 to 64 hex digits")
    return sha.strip().lower()


def normalize_distribution(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_Bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def capture_environment() -> dict[str, str]:
    """The installed distributions of this Python environment (``importlib.metadata``):
    normalized name → version, sorted by name."""
    from importlib.metadata import distributions

    found: dict[str, str] = {}
    for dist in distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:  # noqa: BLE001  (a broken installation's metadata)
            continue
        if name and version:
            found.setdefault(normalize_distribution(str(name)), str(version))
    return dict(sorted(found.items())[:MAX_DEPENDENCIES])


def _read_small(path: str | os.PathLike[str], flag: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise InvalidInputError(f"{flag} {os.fspath(path)}: {err.strerror or err}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInputError(f"{flag} {os.fspath(path)}: larger than {MAX_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{flag} {os.fspath(path)}: not UTF-8 text") from None


def read_requirements(path: str | os.PathLike[str]) -> dict[str, str]:
    """A requirements file as ``name -> version`` (``torch==2.1.0`` → ``2.1.0``) or
    ``name -> specifier`` (``numpy>=1.26`` → ``>=1.26``; ``""`` when unpinned; a direct
    reference ``pkg @ URL`` → ``@ URL``, credentials stripped). Comments, blank lines and
    option lines (``-r``, ``-e``, ``--index-url``...) are skipped; environment markers are
    dropped. A line that names no distribution is an :class:`InvalidInputError` naming it."""
    text = _read_small(path, "--requirements")
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line or line.startswith("-"):
            continue
        m = _REQUIREMENT.match(line)
        if not m:
            raise InvalidInputError(f"--requirements {os.fspath(path)} line {number}: cannot read {line[:80]!r}")
        spec = m[3].split(";", 1)[0].strip()
        if spec.startswith("@"):
            spec = "@ " + strip_credentials(spec[1:].strip())
        elif spec.startswith("==") and "," not in spec and "*" not in spec:
            spec = spec[2:].strip()
        elif spec.startswith("(") and spec.endswith(")"):
            spec = spec[1:-1].strip()
        if len(spec) > 1024:
            raise InvalidInputError(f"--requirements {os.fspath(path)} line {number}: the specifier is too long")
        out[normalize_distribution(m[1])] = spec
        if len(out) > MAX_DEPENDENCIES:
            raise InvalidInputError(f"--requirements {os.fspath(path)}: more than {MAX_DEPENDENCIES:,} requirements")
    return dict(sorted(out.items()))


def read_signature(path: str | os.PathLike[str]) -> str:
    """An input/output signature file as canonical JSON text: an object with ``inputs``
    and/or ``outputs`` (and MLflow's optional ``params``), each a JSON value or, as
    MLflow's ``ModelSignature.to_dict()`` writes them, a string holding JSON (decoded
    here). :class:`InvalidInputError` naming the problem otherwise."""
    text = _read_small(path, "--signature")
    return clean_signature(text, f"--signature {os.fspath(path)}")


def clean_signature(text: str | Mapping[str, object], what: str = "signature") -> str:
    """:func:`read_signature` for text or a mapping already in hand."""
    try:
        doc = json.loads(text) if isinstance(text, str) else dict(text)
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict) or not doc or set(doc) - {"inputs", "outputs", "params"}:
        raise InvalidInputError(f"{what}: expected a JSON object with \"inputs\" and/or \"outputs\" "
                                "(and optionally \"params\"), as MLflow's ModelSignature writes it")
    out: dict[str, object] = {}
    for key in ("inputs", "outputs", "params"):
        value = doc.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise InvalidInputError(f"{what}: {key} is a string but not JSON") from None
        if value is not None:
            out[key] = value
    if not out:
        raise InvalidInputError(f"{what}: inputs and outputs are both empty")
    try:
        canonical = json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError, TypeError):
        raise InvalidInputError(f"{what}: cannot be written as JSON") from None
    if len(canonical) > MAX_TEXT:
        raise InvalidInputError(f"{what}: {len(canonical):,} characters as JSON; at most {MAX_TEXT:,}")
    return canonical


def clean_links(links: Mapping[str, object] | None) -> dict[str, str]:
    """Links (``dashboard -> https://...``): names as tag names, values http(s) URLs with
    a host and no credentials (:class:`InvalidInputError` naming the link otherwise)."""
    from urllib.parse import urlsplit

    out: dict[str, str] = {}
    for name, value in clean_labels("link", links).items():
        url = value.strip()
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"link {name}: {redact_url(url)[:200]!r} is not an http:// or https:// URL")
        if "@" in parts.netloc:
            raise InvalidInputError(f"link {name}: a link must not carry credentials (user:password@)")
        if len(url) > 2048 or not url.isprintable() or any(c.isspace() for c in url):
            raise InvalidInputError(f"link {name}: at most 2,048 characters, no spaces or control characters")
        out[name] = url
    return out
