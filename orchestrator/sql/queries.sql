-- Runtime queries, loaded once by orchestrator.sql.QUERIES. Each starts with "-- name: x".
-- Placeholders: %(param)s for values; {table}-style names only where a user's table or column
-- is composed in with psycopg.sql.Identifier.

-- name: claim
-- The oldest runnable events of the workflows this dispatcher serves, at most one per row, and
-- only where no earlier event of the same row is still open: a row's events run one at a time
-- and in order. FOR UPDATE SKIP LOCKED lets
-- concurrent dispatchers pass over events another one is claiming instead of waiting on them;
-- each claimed event comes back with status, fencing token (attempts, claimed_by) and lease.
WITH picked AS (
    SELECT e.id
    FROM orchestrator.events e
    WHERE e.status = 'pending'
      AND e.run_after <= now()
      AND e.workflow = ANY(%(workflows)s)
      AND NOT EXISTS (
          SELECT 1 FROM orchestrator.events p
          WHERE p.workflow = e.workflow AND p.row_key = e.row_key AND p.id < e.id
            AND p.status IN ('pending', 'running'))
    ORDER BY e.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE orchestrator.events e
SET status = 'running', attempts = e.attempts + 1, claimed_by = %(dispatcher)s,
    lease_until = now() + make_interval(secs => %(lease_s)s), started_at = now()
FROM picked
WHERE e.id = picked.id
RETURNING e.id, e.workflow, e.row_key, e.column_name, e.op, e.old_value, e.new_value,
          e.old_row, e.new_row, e.attempts, e.created_at;

-- name: claim_next_of_rows
-- Hands the next event of rows whose event this transaction just finished straight to the same
-- dispatcher, with no NOTIFY round trip. Same per-row rule as claim: nothing runs for a row
-- while another of its events is running (a row whose event another dispatcher took over).
UPDATE orchestrator.events e
SET status = 'running', attempts = e.attempts + 1, claimed_by = %(dispatcher)s,
    lease_until = now() + make_interval(secs => %(lease_s)s), started_at = now()
WHERE e.id IN (
    SELECT min(p.id)
    FROM orchestrator.events p
    JOIN unnest(%(workflows)s::text[], %(keys)s::text[]) AS r (workflow, row_key)
      ON p.workflow = r.workflow AND p.row_key = r.row_key
    WHERE p.status IN ('pending', 'running')
    GROUP BY p.workflow, p.row_key
    HAVING bool_and(p.status = 'pending'))
  AND e.status = 'pending'
  AND e.run_after <= now()
RETURNING e.id, e.workflow, e.row_key, e.column_name, e.op, e.old_value, e.new_value,
          e.old_row, e.new_row, e.attempts, e.created_at;

-- name: write_back
-- Finishes one event and writes the handler's outcome to its row in one statement. The row is
-- written only while the event is still ours (fencing token) and only if the row is still in the
-- state the event saw (compare-and-set); otherwise the event is finished as stale. Returns the
-- outcome, or no row when the event is no longer ours.
WITH fenced AS (
    SELECT id FROM orchestrator.events
    WHERE id = %(id)s AND attempts = %(attempt)s AND claimed_by = %(dispatcher)s
      AND status = 'running'
    FOR UPDATE
), moved AS (
    UPDATE {table} SET {assignments}
    WHERE {key} = %(key)s AND {state} = %(expected)s AND EXISTS (SELECT FROM fenced)
    RETURNING 1
)
UPDATE orchestrator.events e
SET status = %(status)s,
    outcome = CASE WHEN EXISTS (SELECT FROM moved) THEN %(outcome)s ELSE %(stale_outcome)s END,
    handler = %(handler)s, next_state = %(next_state)s, last_error = %(error)s,
    finished_at = now(), lease_until = NULL
FROM fenced
WHERE e.id = fenced.id
RETURNING e.outcome;

-- name: finish
-- Finishes one event that writes nothing to its row (no handler, nothing returned, dead).
UPDATE orchestrator.events
SET status = %(status)s, outcome = %(outcome)s, handler = %(handler)s, last_error = %(error)s,
    finished_at = now(), lease_until = NULL
WHERE id = %(id)s AND attempts = %(attempt)s AND claimed_by = %(dispatcher)s
  AND status = 'running'
RETURNING outcome;

-- name: retry
-- Puts a failed event back in the queue for a later attempt; the row stays blocked meanwhile.
UPDATE orchestrator.events
SET status = 'pending', run_after = now() + make_interval(secs => %(delay_s)s),
    handler = %(handler)s, last_error = %(error)s, claimed_by = NULL, lease_until = NULL
WHERE id = %(id)s AND attempts = %(attempt)s AND claimed_by = %(dispatcher)s
  AND status = 'running'
RETURNING 'retry';

-- name: record_error
INSERT INTO orchestrator.event_errors (event_id, attempt, error)
VALUES (%(id)s, %(attempt)s, %(error)s)
ON CONFLICT (event_id, attempt) DO UPDATE SET error = EXCLUDED.error, at = now();

-- name: quiet
-- This transaction's new events are handed over directly: their triggers need not NOTIFY.
SELECT set_config('orchestrator.quiet', 'on', true);

-- name: extend_leases
-- The heartbeat: a dispatcher keeps the events it is still working on.
UPDATE orchestrator.events
SET lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(ids)s) AND claimed_by = %(dispatcher)s AND status = 'running';

