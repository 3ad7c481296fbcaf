"""Prometheus metrics and structured logs of a dispatcher, as an operator's tools see them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.test_cli import ROOT, cli
from tests.conftest import FAST
from tests.support.net import get
from tests.support.processes import Output, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples | None:
    """Every sample at the endpoint, keyed by name and sorted labels; None if it is not up."""
    body = get(url)
    if body is None:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, lbl), v in samples.items()
               if n == name and set(labels.items()) <= set(lbl))


def test_a_scrape_during_a_demo_run_shows_the_figures_move(dsn: str) -> None:
    env = {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()} | {
        "ORCHESTRATOR_DSN": dsn}
    # Port 0: the dispatcher binds a free port and logs it. Another loopback address than the
    # default 127.0.0.1, to see --metrics-host obeyed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--log-level", "INFO", "run",
         "--metrics-port", "0", "--metrics-host", "127.0.0.2"], cwd=ROOT, env=os.environ | env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        url = output.wait_for(r"Prometheus metrics on (http://127\.0\.0\.2:\d+/metrics)",
                              what="the metrics address in the log")
        assert get(url.replace("127.0.0.2", "127.0.0.1"), timeout_s=5) is None
        before: Any = None

        def up() -> bool:
            nonlocal before
            before = scrape(url)
            return before is not None and total(before, "orchestrator_listen_up") == 1

        wait_for(up, what="the metrics endpoint with LISTEN up")
        assert total(before, "orchestrator_events_claimed_total") == 0
        assert total(before, "orchestrator_database_up") == 1
        assert total(before, "orchestrator_rows", workflow="food_order") == 0

        # Seed 8 places 60 orders; four are the expired card's and die in `charge`.
        assert cli("seed", "--orders", "60", "--seed", "8", "--dsn", dsn).returncode == 0
        after: Any = None

        def settled() -> bool:
            nonlocal after
            after = scrape(url)
            return after is not None and total(after, "orchestrator_dead_events") == 4 and \
                total(after, "orchestrator_rows", state="placed") == 0 and \
                total(after, "orchestrator_events_pending") == 0

        wait_for(settled, timeout_s=120, what="the demo orders to settle in the metrics")
        charge = "orchestrator.demo.handlers.food_order.charge"
        assert total(after, "orchestrator_events_claimed_total", handler=charge) >= 60
        assert total(after, "orchestrator_events_done_total", outcome="applied") > 60
        assert total(after, "orchestrator_events_retried_total", handler=charge) >= 12
        assert total(after, "orchestrator_events_dead_total", handler=charge) == 4
        assert total(after, "orchestrator_handler_duration_seconds_count", handler=charge) >= 60
        assert total(after, "orchestrator_event_lag_seconds_count", workflow="food_order") >= 60
        assert total(after, "orchestrator_rows", workflow="food_order") == 60
        assert total(after, "orchestrator_rows", state="failed") == 4
        assert total(after, "orchestrator_listen_reconnects_total") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        out = output.close()
    assert proc.returncode == 0, out


def test_an_unusable_metrics_port_is_one_line(dsn: str) -> None:
    done = cli("run", "--until-idle", "--metrics-port", "70000", "--dsn", dsn)
    assert done.returncode == 1 and "metrics_port must be a port number" in done.stderr


def run_jobs(dsn: str, sql: Any, *flags: str) -> list[str]:
    sql("INSERT INTO jobs (fail_times) VALUES (0), (1), (9)")
    done = cli("--log-level", "INFO", "run", "--until-idle", "--handlers", "tests.support.jobs",
               "--dsn", dsn, *flags)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_log_format_json_is_one_object_per_line_with_the_event_fields(dsn: str,
                                                                      sql: Any) -> None:
    lines = [json.loads(line) for line in run_jobs(dsn, sql, "--log-format", "json")]
    events = [x for x in lines if "event_id" in x]
    assert {"applied", "retry", "dead"} <= {x["outcome"] for x in events}
    for x in events:
        assert {"time", "level", "logger", "message", "event_id", "row_key", "transition",
                "attempt", "handler", "duration_ms"} <= set(x)
    dead = next(x for x in events if x["outcome"] == "dead")
    assert dead["level"] == "warning" and dead["attempt"] == 3
    assert dead["transition"] == "status: None -> new"
    assert "boom on attempt 3" in dead["error"] and dead["duration_ms"] >= 0


def test_the_default_log_format_reads_as_text(dsn: str, sql: Any) -> None:
    lines = run_jobs(dsn, sql)
    assert not any(line.startswith("{") for line in lines)
    assert any(" INFO orchestrator.events: event " in line and ": applied by start in " in line
               for line in lines)
    assert any(" is dead: RuntimeError: boom on attempt 3" in line for line in lines)
