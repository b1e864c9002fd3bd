"""Every error casreg raises on purpose.

Expected failures (bad input, missing things, conflicts, corruption) are subclasses of
:class:`CasregError` and also of the builtin exception a caller would naturally catch, so
``except FileNotFoundError`` works on an unknown reference. The CLI turns any
``CasregError`` into one line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.

No message carries a credential: every ``CasregError`` passes its text arguments
through :func:`casreg.redact.redact_url` when it is made, so a URL's ``user:pass@`` and
secret-looking query values (``?token=``) become ``***`` in ``str(err)``, ``err.args``
and ``repr(err)`` alike, whichever message quoted the URL.
"""

from __future__ import annotations

from casreg.redact import redact_url

__all__ = [
    "CasregError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidReferenceError",
    "UnknownStageError",
    "NotFoundError",
    "UnknownReferenceError",
    "AmbiguousReferenceError",
    "AlreadyExistsError",
    "ConflictError",
    "IntegrityError",
    "UnsafePathError",
    "StorageError",
    "UnsupportedBackendError",
    "PolicyError",
    "InvalidPolicyError",
    "MissingMetadataError",
    "AliasNotMovedError",
    "MissingDependencyError",
    "DeletedVersionError",
]


class CasregError(Exception):
    """Base of every expected casreg failure; its message is one line meant for a human,
    with the credentials of any URL in it redacted (module docstring)."""

    exit_code: int = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_url(a) if isinstance(a, str) else a for a in args))


class InvalidInputError(CasregError, ValueError):
    """The caller passed something malformed (a flag, a path, a value)."""

    exit_code = 2


class InvalidNameError(InvalidInputError):
    """A model or alias name breaks the naming rules."""


class InvalidReferenceError(InvalidInputError):
    """A reference string does not follow the reference grammar."""


class UnknownStageError(InvalidInputError):
    """``promote`` was given a word that is neither a stage nor an alias the policy gates
    (a typo such as ``prod``, or a free-form alias, which ``set_alias`` moves).
    ``suggestion`` is the stage or gated alias it most resembles, if any."""

    def __init__(self, message: str, *, stage: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.stage, self.suggestion = stage, suggestion


class NotFoundError(CasregError, FileNotFoundError):
    """Something that was asked for does not exist (a path, an object, a version)."""

    exit_code = 3

    def __str__(self) -> str:  # FileNotFoundError's str() would show an errno tuple
        return str(self.args[0]) if self.args else ""


class UnknownReferenceError(NotFoundError):
    """A well-formed reference names no version in this registry."""


class DeletedVersionError(UnknownReferenceError):
    """The reference names a version that was deleted (``casreg delete``, ``retain``): its
    ledger record stays, but it no longer resolves or pulls. A :class:`NotFoundError`
    (exit 3), so code that handles "no such version" handles this too; the message says
    who deleted it, when and why. ``name``, ``version``, ``deleted_by``, ``deleted_at``
    (ISO 8601) and ``reason`` say the same for programs."""

    def __init__(self, message: str, *, name: str, version: int, deleted_by: str, deleted_at: str,
                 reason: str | None) -> None:
        super().__init__(message)
        self.name, self.version, self.deleted_by, self.deleted_at, self.reason = (
            name, version, deleted_by, deleted_at, reason)


class AmbiguousReferenceError(CasregError, LookupError):
    """A digest prefix matches more than one version."""

    exit_code = 2


class AlreadyExistsError(CasregError, FileExistsError):
    """A create-if-absent write found the key already there, or a destination exists."""

    exit_code = 4

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConflictError(CasregError):
    """A compare-and-swap lost a race: someone else changed the state first."""

    exit_code = 5


class IntegrityError(CasregError):
    """Stored bytes do not match their digest; the data is refused, never returned."""

    exit_code = 6


class UnsafePathError(IntegrityError):
    """A manifest entry would write outside the destination (absolute, ``..``, symlink)."""


class StorageError(CasregError, OSError):
    """The registry's storage failed (unreachable, read-only, permission denied)."""

    exit_code = 7

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedBackendError(StorageError):
    """The storage URL names a filesystem that cannot offer the atomic operations we need."""


class PolicyError(CasregError, PermissionError):
    """The registry's policy refuses the action (a missing permission, a failed gate,
    missing metadata); the message names the rule and what would satisfy it."""

    exit_code = 8

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingMetadataError(PolicyError):
    """A push lacks metadata the policy requires; ``missing`` names the fields
    (``metrics.auc``, ``lineage.dataset``, ``framework``...)."""

    def __init__(self, message: str, *, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


class InvalidPolicyError(InvalidInputError):
    """A policy file is malformed (the message gives the line and column, or the key)."""


class AliasNotMovedError(CasregError):
    """A push committed its version, but the alias move it was asked for failed (refused
    by the policy, a conflict, damage): the version exists, the alias did not move. The
    committed version is ``name``:``version`` with ``digest``; ``cause`` is the move's
    error, whose exit code this error keeps."""

    def __init__(self, message: str, *, name: str, version: int, digest: str, cause: CasregError) -> None:
        super().__init__(message)
        self.name, self.version, self.digest, self.cause = name, version, digest, cause
        self.exit_code = cause.exit_code

    @property
    def ref(self) -> str:
        """``NAME:N`` of the committed version."""
        return f"{self.name}:{self.version}"


class MissingDependencyError(CasregError, ImportError):
    """An optional library a call needs is not installed (the message says which, and
    how to install it or what to do instead)."""

    exit_code = 2
