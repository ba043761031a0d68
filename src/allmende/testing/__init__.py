"""Helpers for tests, benchmarks and the walk-through (need the `dev` extras)."""
