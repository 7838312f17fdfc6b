"""Helpers for tests, drills and benchmarks (not used by the daemon itself)."""
