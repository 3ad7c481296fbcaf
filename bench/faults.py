"""Fault-injection bench: a seeded food-order load survives faults injected on a schedule.

    python -m bench.faults [--orders 3000] [--dispatchers 3] [--every-s 2] [--json]

It starts a PostgreSQL server of its own (embedded), places the orders, runs a supervised fleet
of dispatcher processes serving ``bench.chaos`` (the food-order handlers, misbehaving now and
then), and meanwhile injects, in turn: a dispatcher SIGKILLed mid-batch, PostgreSQL restarted
(fast, then immediate), the LISTEN connections terminated or frozen, a long transaction holding
order rows, and a dispatcher stopped with SIGTERM. Then it counts what matters: orders not
terminal, transitions applied twice, orders charged twice, charges and handler effects not
committed exactly once, events finished without a recorded execution, dead events, and how long
the fleet took to make progress again after each database restart.

Doubles are counted where they cannot hide (``bench.witness``): every write of an order's
state, recorded by a trigger even when it changes nothing; every handler call, recorded outside
the handler's transaction; a row each handler call writes inside it, and payments, in tables
with no UNIQUE constraint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import witness
from orchestrator import demo
from orchestrator.app import Orchestrator
from orchestrator.config import Settings
from orchestrator.db import LISTEN_APPLICATION_NAME
from orchestrator.embedded import EmbeddedServer
from orchestrator.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("delivered", "rejected", "cancelled", "failed")
FLEET_ENV = {"ORCHESTRATOR_CONCURRENCY": "8", "ORCHESTRATOR_LEASE_S": "3",
             "ORCHESTRATOR_POLL_INTERVAL_S": "0.5", "ORCHESTRATOR_RETRY_BASE_S": "0.1",
             "ORCHESTRATOR_RETRY_MAX_S": "1", "ORCHESTRATOR_LISTEN_PING_S": "1",
             "ORCHESTRATOR_SHUTDOWN_GRACE_S": "2"}


@dataclass
class Report:
    orders: int = 0
    transitions: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    not_terminal: int = 0
    applied_twice: int = 0
    charged_twice: int = 0
    charges_not_once: int = 0
    effects_not_once: int = 0
    unexecuted: int = 0
    executions: int = 0
    executed_again: int = 0
    dead_events: int = 0
    dispatcher_restarts: int = 0
    recovery_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.not_terminal or self.applied_twice or self.charged_twice
                    or self.charges_not_once or self.effects_not_once or self.unexecuted)


class Fleet:
    """Dispatcher processes, restarted whenever one exits (a supervisor's job)."""

    def __init__(self, dsn: str, size: int, logs: Path) -> None:
        self._env = os.environ | FLEET_ENV | {"ORCHESTRATOR_DSN": dsn,
                                              witness.EXECUTIONS_DSN_ENV: dsn}
        self._logs = logs
        self._spawned = 0
        self.exits: Counter[int] = Counter()
        self.procs = [self._spawn() for _ in range(size)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run",
                "--handlers", "bench.chaos"]
        self._spawned += 1
        with open(self._logs / f"dispatcher-{self._spawned:03d}.log", "wb") as log:
            return subprocess.Popen(argv, cwd=ROOT, env=self._env, stdout=log,
                                    stderr=subprocess.STDOUT)

    @property
    def restarts(self) -> int:
        return sum(self.exits.values())

    def supervise(self) -> None:
        for i, proc in enumerate(self.procs):
            if (code := proc.poll()) is not None:
                self.exits[code] += 1
                self.procs[i] = self._spawn()

    def signal_one(self, rng: random.Random, sig: int) -> None:
        rng.choice(self.procs).send_signal(sig)

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)


