"""The maintenance layer: ``verify`` (re-hash everything reachable) and ``gc`` (reclaim
what nothing reaches), and what they share (docs/gc.md, docs/ARCHITECTURE.md).
"""
