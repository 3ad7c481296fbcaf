-- Runtime queries, loaded once by orchestrator.sql.QUERIES. Each starts with "-- name: x".
-- Placeholders: %(param)s for values; {table}-style names only where a user's table or column
-- is composed in with psycopg.sql.Identifier.

-- name: claim
-- The oldest runnable events of the workflows this dispatcher serves, at most one per row, and
-- only where no earlier event of the same row is still open: a row's events run one at a time
-- and in order (a deadline timer that is not yet running holds nothing up). FOR UPDATE SKIP
-- LOCKED lets concurrent dispatchers pass over events another one is claiming instead of
-- waiting on them; each claimed event comes back with status, fencing token (attempts,
-- claimed_by) and lease. {kind} picks plain events, suspect ones (their dispatcher died: they
-- are claimed apart, one at a time) or due deadline timers, and {order} their order; the store
-- composes the three variants once, so that each plans against its own partial index.
WITH picked AS (
    SELECT e.id
    FROM orchestrator.events e
    WHERE e.status = 'pending'
      AND {kind}
      AND e.run_after <= now()
      AND e.workflow = ANY(%(workflows)s)
      AND NOT EXISTS (
          SELECT 1 FROM orchestrator.events p
          WHERE p.workflow = e.workflow AND p.row_key = e.row_key AND p.id < e.id
            AND p.status IN ('pending', 'running')
            AND (p.op <> 'TIMER' OR p.status = 'running'))
    ORDER BY {order}
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
-- The ids are computed first (one index lookup per finished row) and the update finds them
-- by id: written as a join, a plan made while the table looked empty could drive it from the
-- pending events instead and repeat the per-row lookups for each of them, a cost that grows
-- with the backlog.
UPDATE orchestrator.events e
SET status = 'running', attempts = e.attempts + 1, claimed_by = %(dispatcher)s,
    lease_until = now() + make_interval(secs => %(lease_s)s), started_at = now()
WHERE NOT e.suspect AND e.id = ANY (ARRAY(
        SELECT n.id
        FROM unnest(%(workflows)s::text[], %(keys)s::text[]) AS r (workflow, row_key)
        CROSS JOIN LATERAL (
            SELECT min(p.id) AS id, bool_and(p.status = 'pending') AS free
            FROM orchestrator.events p
            WHERE p.workflow = r.workflow AND p.row_key = r.row_key
              AND p.status IN ('pending', 'running')
              AND (p.op <> 'TIMER' OR p.status = 'running')) AS n
        WHERE n.free))
  AND e.status = 'pending'
  AND e.run_after <= now()
RETURNING e.id, e.workflow, e.row_key, e.column_name, e.op, e.old_value, e.new_value,
          e.old_row, e.new_row, e.attempts, e.created_at;

-- name: has_suspects
-- Whether an event whose dispatcher died (see requeue_expired) waits to be run alone; the
-- dispatcher then finishes the work in hand before it claims one.
SELECT EXISTS (
    SELECT 1 FROM orchestrator.events
    WHERE status = 'pending' AND suspect AND run_after <= now()
      AND workflow = ANY(%(workflows)s));

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
    finished_at = now(), lease_until = NULL, suspect = false
FROM fenced
WHERE e.id = fenced.id
RETURNING e.outcome;

-- name: finish
-- Finishes one event that writes nothing to its row (no handler, nothing returned, dead).
UPDATE orchestrator.events
SET status = %(status)s, outcome = %(outcome)s, handler = %(handler)s, last_error = %(error)s,
    finished_at = now(), lease_until = NULL, suspect = false
WHERE id = %(id)s AND attempts = %(attempt)s AND claimed_by = %(dispatcher)s
  AND status = 'running'
RETURNING outcome;

-- name: retry
-- Puts a failed event back in the queue for a later attempt; the row stays blocked meanwhile.
-- The outcome column stays empty until the event finishes; 'retry' is only reported.
UPDATE orchestrator.events
SET status = 'pending', run_after = now() + make_interval(secs => %(delay_s)s),
    handler = %(handler)s, last_error = %(error)s, claimed_by = NULL, lease_until = NULL,
    suspect = false
WHERE id = %(id)s AND attempts = %(attempt)s AND claimed_by = %(dispatcher)s
  AND status = 'running'
RETURNING 'retry';

-- name: record_error
INSERT INTO orchestrator.event_errors (event_id, attempt, error)
VALUES (%(id)s, %(attempt)s, %(error)s);

-- name: write_settings
-- For a dispatcher's write-back transaction: a row lock held elsewhere (a long transaction)
-- fails the write after a short wait instead of stalling every result in the batch; with quiet
-- 'on', new events are handed over directly and their triggers need not NOTIFY.
SELECT set_config('orchestrator.quiet', %(quiet)s, true),
       set_config('lock_timeout', %(lock_timeout)s, true);

-- name: index_plans
-- The engine's own statements reach their rows through indexes; say so to the planner for this
-- transaction. psycopg prepares them, and PostgreSQL keeps a generic plan: one made while a
-- table looked nearly empty (a fresh install, after a purge, right after ANALYZE of a quiet
-- table) stays a sequential scan as the table grows, and every write-back then reads the whole
-- events table. LOCAL: a handler's own queries are never affected.
SELECT set_config('enable_seqscan', 'off', true);

-- name: extend_leases
-- The heartbeat: a dispatcher keeps the events it is still working on.
UPDATE orchestrator.events
SET lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(ids)s) AND claimed_by = %(dispatcher)s AND status = 'running';