class Faults:
    """Injects faults in the order of SCHEDULE, round and round."""

    SCHEDULE = ("dispatcher SIGKILL", "postgres restart fast", "LISTEN terminated",
                "long transaction", "dispatcher SIGTERM", "LISTEN frozen",
                "dispatcher SIGKILL", "postgres restart immediate")

    def __init__(self, server: EmbeddedServer, dsn: str, fleet: Fleet, seed: int) -> None:
        self.server, self.dsn, self.fleet = server, dsn, fleet
        self.rng = random.Random(seed)
        self.recovery_s: list[float] = []
        self.actions: dict[str, Callable[[], None]] = {
            "dispatcher SIGKILL": lambda: fleet.signal_one(self.rng, signal.SIGKILL),
            "dispatcher SIGTERM": lambda: fleet.signal_one(self.rng, signal.SIGTERM),
            "postgres restart fast": lambda: self.restart("fast"),
            "postgres restart immediate": lambda: self.restart("immediate"),
            "LISTEN terminated": self.terminate_listeners,
            "LISTEN frozen": self.freeze_listeners,
            "long transaction": self.long_transaction,
        }
        self.done: Counter[str] = Counter()

    def inject(self, n: int) -> None:
        name = self.SCHEDULE[n % len(self.SCHEDULE)]
        self.actions[name]()
        self.done[name] += 1

    def restart(self, mode: str) -> None:
        self.server.stop(mode)  # type: ignore[arg-type]
        time.sleep(1.0)
        self.server.start()
        back = time.monotonic()
        place_probe(self.dsn)  # so that there is work to do even at the end of the load
        mark = scalar(self.dsn, "SELECT now()")

        def working() -> bool:
            self.fleet.supervise()  # dispatchers that failed to start meanwhile come back
            return bool(scalar(self.dsn, "SELECT count(*) FROM orchestrator.event_log"
                                         " WHERE finished_at > %s", (mark,)))

        wait_until(working, 120)
        self.recovery_s.append(round(time.monotonic() - back, 2))

    def listener_pids(self) -> list[int]:
        rows = query(self.dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                     (LISTEN_APPLICATION_NAME,))
        return [r[0] for r in rows]

    def terminate_listeners(self) -> None:
        for pid in self.listener_pids():
            query(self.dsn, "SELECT pg_terminate_backend(%s)", (pid,))

    def freeze_listeners(self) -> None:
        pids = self.listener_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(3.0)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    def long_transaction(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute("SELECT txid_current()")
            conn.execute("SELECT id FROM orders WHERE status NOT IN ('delivered', 'rejected',"
                         " 'cancelled', 'failed') ORDER BY random() LIMIT 5 FOR UPDATE")
            time.sleep(3.0)
            conn.rollback()


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    return query(dsn, sql, params)[0][0]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except psycopg.OperationalError:
            pass  # the server is still starting
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress within {timeout_s}s")
        time.sleep(0.05)


def prepare(dsn: str, orders: int, seed: int) -> tuple[int, int]:
    settings = Settings.load({}, dsn=dsn, handlers="bench.chaos")
    with Orchestrator(settings, load_registry("bench.chaos")) as orch:
        demo.setup(orch)
        orch.migrate()
        ids = demo.seed(orch, orders, seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        witness.install(conn, {"public.orders": ("id", "status")})
    return ids


def place_probe(dsn: str) -> str:
    """A fresh order (work for the fleet once it is back); its id."""
    wait_until(lambda: bool(query(dsn, "SELECT 1")), 60)
    row = query(dsn, "INSERT INTO orders (ref, customer_id, restaurant_id, items, total_cents)"
                     " SELECT 'probe-' || gen_random_uuid(), 1, m.restaurant_id,"
                     " jsonb_build_array(jsonb_build_object('menu_item_id', m.id, 'qty', 1,"
                     " 'price_cents', m.price_cents)), m.price_cents"
                     " FROM menu_items m WHERE m.available AND m.restaurant_id = 1"
                     " ORDER BY m.id LIMIT 1 RETURNING id")
    return str(row[0][0])


def open_orders(dsn: str) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM orders WHERE status NOT IN"
                           " ('delivered', 'rejected', 'cancelled', 'failed')"))


