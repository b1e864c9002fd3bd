"""Helpers for testing casreg and code built on it (not imported by casreg itself)."""
