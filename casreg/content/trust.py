"""What a push trusts: a pack is used for dedup only once its bytes are proven readable.

An index object (``index/<aa>/<id>.idx``) is named by its own BLAKE3, but anyone who can
write to a registry can write one: naming real chunk digests next to a garbage pack, no
pack, a truncated pack, or payloads at other offsets. A push that believed it would
commit a version nobody can read ("dedup 100%"). So (docs/security.md, "What push
trusts"):

- an index is *considered* only if its layout is one a writer produces
  (:func:`casreg.content.packs.pack_layout`: payloads back to back from the magic, known codecs, sizes within
  the registry's bounds), which fixes the exact size its pack must have;
- a pack is *used* only once it is **confirmed**: this machine wrote it (and checked its
  encoding before writing), or read it whole and found the magic, every payload decoding
  at its offset to bytes with its digest, the index as its trailer and nothing after it
  (:func:`casreg.content.packs.verify_pack`);
- a confirmation is remembered per (registry, pack) on this machine
  (:class:`VerifiedPacks`, under the cache directory), so each pack is read back at most
  once per machine, not once per push.

Nothing here writes to the registry.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from blake3 import blake3

from casreg.content.cache import cache_for
from casreg.storage import ObjectStore

__all__ = ["VerifiedPacks"]

log = logging.getLogger(__name__)


def _registry_id(store: ObjectStore, config: bytes) -> str:
    """Who this registry is: its URL and its ``casreg.json`` (which holds the time it was
    created), so a registry re-created at the same URL shares no confirmation."""
    return blake3(store.url.encode() + b"\0" + config).hexdigest()[:32]


_SEEN: dict[str, set[str]] = {}  # registry id -> packs confirmed by this process
_SEEN_LOCK = threading.Lock()


STATE_DIR_ENV = "CASREG_STATE_DIR"


def default_state_dir() -> Path:
    """Where this machine keeps what it learnt about registries that is not a cache of
    their bytes: ``$CASREG_STATE_DIR``, else ``$XDG_STATE_HOME/casreg``, else
    ``~/.local/state/casreg``."""
    explicit = os.environ.get(STATE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return (base / "casreg").absolute()


class VerifiedPacks:
    """The packs of one registry this machine has confirmed (written or read back whole).

    Kept in memory for the process and on disk as empty files
    ``<dir>/verified-packs/<registry id>/<aa>/<pack id>``: ``<dir>`` is the local chunk
    cache's directory where the cache is used for the registry
    (:func:`casreg.content.cache.cache_for`: remote registries, or every one with
    ``CASREG_CACHE=on``; docs/cache.md), else the state directory
    (:func:`default_state_dir`), so a local registry's pushes do not read back, in every
    new process, the packs this machine already confirmed. ``memory://`` registries live in
    one process and keep confirmations in memory only. The registry id hashes the URL and
    ``casreg.json`` (which holds the time the registry was created), so a registry
    re-created at the same URL inherits nothing. A confirmation records that the pack was
    whole when it was written or read; a pack changed *afterwards* (a registry never
    rewrites one) is damage that ``casreg verify`` finds, not something each push re-reads.
    Whoever can write that directory can make pushes trust a pack: it is the user's own
    directory (docs/security.md). A directory that cannot be written keeps confirmations
    in memory only, with one warning."""

    def __init__(self, store: ObjectStore, config: bytes, root: Path | None = None, *,
                 persist: bool | None = None) -> None:
        """``root``: the directory to keep confirmations under (default: the chunk
        cache's, where it is used for ``store``, else :func:`default_state_dir`);
        ``persist``: whether to keep them on disk (default: unless ``store`` is
        ``memory://``)."""
        chosen = cache_for(store)
        if persist is None:
            persist = not store.url.startswith("memory://")
        rid = _registry_id(store, config)
        base = root if root is not None else (chosen.root if chosen is not None else default_state_dir())
        self.dir: Path | None = base / "verified-packs" / rid if persist else None
        with _SEEN_LOCK:
            self._known = _SEEN.setdefault(rid, set())
        self._lock = _SEEN_LOCK

    def _path(self, pack_id: str) -> Path | None:
        return None if self.dir is None else self.dir / pack_id[:2] / pack_id

    def __contains__(self, pack_id: str) -> bool:
        with self._lock:
            if pack_id in self._known:
                return True
        path = self._path(pack_id)
        if path is not None and path.is_file():
            with self._lock:
                self._known.add(pack_id)
            return True
        return False

    def add(self, pack_id: str) -> None:
        """Record that ``pack_id`` is confirmed (call only after writing or verifying it)."""
        with self._lock:
            self._known.add(pack_id)
        path = self._path(pack_id)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        except OSError as err:
            log.warning("casreg: cannot record verified packs in %s (%s); later pushes will read them back again",
                        self.dir, err.strerror or err)
            self.dir = None
