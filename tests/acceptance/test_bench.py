"""A smoke run of `orchestrator bench`: tiny sizes, every case, the documented JSON keys.

It checks that the bench keeps working, never how fast anything is.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from rich.console import Console

from orchestrator.bench import report
from tests.acceptance.test_cli import cli

TINY = ["--orders", "20", "--repeat", "1", "--backlog", "50", "--unloaded-orders", "3",
        "--paced-s", "0.5", "--dispatchers", "1,2", "--ceiling-s", "1",
        "--ceiling-connections", "1,2"]


def test_a_tiny_bench_run_reports_every_figure(dsn: str) -> None:
    done = cli("bench", *TINY, "--json", "--dsn", dsn, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("ceiling_updates_per_s", "ceiling_notify_updates_per_s",
                "ceiling_updates_per_s_at_pool_size", "transitions_per_s",
                "ratio_to_ceiling", "backlog_events_per_s", "backlog_related_events_per_s"):
        assert isinstance(result[key], int | float), key
    assert set(result["latency"]) == {"unloaded_c8", "unloaded_c64", "half_load", "load_80"}
    for name, case in result["latency"].items():
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(case)
        if name.startswith("unloaded"):  # the write-back commits after its handler started
            assert case["written_p50_ms"] > 0 and case["written_p99_ms"] > 0
    assert result["latency"]["unloaded_c8"]["concurrency"] == 8
    assert result["sustained"]["transitions"] == 20 * 6
    # The ceiling is the best at any connection count measured (the pool's 4 is always one).
    by_count = result["ceiling_by_connections"]
    assert set(by_count) >= {"1", "2", "4"}
    assert result["ceiling_updates_per_s"] == max(by_count.values())
    assert by_count[str(result["ceiling_connections"])] == result["ceiling_updates_per_s"]
    assert [run["dispatchers"] for run in result["scaling"]] == [1, 2]
    assert result["backlog"]["events"] == result["backlog_related"]["events"] == 50
    assert {"notifies_per_transition", "commits_per_transition", "wal_bytes_per_transition",
            "connections_per_dispatcher", "dispatcher_peak_rss_mb"} <= set(result["costs"])
    env = result["environment"]
    assert env["cores"] and env["server_version"] and env["date"]
    assert "shared_buffers" in env["server_settings"]
    _assert_table_names_each_figure(result)


def _assert_table_names_each_figure(result: dict[str, Any]) -> None:
    console = Console(width=120, record=True)
    console.print(report.table(result))
    text = console.export_text()
    for label in ("ceiling", "sustained transitions/s", "latency unloaded c8",
                  "latency unloaded c64", "commit to write-back committed", "latency half load",
                  "backlog drain", "with related data", "scaling: 2 dispatcher",
                  "NOTIFYs per transition", "dispatcher peak RSS"):
        assert label in text


def test_a_tiny_remote_case_reports_the_raw_client_the_dispatcher_and_their_ratio(
        dsn: str) -> None:
    done = cli("bench", "--remote-only", "--remote-latency-ms", "5", "--remote-connections",
               "2,4", "--remote-events", "20", "--remote-raw-s", "0.5", "--repeat", "1",
               "--json", "--dsn", dsn, timeout=240)
    assert done.returncode == 0, done.stderr
    remote = json.loads(done.stdout)["remote"]
    assert remote["latency_ms"] == 5 and remote["events"] == 20
    assert [case["connections"] for case in remote["by_connections"]] == [2, 4]
    for case in remote["by_connections"]:
        assert case["raw_calls_per_s"] > 0 and case["dispatcher_calls_per_s"] > 0
        assert case["ratio"] == pytest.approx(
            case["dispatcher_calls_per_s"] / case["raw_calls_per_s"], abs=0.01)
        assert len(case["rounds"]) == 1
        # CPU per call: the raw client's always; the dispatcher's on Linux (/proc, in clock
        # ticks of 10 ms: a drain of 20 events may take less than one).
        assert case["raw_cpu_ms_per_call"] > 0
        # The server's and the function's during the drain (the test server runs here).
        if sys.platform.startswith("linux"):
            assert case["dispatcher_cpu_ms_per_event"] >= 0
            assert case["server_cpu_ms_per_event"] >= 0
            assert case["function_cpu_ms_per_call"] >= 0
    console = Console(width=120, record=True)
    console.print(report.table(json.loads(done.stdout)))
    text = console.export_text()
    assert "ratio to the raw client" in text and "CPU ms per call" in text
    assert "CPU ms per event: server / function" in text


def test_the_remote_case_alone_needs_the_functions_latency(dsn: str) -> None:
    done = cli("bench", "--remote-only", "--dsn", dsn, timeout=60)
    assert done.returncode == 1
    assert "--remote-only needs --remote-latency-ms" in done.stdout + done.stderr


def test_a_tiny_long_run_reports_each_tenth(dsn: str) -> None:
    done = cli("bench", "--long-run", "--long-run-transitions", "600", "--json", "--dsn", dsn,
               timeout=240)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["long_run"]
    assert run["transitions"] == 600
    assert [t["tenth"] for t in run["tenths"]] == list(range(1, 11))
    assert run["transitions_per_s"] > 0
    for tenth in run["tenths"]:  # a tiny run's tenth may pass between two polls: 0 t/s
        assert tenth["transitions_per_s"] >= 0 and tenth["hot_mb"] > 0
        assert {"history_mb", "dead_tuples", "prune_ms"} <= set(tenth)
    console = Console(width=120, record=True)
    console.print(report.table(json.loads(done.stdout)))
    assert "last tenth's t/s over the first's" in console.export_text()


def test_a_long_run_too_short_for_tenths_is_refused(dsn: str) -> None:
    done = cli("bench", "--long-run", "--long-run-transitions", "60", "--dsn", dsn, timeout=60)
    assert done.returncode == 1
    assert "--long-run-transitions takes at least 600, not 60" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
