"""Remote handlers against a stand-in function: how close one dispatcher comes to the rate the
function itself takes.

The function (``standin``) answers every call after ``latency_ms``. Its capacity at N
connections is what the better of two raw clients gets from it in ``seconds``: aiohttp's and
libcurl's multi interface driven in a plain loop, each with N kept-alive connections, each
connection sending the next request as soon as the last is answered. The dispatcher's rate is N
connections' worth of ``bench_remote`` events (``Remote(..., max_concurrency=N)`` and
``--concurrency N``), created while no dispatcher runs, then drained by one: from the first
claim to the last write. Rounds alternate raw client and dispatcher so background load weighs
on both alike. Each also reports the CPU it spent: the raw client's per call (the bench
process), the dispatcher's per event (its process, from the first claim to the last write),
and during that drain the server's and the function's per event, so that where one machine's
cores go is on record (the server's only where it runs on this machine).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

import aiohttp
import pycurl

from orchestrator import gcpolicy
from orchestrator.bench import procs
from orchestrator.bench.case import drained, monitor, settle, wait_until
from orchestrator.bench.db import BenchError, Session
from orchestrator.bench.dispatchers import Dispatchers, DispatcherSettings

# About the size of a v1 request for a bench_remote row, so both clients send alike.
RAW_BODY = b'{"version": 1, "payload": "' + b"x" * 560 + b'"}'
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Drain:
    """One dispatcher's drain: its calls/s, and the CPU ms per event its process, the server
    and the function spent meanwhile (None where /proc cannot tell)."""

    per_s: float
    dispatcher_cpu_ms: float | None
    server_cpu_ms: float | None
    function_cpu_ms: float | None


@dataclass(frozen=True, slots=True)
class Round:
    """One round at ``connections``: the better raw client's calls/s and CPU ms per call, then
    the dispatcher's drain."""

    connections: int
    raw_client: str
    raw_per_s: float
    raw_cpu_ms: float
    drain: Drain


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    latency_ms: float
    connections: tuple[int, ...]
    events: int
    raw_s: float
    repeat: int


def run(config: RemoteConfig, session: Session, dsn: str, settings: DispatcherSettings,
        say: Callable[[str], None]) -> dict[str, Any]:
    """Every round at every connection count; the figures by connection count (medians).
    The raw client runs under the garbage-collection policy a dispatcher runs under
    (``gcpolicy.tune``), so the yardstick is not the weaker of the two."""
    gcpolicy.tune()
    rounds: list[Round] = []
    server = server_pid(session)
    with function(config.latency_ms) as (url, function_pid):
        for round_ in range(1, config.repeat + 1):
            for n in config.connections:
                say(f"remote round {round_}: raw client, {n} connections, {config.raw_s:g}s")
                client, raw, raw_cpu = raw_per_s(url, n, config.raw_s)
                say(f"remote round {round_}: one dispatcher, {n} connections, "
                    f"{config.events} events")
                drain = dispatched(session, dsn, settings, url, n, config.events,
                                   watched=(server, function_pid))
                rounds.append(Round(n, client, raw, raw_cpu, drain))
    return {"latency_ms": config.latency_ms, "events": config.events,
            "by_connections": [_figures(n, [r for r in rounds if r.connections == n])
                               for n in config.connections]}


def _figures(connections: int, rounds: list[Round]) -> dict[str, Any]:
    raw = median(r.raw_per_s for r in rounds)
    mine = median(r.drain.per_s for r in rounds)
    return {"connections": connections, "raw_calls_per_s": round(raw, 1),
            "dispatcher_calls_per_s": round(mine, 1),
            "ratio": round(mine / raw, 3) if raw else 0.0,
            "raw_cpu_ms_per_call": round(median(r.raw_cpu_ms for r in rounds), 3),
            "dispatcher_cpu_ms_per_event": _median([r.drain.dispatcher_cpu_ms for r in rounds]),
            "server_cpu_ms_per_event": _median([r.drain.server_cpu_ms for r in rounds]),
            "function_cpu_ms_per_call": _median([r.drain.function_cpu_ms for r in rounds]),
            "rounds": [{"raw_client": r.raw_client, "raw": round(r.raw_per_s, 1),
                        "dispatcher": round(r.drain.per_s, 1),
                        "ratio": round(r.drain.per_s / r.raw_per_s, 3)
                        if r.raw_per_s else 0.0} for r in rounds]}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 3) if known else None


