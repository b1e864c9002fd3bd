"""Benchmarks and workload generators for casreg (not part of the installed package)."""
