"""The content layer: how bytes become chunks, packs and manifests, and back.

Chunking (FastCDC), codecs, packs and their indexes, version manifests and their
digests, the local chunk cache, and the push and pull paths over a bytes-only
:class:`~casreg.storage.ObjectStore`. Nothing here knows about model names, version
numbers or aliases: that is the ledger's (docs/ARCHITECTURE.md).
"""