-- name: requeue_expired
-- Events whose dispatcher stopped renewing the lease (killed, partitioned) go back to the queue.
-- The attempt stays counted, so an event that kills its dispatcher every time ends up dead.
-- SKIP LOCKED: a live dispatcher finishing one of them right now wins.
WITH expired AS (
    SELECT id FROM orchestrator.events
    WHERE status = 'running' AND lease_until < now()
    ORDER BY lease_until
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), errors AS (
    INSERT INTO orchestrator.event_errors (event_id, attempt, error)
    SELECT e.id, e.attempts, 'lease expired: dispatcher ' || coalesce(e.claimed_by, '?')
                             || ' stopped renewing it'
    FROM orchestrator.events e JOIN expired USING (id)
    ON CONFLICT DO NOTHING
)
UPDATE orchestrator.events e
SET status = 'pending', claimed_by = NULL, lease_until = NULL,
    last_error = 'lease expired: dispatcher ' || coalesce(e.claimed_by, '?')
                 || ' stopped renewing it'
FROM expired
WHERE e.id = expired.id
RETURNING e.id;

-- name: release
-- A dispatcher gives events back unfinished (graceful stop, or claims it lost track of after a
-- connection failure). The attempt is not counted against the event.
UPDATE orchestrator.events
SET status = 'pending', attempts = attempts - 1, claimed_by = NULL, lease_until = NULL,
    started_at = NULL
WHERE claimed_by = %(dispatcher)s AND status = 'running'
  AND (id = ANY(%(ids)s) OR %(all)s)
  AND NOT (id = ANY(%(keep)s))
RETURNING id;

-- name: has_open_events
SELECT EXISTS (SELECT 1 FROM orchestrator.events WHERE status = 'pending')
    OR EXISTS (SELECT 1 FROM orchestrator.events WHERE status = 'running');

-- name: schema_present
SELECT to_regclass('orchestrator.events') IS NOT NULL;

-- name: installed_workflows
SELECT name, definition FROM orchestrator.workflows;

-- name: upsert_workflow
INSERT INTO orchestrator.workflows
    (name, table_name, key_column, state_column, initial_state, definition)
VALUES (%(name)s, %(table)s, %(key)s, %(column)s, %(initial)s, %(definition)s)
ON CONFLICT (name) DO UPDATE
SET table_name = EXCLUDED.table_name, key_column = EXCLUDED.key_column,
    state_column = EXCLUDED.state_column, initial_state = EXCLUDED.initial_state,
    definition = EXCLUDED.definition, updated_at = now();

-- name: delete_transitions
DELETE FROM orchestrator.transitions WHERE workflow = %(name)s;

-- name: insert_transition
INSERT INTO orchestrator.transitions (workflow, from_state, to_state, trigger)
VALUES (%(name)s, %(source)s, %(dest)s, %(trigger)s);

-- name: table_columns
SELECT a.attname
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped;

-- name: capture_triggers
SELECT t.tgname
FROM pg_trigger t
WHERE t.tgrelid = to_regclass(%(table)s) AND t.tgname LIKE %(prefix)s;

-- name: terminate_backend
SELECT pg_terminate_backend(%(pid)s);

-- name: migrate_lock
SELECT pg_advisory_lock(hashtext('orchestrator.migrate'));
