-- What operators read and do, loaded once by orchestrator.reports: counts, lists and histories of
-- the event log, the dashboard's samples, and the operator writes (redrive, override, prune).
-- Each starts with "-- name: x"; {table}-style names are a workflow's table and columns,
-- composed in with psycopg.sql.Identifier. Reads of finished events go through
-- orchestrator.event_log, the queue and the history as one (finished events move from one to
-- the other within seconds); counts of open and dead events read the queue alone.

-- name: event_counts
-- Open and dead events per workflow; each status has its own partial index.
SELECT workflow,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8
           AS oldest_pending_age_s
FROM orchestrator.events
WHERE status IN ('pending', 'running', 'dead')
GROUP BY workflow;

-- name: event_backlog
-- Per workflow: events due and not yet taken (the backlog, and how long the oldest has waited
-- since it became runnable), events waiting for a retry, deadline timers still to come, running
-- and dead events, and the lowest open id. Each status has a partial index, so this stays cheap
-- however long the history grows.
SELECT workflow,
       count(*) FILTER (WHERE status = 'pending' AND run_after <= now()) AS due,
       count(*) FILTER (WHERE status = 'pending' AND run_after > now() AND op <> 'TIMER')
           AS waiting,
       count(*) FILTER (WHERE status = 'pending' AND run_after > now() AND op = 'TIMER')
           AS timers,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       extract(epoch FROM now() - min(run_after) FILTER (
           WHERE status = 'pending' AND run_after <= now()))::float8 AS oldest_due_age_s,
       min(id) FILTER (WHERE status IN ('pending', 'running')) AS min_open_id
FROM orchestrator.events
WHERE status IN ('pending', 'running', 'dead')
GROUP BY workflow;

-- name: list_events
SELECT id, workflow, row_key, op, column_name, old_value, new_value, status, outcome, attempts,
       handler, next_state, last_error, created_at, started_at, finished_at, run_after
FROM orchestrator.event_log
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s)
  AND (%(row_key)s::text IS NULL OR row_key = %(row_key)s)
  AND (%(search)s::text IS NULL OR handler ILIKE '%%' || %(search)s || '%%'
       OR last_error ILIKE '%%' || %(search)s || '%%')
ORDER BY id DESC
LIMIT %(limit)s;

-- name: row_history
-- A row's timeline, with the session of each change's writer (revision 0007).
SELECT id, workflow, row_key, op, column_name, old_value, new_value, status, outcome, attempts,
       handler, next_state, last_error, created_at, started_at, finished_at, run_after,
       session_variables
FROM orchestrator.event_log
WHERE workflow = %(workflow)s AND row_key = %(row_key)s
ORDER BY id;

-- name: row_errors
SELECT r.event_id, r.attempt, r.error, r.at
FROM orchestrator.event_errors r
JOIN orchestrator.event_log e ON e.id = r.event_id
WHERE e.workflow = %(workflow)s AND e.row_key = %(row_key)s
ORDER BY r.id;

-- name: rows_in_states
-- A workflow's rows in some states, in them for at least %(older_than_s)s seconds: when each
-- entered its state (its latest event on the state column), its latest event (what it waits for,
-- or what failed) and its next deadline. {table}, {key} and {state} are the workflow's, composed
-- in by the store. A row with no event (it predates the triggers) counts as there for ever.
-- At most %(examine)s rows are looked at: each costs an index probe per lateral, and the
-- dashboard asks every few seconds.
SELECT r.key, r.state, s.since, extract(epoch FROM now() - s.since)::float8 AS age_s,
       l.id AS event_id, l.op, l.column_name, l.old_value, l.new_value, l.status, l.outcome,
       l.handler, l.attempts, l.last_error, l.run_after,
       extract(epoch FROM l.run_after - now())::float8 AS run_in_s,
       t.deadline_to, extract(epoch FROM t.deadline_at - now())::float8 AS deadline_in_s
FROM (SELECT {key}::text AS key, {state}::text AS state FROM {table}
      WHERE {state}::text = ANY(%(states)s) LIMIT %(examine)s) r
LEFT JOIN LATERAL (
    SELECT e.created_at AS since FROM orchestrator.event_log e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.column_name = %(column)s
      AND e.op <> 'TIMER'
    ORDER BY e.id DESC LIMIT 1) s ON true
LEFT JOIN LATERAL (
    SELECT e.* FROM orchestrator.event_log e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.op <> 'TIMER'
    ORDER BY e.id DESC LIMIT 1) l ON true
LEFT JOIN LATERAL (
    SELECT e.run_after AS deadline_at, e.new_value AS deadline_to
    FROM orchestrator.event_log e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.op = 'TIMER'
      AND e.status = 'pending'
    ORDER BY e.id DESC LIMIT 1) t ON true
WHERE s.since IS NULL OR s.since <= now() - make_interval(secs => %(older_than_s)s)
ORDER BY CASE WHEN %(oldest_first)s THEN s.since END NULLS FIRST, s.since DESC NULLS LAST,
         r.key
LIMIT %(limit)s;

-- name: stuck_counts
-- How many rows of a workflow have been in each of some states for at least %(older_than_s)s
-- seconds (see rows_in_states).
SELECT r.state, count(*) AS rows
FROM (SELECT {key}::text AS key, {state}::text AS state FROM {table}
      WHERE {state}::text = ANY(%(states)s) LIMIT %(examine)s) r
