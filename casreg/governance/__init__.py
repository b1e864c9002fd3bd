"""The governance layer: the policy, the lifecycle of versions, hooks, search and diff.

Functions here take what they need (a store, a hook dispatcher) and never the
:class:`~casreg.Registry` façade (docs/ARCHITECTURE.md).
"""
