"""Listing a registry's pack indexes, fast on a remote store.

Every push lists ``index/`` (casreg.content.packs.ChunkIndex.load), as does writing an
index bundle (casreg.content.bundles). S3 returns a thousand keys a request, one request
after the other: the 177,778 indexes of 8 million chunks take 178 requests in a row.
"""

from __future__ import annotations

import re

from casreg.concurrency import map_concurrently
from casreg.keys import INDEXES
from casreg.storage import ObjectStore

__all__ = ["LIST_THREADS", "list_indexes"]

_HEX2 = re.compile(r"[0-9a-f]{2}")

#: Threads that list ``index/<aa>/`` prefixes at once (list_indexes).
LIST_THREADS = 16
_PAGE = 1000  # keys a listing request returns (S3's most)


def list_indexes(store: ObjectStore) -> list[str]:
    """Every key under ``index/``. A remote store lists a thousand keys a request, one
    request after the other: 178 requests for the 177,778 indexes of 8 million chunks.
    Once the listing shows that listing the ``index/<aa>/`` prefixes still to come
    :data:`LIST_THREADS` at a time takes at most half as many rounds of requests, it stops
    and does that (a registry of a few thousand packs is listed page by page as before).
    Keys that are no index's (anything but ``index/<aa>/...``) may then be missed: they
    are never used. This relies on a remote store that lists from a key (S3's
    ``StartAfter``) listing in key order, as S3 does; should the keys seen so far not be
    in order, it goes on page by page."""
    listing = store.list(INDEXES)
    if not store.capabilities.remote or not store.capabilities.list_after:
        return list(listing)
    keys: list[str] = []
    ordered = True
    for key in listing:
        ordered = ordered and (not keys or keys[-1] < key)
        keys.append(key)
        if len(keys) % _PAGE or len(keys) < 2 * _PAGE or not ordered:
            continue
        fan = key[len(INDEXES) + 1:len(INDEXES) + 3]
        if key[len(INDEXES) + 3:len(INDEXES) + 4] != "/" or _HEX2.fullmatch(fan) is None:
            continue
        done = int(fan, 16) + 1  # prefixes 00 to fan listed, fan perhaps in part
        per_prefix = len(keys) / done
        pages_left = per_prefix * (256 - done) / _PAGE
        rounds = -(-(256 - done) // LIST_THREADS) * max(1, -(-int(per_prefix) // _PAGE))
        if 2 * rounds > pages_left:
            continue
        close = getattr(listing, "close", None)
        if close is not None:
            close()  # no more pages of the listing in one
        rest = [f"{INDEXES}/{n:02x}" for n in range(done, 256)]
        keys += store.list_after(f"{INDEXES}/{fan}", key)  # the prefix in progress, after its last key seen
        for part in map_concurrently(lambda prefix: list(store.list(prefix)), rest, threads=LIST_THREADS):
            keys += part
        return keys
    return keys
