"""Settings read from the environment, parsed one way everywhere."""

from __future__ import annotations

import os

from casreg.errors import InvalidInputError

__all__ = ["count_from_env"]


def count_from_env(name: str, default: int, zero_turns_off: str) -> int:
    """The non-negative integer ``$name``, else ``default`` (unset or blank). Anything else
    is :class:`InvalidInputError` saying so, and that 0 turns ``zero_turns_off`` off (the
    threshold of an automatic step: ``"automatic compaction"``)."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInputError(f"{name}={text!r} is not an integer (0 turns {zero_turns_off} off)") from None
    if value < 0:
        raise InvalidInputError(f"{name}={text!r} is negative (0 turns {zero_turns_off} off)")
    return value