def run(orders: int, dispatchers: int, every_s: float, seed: int, limit_s: float,
        min_faults: int = 0) -> Report:
    """The whole bench; ``min_faults``: keep injecting (and probing) until that many."""
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-faults-"))
    server = EmbeddedServer(workdir / "pg")
    dsn = server.start()
    try:
        prepare(dsn, orders, seed)
        return load(server, dsn, dispatchers, every_s, seed, limit_s, min_faults, workdir)
    finally:
        server.discard()
        print(f"dispatcher logs in {workdir}", file=sys.stderr)


def load(server: EmbeddedServer, dsn: str, dispatchers: int, every_s: float, seed: int,
         limit_s: float, min_faults: int, logs: Path) -> Report:
    started = time.monotonic()
    fleet = Fleet(dsn, dispatchers, logs)
    faults = Faults(server, dsn, fleet, seed)
    try:
        n, next_fault = 0, time.monotonic() + every_s
        while ((open_orders(dsn) or n < min_faults)
               and time.monotonic() - started < limit_s):
            fleet.supervise()
            if time.monotonic() >= next_fault:
                faults.inject(n)
                n, next_fault = n + 1, time.monotonic() + every_s
            time.sleep(0.1)
    finally:
        fleet.stop()
    wall = time.monotonic() - started
    print(f"dispatcher exit codes: {dict(fleet.exits)}", file=sys.stderr)
    return measure(dsn, faults, fleet.restarts, wall)


def measure(dsn: str, faults: Faults, restarts: int, wall_s: float) -> Report:
    return Report(
        orders=int(scalar(dsn, "SELECT count(*) FROM orders")),
        transitions=scalar(dsn, "SELECT count(*) FROM orchestrator.event_log"
                                " WHERE outcome = 'applied'"),
        faults=dict(faults.done),
        not_terminal=open_orders(dsn),
        applied_twice=len(query(dsn, witness.STATES_WRITTEN_TWICE)),
        charged_twice=scalar(dsn, "SELECT count(*) FROM (SELECT 1 FROM payments"
                                  " GROUP BY order_id HAVING count(*) > 1) d"),
        charges_not_once=len(query(dsn, witness.CHARGES_NOT_ONCE)),
        effects_not_once=len(query(dsn, witness.EFFECTS_NOT_ONCE)),
        unexecuted=len(query(dsn, witness.UNEXECUTED)),
        executions=scalar(dsn, "SELECT count(*) FROM witness_executions"),
        executed_again=scalar(dsn, "SELECT count(*) FROM (SELECT 1 FROM witness_executions"
                                   " GROUP BY event_id HAVING count(*) > 1) d"),
        dead_events=scalar(dsn, "SELECT count(*) FROM orchestrator.events"
                                " WHERE status = 'dead'"),
        dispatcher_restarts=restarts, recovery_s=faults.recovery_s, wall_s=round(wall_s, 1))


def print_report(r: Report) -> None:
    rows: list[tuple[str, object]] = [("orders", r.orders), ("transitions applied", r.transitions)]
    rows += [(f"fault: {k}", v) for k, v in sorted(r.faults.items())]
    rows += [("dispatcher restarts (by the supervisor)", r.dispatcher_restarts),
             ("orders not in a terminal state", r.not_terminal),
             ("transitions applied twice", r.applied_twice),
             ("orders charged twice", r.charged_twice),
             ("charges not committed exactly once", r.charges_not_once),
             ("handler effects not committed exactly once", r.effects_not_once),
             ("events finished with no execution", r.unexecuted),
             ("handler executions", r.executions),
             ("events executed more than once", r.executed_again),
             ("events dead", r.dead_events),
             ("recovery after each restart (s)", ", ".join(map(str, r.recovery_s)) or "-"),
             ("wall time (s)", r.wall_s)]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--dispatchers", type=int, default=3)
    parser.add_argument("--every-s", type=float, default=2.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit-s", type=float, default=600, help="give up after this long")
    parser.add_argument("--min-faults", type=int, default=0,
                        help="inject at least this many faults, even after the orders finish")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.orders, args.dispatchers, args.every_s, args.seed, args.limit_s,
                 args.min_faults)
    if args.json:
        print(json.dumps(asdict(report) | {"ok": report.ok}, indent=2))
    else:
        print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
