"""A retention rule: which versions of a model to keep (the rest may be deleted).

Given on the command line (``casreg retain NAME --keep-last 3 --keep-since 90d
--keep-stages``) or stored in the policy, for every model or one::

    [retention]                 # every model
    keep_last = 20              # the newest 20 versions that are not deleted
    keep_since = "90d"          # and every version younger than 90 days
    keep_stages = true          # and every version at an alias, or ever at staging or production

    [models."scratch".retention]
    enabled = false             # never applied to this model by gc --retain

This module only parses and describes rules (no I/O); :mod:`casreg.governance.retention`
applies them. A rule must keep something by itself: ``keep_last`` (at least 1) or
``keep_since``, so no rule ever deletes every version of a model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from casreg.errors import InvalidInputError, InvalidPolicyError
from casreg.records import JsonValue, sum_time_units

__all__ = ["RetentionRule", "parse_age", "parse_retention", "MAX_KEEP_LAST"]

MAX_KEEP_LAST = 1_000_000
_AGE = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_AGE_UNITS: dict[str | None, float] = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_age(text: str) -> timedelta:
    """``90d``, ``12w``, ``36h``, ``2d12h``, ``90m``, ``30s``: an age (whole units)."""
    s = str(text).strip().lower()
    if not s:
        raise InvalidInputError("invalid age '': use e.g. 90d, 12w, 36h or 2d12h")
    seconds = sum_time_units(s, _AGE, _AGE_UNITS)
    if seconds is None:
        raise InvalidInputError(f"invalid age {text!r}: use e.g. 90d, 12w, 36h or 2d12h")
    if seconds > 100 * 365 * 86400:
        raise InvalidInputError(f"invalid age {text!r}: at most 100 years")
    return timedelta(seconds=int(seconds))


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Keep the newest ``keep_last`` live versions, those younger than ``keep_since``,
    and with ``keep_stages`` those at an alias or ever at staging or production. What an
    alias points at and what the policy protects is kept whatever the rule says."""

    keep_last: int | None = None
    keep_since: timedelta | None = None
    keep_stages: bool = False

    def __post_init__(self) -> None:
        if self.keep_last is None and self.keep_since is None:
            raise InvalidInputError("a retention rule needs --keep-last N or --keep-since AGE (keep_last or "
                                    "keep_since in the policy): it must keep something by itself")
        if self.keep_since is not None and self.keep_since <= timedelta(0):
            raise InvalidInputError("keep-since must be a positive age (e.g. 90d): a rule must keep something "
                                    "by itself")
        if self.keep_last is not None and (type(self.keep_last) is not int or not 1 <= self.keep_last
                                           <= MAX_KEEP_LAST):
            raise InvalidInputError(f"keep-last must be a whole number from 1 to {MAX_KEEP_LAST:,}, "
                                    f"not {self.keep_last!r}")

    def describe(self) -> str:
        """``keep the last 3, those younger than 90d, and those in a stage``."""
        parts = []
        if self.keep_last is not None:
            parts.append(f"the last {self.keep_last}")
        if self.keep_since is not None:
            parts.append(f"those younger than {_age_text(self.keep_since)}")
        if self.keep_stages:
            parts.append("those at an alias or ever in staging or production")
        return "keep " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])

    def to_dict(self) -> dict[str, JsonValue]:
        return {"keep_last": self.keep_last,
                "keep_since": _age_text(self.keep_since) if self.keep_since is not None else None,
                "keep_stages": self.keep_stages}


def parse_retention(spec: Any, where: str = "retention") -> RetentionRule | None:
    """The ``[retention]`` table of a policy (merged with a model's own), or ``None``
    when there is none or it says ``enabled = false``; :class:`InvalidPolicyError`
    naming the key otherwise."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise InvalidPolicyError(f"{where}: expected a table (keep_last, keep_since, keep_stages, enabled)")
    unknown = set(spec) - {"keep_last", "keep_since", "keep_stages", "enabled"}
    if unknown:
        raise InvalidPolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                                 "(known: keep_last, keep_since, keep_stages, enabled)")
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidPolicyError(f"{where}.enabled: expected true or false")
    keep_last = spec.get("keep_last")
    if keep_last is not None and (type(keep_last) is not int or not 1 <= keep_last <= MAX_KEEP_LAST):
        raise InvalidPolicyError(f"{where}.keep_last: expected a whole number from 1 to {MAX_KEEP_LAST:,}")
    since = spec.get("keep_since")
    if since is not None and not isinstance(since, str):
        raise InvalidPolicyError(f"{where}.keep_since: expected an age such as \"90d\"")
    stages = spec.get("keep_stages", False)
    if not isinstance(stages, bool):
        raise InvalidPolicyError(f"{where}.keep_stages: expected true or false")
    try:
        age = parse_age(since) if since is not None else None
        if not enabled:
            return None
        return RetentionRule(keep_last, age, stages)
    except InvalidInputError as err:
        raise InvalidPolicyError(f"{where}: {err}") from None
