"""The damage the codec property tests do to a stored payload (test_planes, test_delta,
test_codec_checks): one place, so that every codec's decoder is refused the same harm."""

from __future__ import annotations

#: The kinds :func:`damage` does; a test adds its codec's own (a plane's size or mode field).
KINDS = ("flip", "truncate", "trailing", "header")


def damage(payload: bytearray, how: str, at: int, value: int, junk: bytes, *, header: int) -> bytearray:
    """``payload`` with one bit flipped at ``at`` (``"flip"``), cut at ``at``
    (``"truncate"``), ``junk`` appended (``"trailing"``) or byte ``at`` of its first
    ``header`` bytes set to ``value`` (``"header"``); any other ``how`` leaves it as it is,
    for the caller's own kinds. Positions wrap around the payload's length."""
    if how == "flip":
        payload[at % len(payload)] ^= 1 << (value % 8)
    elif how == "truncate":
        payload = payload[:at % len(payload)]
    elif how == "trailing":
        payload += junk
    elif how == "header":
        payload[at % header] = value
    return payload
