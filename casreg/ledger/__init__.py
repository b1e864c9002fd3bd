"""The ledger layer: immutable version records and events, deployment pointers, SQL.

Segments and their compacted copies (Parquet), event recording, alias pointers moved by
compare-and-swap, resolving references to digests, and DuckDB views over all of it. It
uses the content layer only to read what a digest names (docs/ARCHITECTURE.md).
"""
