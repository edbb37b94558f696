"""Benchmarks that print ratios (performance targets live here, not in timed tests)."""
