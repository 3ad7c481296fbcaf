"""Benchmarks: figures, not pass/fail tests. Run them with `make` targets or `python -m`.

``bench.faults`` (with ``bench.chaos``) injects faults under load; it runs from a checkout.
``perf/`` is `orchestrator bench`: throughput, latency and costs against the server's own UPDATE
ceiling; it ships in the package as ``orchestrator.bench``.
"""