@contextmanager
def function(latency_ms: float) -> Iterator[tuple[str, int]]:
    """The stand-in function on a free loopback port, served by one process per core; its
    URL and the pid of its first process (the others are its children)."""
    port = _free_port()
    argv = [sys.executable, "-m", "orchestrator.bench.standin", str(port), str(latency_ms),
            str(os.cpu_count() or 1)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/call", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_per_s(url: str, connections: int, seconds: float) -> tuple[str, float, float]:
    """The better of the raw clients over ``connections`` kept-alive connections to ``url``:
    its name, its calls/s and the CPU this process spent per call (ms)."""
    runs = [(name, *measured(url, connections, seconds))
            for name, measured in (("aiohttp", _aiohttp_per_s), ("libcurl", _curl_per_s))]
    return max(runs, key=lambda run: run[1])


def _aiohttp_per_s(url: str, connections: int, seconds: float) -> tuple[float, float]:
    began = time.process_time()
    answered, per_s = asyncio.run(_raw(url, connections, seconds))
    return per_s, (time.process_time() - began) * 1000 / max(answered, 1)


async def _raw(url: str, connections: int, seconds: float) -> tuple[int, float]:
    answered = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        began = time.monotonic()
        ends = began + seconds

        async def caller() -> None:
            nonlocal answered
            while time.monotonic() < ends:
                async with http.post(url, data=RAW_BODY,
                                     headers={"Content-Type": "application/json"}) as answer:
                    await answer.read()
                answered += 1

        await asyncio.gather(*(caller() for _ in range(connections)))
        return answered, answered / (time.monotonic() - began)


def _curl_per_s(url: str, connections: int, seconds: float) -> tuple[float, float]:
    """libcurl's multi interface in a plain loop: a transfer per connection, each added again
    as soon as it is answered."""
    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, connections)
    multi.setopt(pycurl.M_MAXCONNECTS, connections)
    for _ in range(connections):
        curl = pycurl.Curl()
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.POSTFIELDS, RAW_BODY)
        curl.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json", "Expect:"])
        curl.setopt(pycurl.WRITEFUNCTION, len)
        multi.add_handle(curl)
    began, cpu = time.monotonic(), time.process_time()
    ends, answered, running, again = began + seconds, 0, connections, False
    while running or again:  # again: answered ones were added back, not yet under way
        running = multi.perform()[1]
        answered, again = _answered(multi, answered, time.monotonic() < ends)
        if running and not again:  # else send the new requests first
            multi.select(0.05)
    per_s = answered / (time.monotonic() - began)
    multi.close()
    return per_s, (time.process_time() - cpu) * 1000 / max(answered, 1)


def dispatched(session: Session, dsn: str, settings: DispatcherSettings, url: str,
               connections: int, events: int, *,
               watched: tuple[int | None, int | None] = (None, None)) -> Drain:
    """One dispatcher draining ``events`` bench_remote events through ``connections``
    connections: its calls/s, and the CPU per event of its process and of the process trees
    ``watched`` (the server's, the function's; None: not measured)."""
    mark = settle(session)
    session.run("insert_remote", {"count": events})
    env = {"BENCH_REMOTE_URL": url, "BENCH_REMOTE_CONNECTIONS": str(connections)}
    with monitor(dsn, session) as mon, Dispatchers(
            dsn, 1, replace(settings, concurrency=connections), mon, env=env) as running:
        before = [running.cpu_s(), *(_tree_cpu_s(pid) for pid in watched)]
        wait_until(lambda: drained(mon), what="remote calls", alive=running.check_alive)
        after = [running.cpu_s(), *(_tree_cpu_s(pid) for pid in watched)]
    row = session.run("remote_calls", mark)[0]
    seconds = float(row["seconds"] or 0.0)
    if int(row["events"]) != events:
        raise BenchError(f"remote case: {row['events']} of {events} calls done")
    per_event = [(b - a) * 1000 / events if a is not None and b is not None else None
                 for a, b in zip(before, after, strict=True)]
    return Drain(events / seconds if seconds > 0 else 0.0, *per_event)


def server_pid(session: Session) -> int | None:
    """The pid of the server's postmaster when the server runs on this machine, else None
    (a backend's pid names no local process, or another one)."""
    backend = int(session.run("backend_pid")[0]["pid"])
    postmaster = procs.parent(backend)
    if postmaster is None or not procs.command(backend).startswith("postgres"):
        return None
    return postmaster


def _tree_cpu_s(pid: int | None) -> float | None:
    return None if pid is None else procs.tree_cpu_s(pid)


def _answered(multi: pycurl.CurlMulti, answered: int, more: bool) -> tuple[int, bool]:
    """Count the finished transfers and, with ``more``, add each again; whether any was."""
    again = False
    while True:
        queued, done, failed = multi.info_read()
        for curl in [*done, *(f[0] for f in failed)]:
            multi.remove_handle(curl)
            if more:
                multi.add_handle(curl)
                again = True
        answered += len(done)
        if not queued:
            return answered, again


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the stand-in function exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"the stand-in function did not listen within {READY_TIMEOUT_S:.0f}s")
