"""One value type for digests: :class:`Digest`.

A digest is an algorithm and 32 bytes. casreg has one algorithm, BLAKE3, and one
spelling of a digest in records, JSON and messages: ``blake3:<64 lowercase hex>``. A
:class:`Digest` is that spelling, checked when it is made, with the parts as
properties. It subclasses ``str`` so that version records stay plain JSON, Arrow and
SQL values and compare equal to the text a caller already holds
(``v.digest == "blake3:…"``); but ``str`` is not ``Digest``, so a type checker refuses
an unparsed string where a digest is expected: text becomes a digest once, at the
boundary (:meth:`Digest.parse`), and travels as one from there.

Chunk digests stay raw 32-byte ``bytes`` where there are millions of them (pack indexes,
manifests in memory): a digest object per chunk would cost memory for nothing.
"""

from __future__ import annotations

import re
from typing import Final

from blake3 import blake3

__all__ = ["ALGORITHM", "DIGEST_SIZE", "HEX64", "Digest", "is_hex64"]

ALGORITHM: Final = "blake3"
PREFIX: Final = ALGORITHM + ":"
DIGEST_SIZE: Final = 32
#: A full digest as bare lowercase hex (in object keys, pack ids, manifests).
HEX64: Final = re.compile(r"[0-9a-f]{64}")


def is_hex64(text: object) -> bool:
    """True if ``text`` is 64 lowercase hex digits (a digest in an object key)."""
    return isinstance(text, str) and len(text) == 64 and HEX64.fullmatch(text) is not None


class Digest(str):
    """``blake3:<64 lowercase hex>``, validated on construction.

    >>> d = Digest.of(b"abc")
    >>> d.algorithm, len(d.raw), d == "blake3:" + d.hex
    ('blake3', 32, True)
    >>> Digest.parse("blake3:" + "0" * 63)
    Traceback (most recent call last):
    ...
    ValueError: not a blake3 digest: 'blake3:000000000000000000000000000000000000000000000000000000000000000'
    """

    __slots__ = ()

    def __new__(cls, text: str) -> Digest:
        if type(text) is cls:
            return text
        if not isinstance(text, str) or len(text) != len(PREFIX) + 64 or not text.startswith(PREFIX) \
                or HEX64.fullmatch(text, len(PREFIX)) is None:
            raise ValueError(f"not a {ALGORITHM} digest: {str(text)[:80]!r}")
        return super().__new__(cls, text)

    # -- making one ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Digest:
        """``blake3:<64 hex>`` (the only accepted spelling) → :class:`Digest`; ``ValueError``
        for anything else. Callers translate the error to what the text was: bad input
        (exit 2) when a user typed it, an integrity error (exit 6) when a store held it."""
        return cls(text)

    @classmethod
    def from_hex(cls, hexdigest: str) -> Digest:
        """64 lowercase hex digits (an object key's spelling) → :class:`Digest`."""
        return cls(PREFIX + hexdigest)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Digest:
        """The 32 bytes of a digest → :class:`Digest`."""
        if len(raw) != DIGEST_SIZE:
            raise ValueError(f"a {ALGORITHM} digest has {DIGEST_SIZE} bytes, not {len(raw)}")
        return cls(PREFIX + raw.hex())

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The digest of ``data``."""
        return cls(PREFIX + blake3(data).hexdigest())

    # -- its parts -------------------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @property
    def hex(self) -> str:
        """The 64 hex digits, as object keys spell it."""
        return str.__str__(self)[len(PREFIX):]

    @property
    def raw(self) -> bytes:
        """The 32 bytes."""
        return bytes.fromhex(self.hex)

    def short(self, digits: int = 12) -> str:
        """``blake3:`` and the first ``digits`` hex digits, for people."""
        return PREFIX + self.hex[:digits]

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"

    def __reduce__(self) -> tuple[type[Digest], tuple[str]]:
        return Digest, (str.__str__(self),)
