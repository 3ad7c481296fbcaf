"""Exactly-once and at-least-once, counted where a double cannot hide.

Each check takes ``sql`` (the fixture's signature: a query, optional parameters, all rows) and
fails with the offending rows. They read tables without UNIQUE constraints (``job_effects``,
the demo's ``payments``), executions recorded outside the handlers' transactions
(``executions``, ``witness_executions``) and every write of a state column
(``witness_state_writes``, see bench.witness), never the engine's account of itself alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import witness

Sql = Callable[..., list[tuple[Any, ...]]]

# Events of the jobs workflow whose rows in job_effects are not exactly what their end allows:
# one row, written by the attempt (and process) that finished the event, when the `start`
# handler's transaction committed (applied, or noop: it returned nothing); none otherwise.
JOB_EFFECTS_NOT_ONCE = """
SELECT e.id, e.status, e.outcome, e.attempts, e.claimed_by,
       array_agg(f.attempt || '@' || f.pid ORDER BY f.attempt) FILTER (WHERE f.event_id IS NOT NULL)
FROM orchestrator.event_log e LEFT JOIN job_effects f ON f.event_id = e.id
WHERE e.workflow = 'jobs'
GROUP BY e.id, e.status, e.outcome, e.attempts, e.claimed_by, e.handler
HAVING count(f.event_id) <> CASE WHEN e.status = 'done' AND e.outcome IN ('applied', 'noop')
                                      AND e.handler LIKE '%%.start' THEN 1 ELSE 0 END
    OR bool_or(f.attempt <> e.attempts
               OR f.pid <> split_part(e.claimed_by, ':', 2)::integer)
UNION ALL
SELECT f.event_id, NULL, 'no such event', NULL, NULL, NULL
FROM job_effects f
WHERE NOT EXISTS (SELECT FROM orchestrator.event_log e WHERE e.id = f.event_id)
ORDER BY 1
"""

# Events of the jobs workflow a handler finished with no execution recorded for the attempt
# that finished them (JOBS_EXEC_LOG must be set for the processes that ran them).
JOBS_UNEXECUTED = """
SELECT e.id, e.handler, e.attempts
FROM orchestrator.event_log e
WHERE e.workflow = 'jobs' AND e.status = 'done' AND e.outcome IN ('applied', 'noop')
  AND e.handler IS NOT NULL
  AND NOT EXISTS (SELECT FROM executions x WHERE x.event_id = e.id AND x.attempt = e.attempts)
ORDER BY e.id
"""


def assert_job_effects_once(sql: Sql) -> None:
    """The jobs handler's writes committed exactly once per event it finished, by the run that
    held the claim, and never for an event it did not finish."""
    wrong = sql(JOB_EFFECTS_NOT_ONCE)
    assert wrong == [], f"job effects not once per finished event: {wrong[:5]}"


def assert_jobs_executed(sql: Sql) -> None:
    """Every jobs event a handler finished was executed (at least once), by the attempt that
    finished it."""
    missing = sql(JOBS_UNEXECUTED)
    assert missing == [], f"finished with no recorded execution: {missing[:5]}"


def assert_no_state_written_twice(sql: Sql) -> None:
    """No transition applied twice: no write of a state column left it as it was, and no row
    of these workflows (none has a cycle) entered a state twice."""
    twice = sql(witness.STATES_WRITTEN_TWICE)
    assert twice == [], f"states written twice: {twice[:5]}"


def assert_charged_once(sql: Sql) -> None:
    """Each food order charged once per charge that applied, never otherwise (the demo's
    payments table has no UNIQUE constraint to hide a second row)."""
    wrong = sql(witness.CHARGES_NOT_ONCE)
    assert wrong == [], f"charges not once (order, event, paid, payments): {wrong[:5]}"
    doubles = sql("SELECT order_id FROM payments GROUP BY 1 HAVING count(*) > 1")
    assert doubles == [], f"orders charged twice: {doubles[:5]}"


def assert_food_order_effects_once(sql: Sql) -> None:
    """Each food-order event a handler wrapped by bench.chaos finished has exactly one row in
    witness_effects, from the attempt and process that held its claim (WITNESS_DSN set)."""
    wrong = sql(witness.EFFECTS_NOT_ONCE)
    assert wrong == [], f"handler effects not once per finished event: {wrong[:5]}"


def assert_food_orders_executed(sql: Sql) -> None:
    """Every food-order event a handler wrapped by bench.chaos finished was executed by the
    attempt that finished it (WITNESS_DSN must be set for the processes that ran them)."""
    missing = sql(witness.UNEXECUTED)
    assert missing == [], f"finished with no recorded execution: {missing[:5]}"