LEFT JOIN LATERAL (
    SELECT e.created_at AS since FROM orchestrator.event_log e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.column_name = %(column)s
      AND e.op <> 'TIMER'
    ORDER BY e.id DESC LIMIT 1) s ON true
WHERE s.since IS NULL OR s.since <= now() - make_interval(secs => %(older_than_s)s)
GROUP BY r.state;

-- name: recent_finished
-- Per workflow, events finished since %(since)s (and how many since %(last)s), and how long
-- first attempts waited from the row change to their claim (lag; a handed-over event waits
-- none). %(floor)s bounds the scan to recent ids: an event finished since then was open then,
-- or recorded after. Cancelled deadlines are not work done.
SELECT workflow, count(*) AS finished,
       count(*) FILTER (WHERE finished_at > %(last)s) AS finished_since_last,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_s) AS lag_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_s) AS lag_p95_s,
       max(lag_s) AS lag_max_s
FROM (SELECT workflow, finished_at,
             CASE WHEN op <> 'TIMER' AND attempts = 1
                  THEN greatest(0, extract(epoch FROM started_at - created_at))::float8
             END AS lag_s
      FROM orchestrator.event_log
      WHERE id >= %(floor)s AND finished_at > %(since)s AND status IN ('done', 'dead')
        AND outcome IS DISTINCT FROM 'cancelled') f
GROUP BY workflow;

-- name: event_horizon
SELECT now() AS now, coalesce(max(id), 0) AS max_id FROM orchestrator.event_log;

-- name: dead_events
-- Dead events chosen for a redrive, locked so two operators cannot redrive one event twice.
SELECT id, workflow, row_key, new_row, handler, last_error
FROM orchestrator.events
WHERE status = 'dead'
  AND (id = ANY(%(ids)s) OR %(all)s)
  AND (%(handler)s::text IS NULL OR handler = %(handler)s OR handler LIKE '%%.' || %(handler)s)
  AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s)
ORDER BY id
FOR UPDATE;

-- name: event_statuses
SELECT id, status FROM orchestrator.event_log WHERE id = ANY(%(ids)s);

-- name: redrive
-- Back to the queue with a fresh set of attempts; the history keeps the earlier errors.
UPDATE orchestrator.events
SET status = 'pending', attempts = 0, run_after = now(), claimed_by = NULL, lease_until = NULL,
    outcome = NULL, finished_at = NULL, started_at = NULL
WHERE id = ANY(%(ids)s) AND status = 'dead';

-- name: record_redrive
INSERT INTO orchestrator.event_errors (event_id, attempt, error)
SELECT id, 0, 'redriven by an operator' FROM unnest(%(ids)s::bigint[]) AS id;

-- name: override
-- The writes that follow are an operator's deliberate ones: the guard trigger lets them through
-- when the session's user is a member of orchestrator_admin (see may_override).
SELECT set_config('orchestrator.override', 'on', true);

-- name: may_override
-- Whether the guard lets this session move rows outside their workflow: its user is a member of
-- orchestrator_admin, or a superuser (false on a schema older than the role).
SELECT session_user AS "user",
       CASE WHEN to_regrole('orchestrator_admin') IS NULL THEN false
            ELSE pg_has_role(session_user, 'orchestrator_admin', 'MEMBER') END AS allowed;

-- name: state_counts
SELECT {state} AS state, count(*) AS rows FROM {table} GROUP BY 1;

-- name: row_state
SELECT {state} AS state FROM {table} WHERE {key} = %(key)s;

-- name: move_row
-- An operator's move of one row (compare-and-set on the state it was seen in).
UPDATE {table} SET {state} = %(dest)s WHERE {key} = %(key)s AND {state} = %(source)s;

-- name: pruned
-- The latest prune: finished events before `before` are gone (NULL: nothing was ever pruned).
SELECT max(finished_before) AS before, max(at) AS at FROM orchestrator.prunes;

-- name: prune
-- Finished events older than %(older_than)s leave the history, whole hours at a time (see
-- orchestrator.prune_v1); waits for a dispatcher's archive or prune under way.
SELECT events, partitions, pruned_before
FROM orchestrator.prune_v1(now() - %(older_than)s::interval, %(dry_run)s, true);

-- name: prune_dead
-- Dead events that died more than %(older_than)s ago leave for good (see
-- orchestrator.prune_dead_v1).
SELECT orchestrator.prune_dead_v1(now() - %(older_than)s::interval, %(workflow)s, %(handler)s,
                                  %(dry_run)s) AS events;

-- name: limits
-- Each fleet-wide limit: its bounds, the runs holding one of its slots now, and how many times
-- an event was put back to wait its turn.
SELECT l.name, l.max_running, l.per_s, l.waits,
       (SELECT count(*) FROM orchestrator.limit_slots s
        JOIN orchestrator.events e ON e.id = s.event_id AND e.status = 'running'
        WHERE s.name = l.name) AS running
FROM orchestrator.limits l
ORDER BY l.name;

-- name: limits_present
SELECT to_regclass('orchestrator.limits') IS NOT NULL AS present;
