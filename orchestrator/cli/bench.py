"""The `orchestrator bench` command: a thin call into ``orchestrator.bench``
(``bench/perf/`` in the repository)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.app import resolve_dsn
from orchestrator.cli.common import DataDir, Dsn, Json, app, err, friendly, out, print_json
from orchestrator.config import Settings
from orchestrator.errors import ConfigError

BENCH_DATABASE = "orchestrator_bench"
TENTH_MIN = 600  # a long run of fewer transitions has tenths of a few orders


def _counts(text: str, flag: str = "--dispatchers") -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes counts like 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"{flag} takes counts of at least 1, not {text!r}")
    return counts


def _long_run(wanted: bool, transitions: int) -> Any:
    if not wanted:
        return None
    from orchestrator.bench.longrun import LongRunConfig

    if transitions < TENTH_MIN:
        raise ConfigError(f"--long-run-transitions takes at least {TENTH_MIN}, not "
                          f"{transitions}")
    return LongRunConfig(transitions=transitions)


def _remote(latency_ms: float, connections: str, events: int, raw_s: float, repeat: int,
            only: bool) -> Any:
    from orchestrator.bench.remote import RemoteConfig

    if only and latency_ms <= 0:
        raise ConfigError("--remote-only needs --remote-latency-ms")
    return RemoteConfig(latency_ms, _counts(connections, "--remote-connections"), events,
                        raw_s, repeat) if latency_ms > 0 else None


@app.command()
@friendly
def bench(
    dsn: Dsn = None,
    data_dir: DataDir = None,
    orders: Annotated[int, typer.Option(help="Orders per sustained run.")] = 3000,
    backlog: Annotated[int, typer.Option(help="Events in the backlog drain.")] = 100_000,
    unloaded_orders: Annotated[int, typer.Option(
        help="Orders placed one at a time for the unloaded latency.")] = 200,
    idle_concurrency: Annotated[str, typer.Option(
        help="Concurrencies the unloaded latency is measured at, comma-separated.")] = "8,64",
    paced_s: Annotated[float, typer.Option(help="Seconds of each paced latency case.")] = 5.0,
    dispatchers: Annotated[str, typer.Option(
        help="Dispatcher processes per sustained run, comma-separated.")] = "1,2,4",
    ceiling_s: Annotated[float, typer.Option(help="Seconds of each pgbench run.")] = 5.0,
    ceiling_connections: Annotated[str, typer.Option(
        help="Connection counts of the ceiling's pgbench runs, comma-separated; the best "
             "counts.")] = "1,2,4,8,16",
    repeat: Annotated[int, typer.Option(
        help="Rounds of sustained runs and ceiling (median throughput, best ceiling).")] = 3,
    concurrency: Annotated[int, typer.Option(help="Handlers a dispatcher runs at once.")] = 256,
    pool_size: Annotated[int, typer.Option(help="Pooled connections per dispatcher.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Most events one claim takes.")] = 64,
    remote_latency_ms: Annotated[float, typer.Option(
        help="Add the remote-handler case: a stand-in function answering after this many ms "
             "(0: no remote case).")] = 0.0,
    remote_connections: Annotated[str, typer.Option(
        help="Connections of the remote case (raw client and dispatcher), comma-separated.")
    ] = "64,256",
    remote_events: Annotated[int, typer.Option(
        help="Events one dispatcher drains per remote round.")] = 5000,
    remote_raw_s: Annotated[float, typer.Option(
        help="Seconds of each raw-client run of the remote case.")] = 5.0,
    remote_only: Annotated[bool, typer.Option(
        help="Run the remote case alone (with --remote-latency-ms).")] = False,
    long_run: Annotated[bool, typer.Option(help="Run the long-run case alone.")] = False,
    long_run_transitions: Annotated[int, typer.Option(
        help="Transitions of the long run.")] = 1_000_000,
    json: Json = False,
) -> None:
    """Measure throughput, latency and costs against the server's own UPDATE ceiling.

    With no DSN it uses the embedded PostgreSQL's `orchestrator_bench` database. A benchmark,
    not a test: the figures depend on the machine and on whatever else runs on it.
    """
    # Imported here: the bench package is not needed by any other command.
    from orchestrator.bench.report import table
    from orchestrator.bench.run import BenchConfig, run

    remote = _remote(remote_latency_ms, remote_connections, remote_events, remote_raw_s, repeat,
                     remote_only)
    config = BenchConfig(
        orders=orders, backlog_events=backlog, unloaded_orders=unloaded_orders, paced_s=paced_s,
        idle_concurrency=_counts(idle_concurrency, "--idle-concurrency"),
        dispatcher_counts=_counts(dispatchers), ceiling_s=ceiling_s, repeat=repeat,
        ceiling_connections=_counts(ceiling_connections, "--ceiling-connections"),
        concurrency=concurrency, pool_size=pool_size, batch_size=batch_size, remote=remote,
        remote_only=remote_only, long_run=_long_run(long_run, long_run_transitions))
    target = resolve_dsn(Settings.load(dsn=dsn, data_dir=data_dir), BENCH_DATABASE)
    results = run(config, target, say=lambda line: err.print(line, soft_wrap=True))
    print_json(results) if json else out.print(table(results))