-- name: requeue_expired
-- Events whose dispatcher stopped renewing the lease (killed, partitioned) go back to the queue,
-- marked suspect. The attempt stays counted, so an event that kills its dispatcher every time
-- ends up dead; run alone, it no longer takes others' attempts with it.
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
)
UPDATE orchestrator.events e
SET status = 'pending', claimed_by = NULL, lease_until = NULL, suspect = true,
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
-- For --until-idle: whether any event of these workflows is pending or running. One EXISTS per
-- status, so that each probes its own partial index.
SELECT EXISTS (SELECT 1 FROM orchestrator.events
               WHERE status = 'pending' AND workflow = ANY(%(workflows)s))
    OR EXISTS (SELECT 1 FROM orchestrator.events
               WHERE status = 'running' AND workflow = ANY(%(workflows)s));

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

-- name: delete_deadlines
DELETE FROM orchestrator.deadlines WHERE workflow = %(name)s;

-- name: insert_deadline
INSERT INTO orchestrator.deadlines (workflow, state, after_s, to_state)
VALUES (%(name)s, %(state)s, %(after_s)s, %(dest)s);

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

-- name: backend_pid
-- The server process of this transaction. Behind a transaction-mode pooler the pid a client
-- was told at connect time is the pooler's invention; this one stays true until COMMIT.
SELECT pg_backend_pid();

-- name: migrate_lock
SELECT pg_advisory_lock(hashtext('orchestrator.migrate'));

-- Operator queries -----------------------------------------------------------------------------

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
FROM orchestrator.events
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s)
  AND (%(row_key)s::text IS NULL OR row_key = %(row_key)s)
  AND (%(search)s::text IS NULL OR handler ILIKE '%%' || %(search)s || '%%'
       OR last_error ILIKE '%%' || %(search)s || '%%')
ORDER BY id DESC
LIMIT %(limit)s;

-- name: row_history
SELECT id, workflow, row_key, op, column_name, old_value, new_value, status, outcome, attempts,
       handler, next_state, last_error, created_at, started_at, finished_at, run_after
FROM orchestrator.events
WHERE workflow = %(workflow)s AND row_key = %(row_key)s
ORDER BY id;

-- name: row_errors
SELECT r.event_id, r.attempt, r.error, r.at
FROM orchestrator.event_errors r
JOIN orchestrator.events e ON e.id = r.event_id
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
    SELECT e.created_at AS since FROM orchestrator.events e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.column_name = %(column)s
      AND e.op <> 'TIMER'
    ORDER BY e.id DESC LIMIT 1) s ON true
LEFT JOIN LATERAL (
    SELECT e.* FROM orchestrator.events e
    WHERE e.workflow = %(workflow)s AND e.row_key = r.key AND e.op <> 'TIMER'
    ORDER BY e.id DESC LIMIT 1) l ON true
LEFT JOIN LATERAL (
    SELECT e.run_after AS deadline_at, e.new_value AS deadline_to
    FROM orchestrator.events e
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
    SELECT e.created_at AS since FROM orchestrator.events e
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
      FROM orchestrator.events
      WHERE id >= %(floor)s AND finished_at > %(since)s AND status IN ('done', 'dead')
        AND outcome IS DISTINCT FROM 'cancelled') f
GROUP BY workflow;

-- name: event_horizon
SELECT now() AS now, coalesce(max(id), 0) AS max_id FROM orchestrator.events;

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
SELECT id, status FROM orchestrator.events WHERE id = ANY(%(ids)s);

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
-- The write that follows is an operator's deliberate one: the guard trigger lets it through.
SELECT set_config('orchestrator.override', 'on', true);

-- Demo data ------------------------------------------------------------------------------------

-- name: demo_restaurant
INSERT INTO restaurants (id, name, cuisine, is_open, accept_rate)
VALUES (%(id)s, %(name)s, %(cuisine)s, %(is_open)s, %(accept_rate)s)
ON CONFLICT (id) DO NOTHING;

-- name: demo_menu_item
INSERT INTO menu_items (id, restaurant_id, name, price_cents, available)
VALUES (%(id)s, %(restaurant_id)s, %(name)s, %(price_cents)s, %(available)s)
ON CONFLICT (id) DO NOTHING;

-- name: demo_customer
INSERT INTO customers (id, name, email, address, card)
VALUES (%(id)s, %(name)s, %(email)s, %(address)s, %(card)s)
ON CONFLICT (id) DO NOTHING;

-- name: demo_agent
INSERT INTO agents (id, name) VALUES (%(id)s, %(name)s)
ON CONFLICT (id) DO NOTHING;

-- name: demo_refs_taken
SELECT count(*) FROM orders WHERE ref LIKE %(prefix)s;

-- name: demo_order
INSERT INTO orders (ref, customer_id, restaurant_id, items, total_cents)
VALUES (%(ref)s, %(customer_id)s, %(restaurant_id)s, %(items)s, %(total_cents)s)
RETURNING id;

-- name: demo_progress
SELECT status, count(*) FROM orders WHERE id BETWEEN %(first)s AND %(last)s GROUP BY status;

-- name: demo_totals
-- What the orchestrator did for a range of orders: transitions applied, failed attempts (not
-- counting operator redrives), dead events.
SELECT count(*) FILTER (WHERE e.outcome = 'applied') AS applied,
       (SELECT count(*) FROM orchestrator.event_errors r
        JOIN orchestrator.events x ON x.id = r.event_id
        WHERE x.workflow = 'food_order' AND r.attempt > 0
          AND x.row_key::bigint BETWEEN %(first)s AND %(last)s) AS failed_attempts,
       count(*) FILTER (WHERE e.status = 'dead') AS dead
FROM orchestrator.events e
WHERE e.workflow = 'food_order' AND e.row_key::bigint BETWEEN %(first)s AND %(last)s;

-- name: demo_double_charges
SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id HAVING count(*) > 1) d;
