"""Benchmarks: figures, not pass/fail tests. Run them with `make` targets or `python -m`."""
