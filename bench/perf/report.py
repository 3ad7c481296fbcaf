"""The bench's figures as one table (the same figures `--json` prints)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def table(r: dict[str, Any]) -> Table:
    env = r["environment"]
    out = Table(title=f"orchestrator bench - PostgreSQL {env['server_version']}, "
                      f"{env['cores']} cores, {env['date']}",
                title_justify="left", show_header=False)
    out.add_column("figure")
    out.add_column("value", justify="right")
    if "costs" in r:
        _engine_rows(out, r)
    if "remote" in r:
        _remote_rows(out, r["remote"])
    if "long_run" in r:
        _long_run_rows(out, r["long_run"])
    return out


def _long_run_rows(out: Table, run: dict[str, Any]) -> None:
    out.add_row(f"long run: {run['transitions']} transitions in {run['seconds']:.0f} s",
                f"{run['transitions_per_s']:.0f} t/s")
    out.add_row("  per tenth: t/s, queue MB, history MB, dead tuples, prune ms", "")
    for t in run["tenths"]:
        out.add_row(f"  tenth {t['tenth']}",
                    f"{t['transitions_per_s']:.0f}, {t['hot_mb']:.1f}, {t['history_mb']:.1f}, "
                    f"{t['dead_tuples']}, {t['prune_ms']:.0f}")
    out.add_row("  last tenth's t/s over the first's", f"{run['last_to_first_tenth']:.2f}")
    out.add_row("  queue size, second half's largest over the middle",
                f"{run['hot_growth_second_half']:.2f}")


def _remote_rows(out: Table, remote: dict[str, Any]) -> None:
    latency = f"{remote['latency_ms']:g} ms function"
    for case in remote["by_connections"]:
        n = case["connections"]
        out.add_row(f"remote calls/s, {latency}, {n} conns: best raw client / one dispatcher",
                    f"{case['raw_calls_per_s']:.0f} / {case['dispatcher_calls_per_s']:.0f}")
        out.add_row(f"  ratio to the raw client (each round: "
                    f"{_rounds([x['ratio'] * 100 for x in case['rounds']])} %)",
                    f"{case['ratio']:.2f}")
        out.add_row("  CPU ms per call: raw client / dispatcher (median)",
                    f"{case['raw_cpu_ms_per_call']:.3f} / "
                    + _ms(case.get("dispatcher_cpu_ms_per_event")))
        out.add_row("  during the drain, CPU ms per event: server / function",
                    f"{_ms(case.get('server_cpu_ms_per_event'))} / "
                    f"{_ms(case.get('function_cpu_ms_per_call'))}")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _engine_rows(out: Table, r: dict[str, Any]) -> None:
    costs = r["costs"]
    conns = r["ceiling_connections"]
    out.add_row(f"ceiling: 1-row UPDATE tx/s (best: {conns} conns, best round)",
                f"{r['ceiling_updates_per_s']:.0f}")
    out.add_row("  each round (best count)", _rounds(r["ceiling_rounds"]))
    out.add_row("  by connections (best round)", " / ".join(
        f"{n}: {v:.0f}" for n, v in r["ceiling_by_connections"].items()))
    out.add_row(f"  the same with pg_notify ({conns} conns)",
                f"{r['ceiling_notify_updates_per_s']:.0f}")
    held = r["ceiling_dispatcher_connections"]
    out.add_row(f"  on one dispatcher's {held} conns (old yardstick)",
                f"{r['ceiling_updates_per_s_at_dispatcher_connections']:.0f}")
    s = r["sustained"]
    out.add_row(f"sustained transitions/s ({s['orders']} orders, median)",
                f"{r['transitions_per_s']:.0f}")
    out.add_row("  each round", _rounds(r["scaling"][0]["rounds_transitions_per_s"]))
    out.add_row("  ratio to ceiling", f"{r['ratio_to_ceiling']:.2f}")
    for name, case in r["latency"].items():
        out.add_row(f"latency {name.replace('_', ' ')} p50/p95/p99 ms "
                    f"(at {case['load_transitions_per_s']:.0f} t/s)",
                    f"{case['p50_ms']:.1f} / {case['p95_ms']:.1f} / {case['p99_ms']:.1f}")
        if "written_p50_ms" in case:
            out.add_row("  commit to write-back committed",
                        f"{case['written_p50_ms']:.1f} / {case['written_p95_ms']:.1f} / "
                        f"{case['written_p99_ms']:.1f}")
    out.add_row(f"backlog drain events/s ({r['backlog']['events']} events)",
                f"{r['backlog_events_per_s']:.0f}")
    out.add_row(f"  with related data ({r['backlog_related']['events']} events)",
                f"{r['backlog_related_events_per_s']:.0f}")
    for run in r["scaling"]:
        out.add_row(f"scaling: {run['dispatchers']} dispatcher(s) transitions/s",
                    f"{run['transitions_per_s']:.0f} ({run['ratio_to_ceiling']:.2f}x)")
    out.add_row("NOTIFYs per transition", f"{costs['notifies_per_transition']:.3f}")
    out.add_row("commits per transition", f"{costs['commits_per_transition']:.3f}")
    out.add_row("WAL bytes per transition", f"{costs['wal_bytes_per_transition']:.0f}")
    out.add_row(f"connections per dispatcher (pool {costs['pool_size']} + LISTEN)",
                str(costs["connections_per_dispatcher"]))
    out.add_row("dispatcher CPU us per transition", f"{costs['dispatcher_cpu_us_per_transition']}")
    out.add_row("dispatcher peak RSS MB", f"{costs['dispatcher_peak_rss_mb']:.0f}")


def _rounds(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)
