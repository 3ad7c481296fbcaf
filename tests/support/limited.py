"""A workflow whose one handler has a fleet-wide limit: at most two runs at once, and a rate.

Table ``tasks`` (``TASKS_SQL``): status queued -> done. Each run sleeps ``sleep_s`` and logs its
start and end in ``task_runs`` on its own connection (outside the handler's transaction), so a
test can count the runs at once across dispatchers. ``LIMITED_PER_S`` sets the rate (none when
unset).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import psycopg

from orchestrator import Event, Limit, Workflow

TASKS_SQL = """
CREATE TABLE tasks (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued',
                    sleep_s double precision NOT NULL DEFAULT 0);
CREATE TABLE task_runs (event_id bigint, attempt integer, pid integer,
                        started timestamptz, finished timestamptz);
"""

tasks = Workflow("tasks", table="public.tasks", states=["queued", "done"], initial="queued",
                 terminal=["done"], transitions=[("do", "queued", "done")])

_per_s = os.environ.get("LIMITED_PER_S")
LIMIT = Limit(max_running=2, per_s=float(_per_s) if _per_s else None, name="the_api")


@tasks.on_enter("queued", limit=LIMIT)
def work(event: Event) -> str:
    started = datetime.now(UTC)
    time.sleep(event.new_row["sleep_s"])
    with psycopg.connect(os.environ["LIMITED_LOG_DSN"], autocommit=True) as conn:
        conn.execute("INSERT INTO task_runs VALUES (%s, %s, %s, %s, %s)",
                     (event.id, event.attempt, os.getpid(), started, datetime.now(UTC)))
    return "done"
