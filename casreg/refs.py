"""The one reference grammar shared by the CLI, the Python API and ``casreg://`` URLs.

Parsing never touches storage: a :class:`Ref` says *what* was asked for; the registry
resolves it once per operation to a digest and then reads by digest only, so a pointer
that moves mid-operation can never mix two versions.

Grammar (also in docs/FORMAT.md)::

    ref         = name                      latest version of a model
                | name ":" number           version N (1, 2, ...)
                | name "@" alias            what the alias points at
                | name "@" digest           that content, which must be a version of name
                | digest                    content by digest, any model
    digest      = "blake3:" hex{12,64} | hex{12,64}      (a shorter hex is a unique prefix)
    name        = [A-Za-z0-9][A-Za-z0-9._-]{0,127}, no "..", not 12 or more hex digits only
    alias       = [a-z][a-z0-9_-]{0,63}, not "latest" or "blake3"
    number      = [1-9][0-9]{0,17}

After ``name@`` a digest needs its ``blake3:`` prefix (``name@<hex>`` would read as an
alias).

Names carry no ``/`` so that ``casreg://name@alias/dir/file`` splits unambiguously at the
first slash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from casreg.errors import InvalidNameError, InvalidReferenceError

__all__ = [
    "ALIAS_PATTERN",
    "NAME_PATTERN",
    "DIGEST_PREFIX",
    "MIN_PREFIX_HEX",
    "Ref",
    "RefKind",
    "parse_ref",
    "split_ref_path",
    "validate_name",
    "validate_alias",
    "format_digest",
    "parse_digest",
]

DIGEST_PREFIX = "blake3:"
MIN_PREFIX_HEX = 12
FULL_HEX = 64
MAX_NAME = 128
MAX_ALIAS = 64
RESERVED_ALIASES = frozenset({"latest", "blake3"})

#: The shape of a model name and of an alias (the other rules are in the validators);
#: :mod:`casreg.keys` uses the same patterns to parse keys.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
_ALIAS_RE = re.compile(ALIAS_PATTERN)
_HEX_RE = re.compile(r"[0-9a-fA-F]{12,64}")
_ALL_HEX_RE = re.compile(r"[0-9a-fA-F]{12,}")
_NUMBER_RE = re.compile(r"[1-9][0-9]{0,17}")


class RefKind(StrEnum):
    LATEST = "latest"
    NUMBER = "number"
    ALIAS = "alias"
    DIGEST = "digest"


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference. Exactly one of ``number``, ``alias``, ``digest`` may be set;
    with none set, it means the latest version of ``name``.

    ``digest`` holds lowercase hex without the ``blake3:`` prefix; fewer than 64 digits
    make it a prefix that must match exactly one stored version.
    """

    name: str | None = None
    number: int | None = None
    alias: str | None = None
    digest: str | None = None

    @property
    def kind(self) -> RefKind:
        if self.digest is not None:
            return RefKind.DIGEST
        if self.alias is not None:
            return RefKind.ALIAS
        if self.number is not None:
            return RefKind.NUMBER
        return RefKind.LATEST

    @property
    def is_prefix(self) -> bool:
        return self.digest is not None and len(self.digest) < FULL_HEX

    def __str__(self) -> str:
        if self.digest is not None:
            d = DIGEST_PREFIX + self.digest
            return f"{self.name}@{d}" if self.name else d
        assert self.name is not None
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.number is not None:
            return f"{self.name}:{self.number}"
        return self.name


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise with the rule it breaks."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("model name is empty")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"model name is {len(name)} characters long; the limit is {MAX_NAME}")
    if ".." in name:
        raise InvalidNameError(f"invalid model name {name!r}: '..' is not allowed")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no spaces, '/', ':' or '@')"
        )
    if _ALL_HEX_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: 12 or more hex digits alone read as a digest prefix"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias (``staging``, ``champion``, ...)."""
    if not isinstance(alias, str) or not alias:
        raise InvalidNameError("alias is empty")
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' and '-', "
            f"starting with a letter, at most {MAX_ALIAS} characters"
        )
    if alias in RESERVED_ALIASES:
        raise InvalidNameError(f"invalid alias {alias!r}: it is reserved")
    return alias


def parse_digest(text: str, *, allow_prefix: bool = True) -> str:
    """Parse ``blake3:HEX`` or bare ``HEX`` to lowercase hex; raise if malformed."""
    hexpart = text[len(DIGEST_PREFIX):] if text.startswith(DIGEST_PREFIX) else text
    if not _HEX_RE.fullmatch(hexpart):
        raise InvalidReferenceError(
            f"invalid digest {text!r}: expected blake3: followed by {MIN_PREFIX_HEX} to {FULL_HEX} hex digits"
        )
    if not allow_prefix and len(hexpart) != FULL_HEX:
        raise InvalidReferenceError(f"invalid digest {text!r}: expected all {FULL_HEX} hex digits")
    return hexpart.lower()


def format_digest(hexdigest: str) -> str:
    return DIGEST_PREFIX + hexdigest


def parse_ref(text: str) -> Ref:
    """Parse a reference string; raises :class:`InvalidReferenceError` or
    :class:`InvalidNameError` with a one-line reason. Does no I/O."""
    if not isinstance(text, str) or not text:
        raise InvalidReferenceError("empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReferenceError(f"invalid reference {text!r}: whitespace is not allowed")
    if text.startswith(DIGEST_PREFIX) or _ALL_HEX_RE.fullmatch(text):
        return Ref(digest=parse_digest(text))
    if "@" in text:
        name, _, target = text.partition("@")
        validate_name(name)
        if target.startswith(DIGEST_PREFIX):
            return Ref(name=name, digest=parse_digest(target))
        if not target:
            raise InvalidReferenceError(f"invalid reference {text!r}: nothing after '@'")
        return Ref(name=name, alias=validate_alias(target))
    if ":" in text:
        name, _, number = text.partition(":")
        validate_name(name)
        if not _NUMBER_RE.fullmatch(number):
            raise InvalidReferenceError(
                f"invalid reference {text!r}: the version after ':' must be a number from 1 up"
            )
        return Ref(name=name, number=int(number))
    return Ref(name=validate_name(text))


def split_ref_path(text: str) -> tuple[Ref, str]:
    """Split ``REF/path/inside`` (an optional ``casreg://`` scheme is dropped) into the
    parsed reference and the path inside the version (``""`` for the version root)."""
    if text.startswith("casreg://"):
        text = text[len("casreg://"):]
    head, _, rest = text.partition("/")
    return parse_ref(head), rest.strip("/")
