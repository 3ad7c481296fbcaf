"""`orchestrator bench`: how close the engine comes to the rate PostgreSQL commits row updates.

One run against one server measures the ceiling (pgbench, single-row UPDATEs), sustained
throughput of a no-op workflow, latency unloaded and under paced load, a backlog drain,
scaling over dispatcher processes, and what each transition costs (commits, NOTIFYs, WAL).
It is a benchmark, not a test: figures depend on the machine and on what else runs there.
"""
