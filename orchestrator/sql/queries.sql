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
          e.old_row, e.new_row, e.attempts, e.created_at, e.session_variables;

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
          e.old_row, e.new_row, e.attempts, e.created_at, e.session_variables;

-- name: has_suspects
-- Whether an event whose dispatcher died (see requeue_expired) waits to be run alone; the
-- dispatcher then finishes the work in hand before it claims one.
SELECT EXISTS (
    SELECT 1 FROM orchestrator.events
    WHERE status = 'pending' AND suspect AND run_after <= now()
      AND workflow = ANY(%(workflows)s));

-- name: write_back
-- Finishes a batch of events of one workflow and writes their handlers' outcomes to their rows,
-- all in one statement (one parse, one plan, one result set, whatever the batch's size). Each
-- event's own columns and the values to write come in arrays, in step; {values} are the arrays
-- of the assigned columns, each cast to its column's type, named v_0, v_1... in {columns}. A
-- row is written only while its event is still ours (fencing token: attempt, claimed_by,
-- running) and only if the row still holds the values the event saw in its state column and in
-- the column the event is about (compare-and-set, {matches}: those values come as text arrays
-- e_0, e_1... in {seen}, cast to the columns' types); otherwise the event is finished with its
-- stale outcome. Returns each finished event's id and outcome; an event no longer ours comes
-- back without a row. The events are locked in id order, so that two transactions never wait
-- on each other's half of a batch. %(running)s is 'running', a parameter on purpose (see
-- finish_many).
WITH f AS MATERIALIZED (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(keys)s::{key_type}[],
                %(statuses)s::text[], %(outcomes)s::text[], %(stale_outcomes)s::text[],
                %(handlers)s::text[], %(next_states)s::text[], %(errors)s::text[]{seen},
                {values})
         AS f(id, attempt, key, status, outcome, stale_outcome, handler, next_state, error
              {seen_columns}, {columns})
), fenced AS (
    SELECT e.id
    FROM orchestrator.events e JOIN f ON f.id = e.id
    WHERE e.attempts = f.attempt AND e.claimed_by = %(dispatcher)s AND e.status = %(running)s
    ORDER BY e.id
    FOR UPDATE OF e
), moved AS (
    UPDATE {table} AS t SET {assignments}
    FROM f JOIN fenced USING (id)
    WHERE t.{key} = f.key AND {matches}
    RETURNING f.id
)
UPDATE orchestrator.events e
SET status = f.status,
    outcome = CASE WHEN f.id IN (SELECT id FROM moved) THEN f.outcome ELSE f.stale_outcome END,
    handler = f.handler, next_state = f.next_state, last_error = f.error,
    finished_at = now(), lease_until = NULL, suspect = false
FROM f JOIN fenced USING (id)
WHERE e.id = f.id
RETURNING e.id, e.outcome;

-- name: finish_many
-- Finishes events that write nothing to their rows, all in one statement (one parse and one
-- result set, instead of one per event); each event's own columns come in the arrays, in step.
-- Only an event still ours (same attempt, claimed by this dispatcher, running) is finished;
-- one no longer ours comes back without a row. %(running)s is 'running', given as a parameter
-- so that the generic plan PostgreSQL may keep for this prepared statement once it has run a
-- few times cannot read the events through events_leased (whose predicate a literal 'running'
-- would match): that index's statistics, taken when next to nothing was running, promise one
-- row, and such a plan compares every running event of the fleet with every result of the
-- batch (a batch of 115 against 2,000 running events: 136 ms). The generic plan finds each
-- event by one probe of the primary key instead (3 ms); a custom plan, which knows the
-- batch's length, hashes one side and stays linear either way.
UPDATE orchestrator.events AS e
SET status = f.status, outcome = f.outcome, handler = f.handler, last_error = f.error,
    finished_at = now(), lease_until = NULL, suspect = false
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(statuses)s::text[],
            %(outcomes)s::text[], %(handlers)s::text[], %(errors)s::text[])
     AS f(id, attempt, status, outcome, handler, error)
WHERE e.id = f.id AND e.attempts = f.attempt AND e.claimed_by = %(dispatcher)s
  AND e.status = %(running)s
RETURNING e.id, e.outcome;

-- name: retry
-- Puts failed events back in the queue for a later attempt, each after its own delay; their
-- rows stay blocked meanwhile. The outcome column stays empty until an event finishes; 'retry'
-- is only reported. Only an event still ours is retried; one no longer ours has no row.
-- %(running)s is 'running', a parameter on purpose (see finish_many).
UPDATE orchestrator.events AS e
SET status = 'pending', run_after = now() + make_interval(secs => f.delay_s),
    handler = f.handler, last_error = f.error, claimed_by = NULL, lease_until = NULL,
    suspect = false
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(handlers)s::text[],
            %(errors)s::text[], %(delays_s)s::float8[])
     AS f(id, attempt, handler, error, delay_s)
WHERE e.id = f.id AND e.attempts = f.attempt AND e.claimed_by = %(dispatcher)s
  AND e.status = %(running)s
RETURNING e.id, 'retry';

-- name: record_errors
INSERT INTO orchestrator.event_errors (event_id, attempt, error)
SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(errors)s::text[]);

-- name: write_settings
-- For a dispatcher's write-back transaction: a row lock held elsewhere (a long transaction)
-- fails the write after a short wait instead of stalling every result in the batch; with quiet
-- 'on', new events are handed over directly and their triggers need not NOTIFY.
SELECT set_config('orchestrator.quiet', %(quiet)s, true),
       set_config('lock_timeout', %(lock_timeout)s, true);

-- name: claim_settings
-- For a claim's transaction: index plans (see index_plans), and no wait for the commit to reach
-- the disk. A claim is only a lease: if the server crashed before the claim's WAL were written,
-- the event would be pending again, as if never claimed, and the handler's write-back (its own
-- commit durable, after the claim's in the WAL) fenced out; so the commit need not be waited
-- for, and an idle system's latency does not pay for two disk flushes per event, only for the
-- write-back's.
SELECT set_config('enable_seqscan', 'off', true), set_config('synchronous_commit', 'off', true);

-- name: index_plans
-- The engine's own statements reach their rows through indexes; say so to the planner for this
-- transaction. psycopg prepares them, and PostgreSQL keeps a generic plan: one made while a
-- table looked nearly empty (a fresh install, after a purge, right after ANALYZE of a quiet
-- table) stays a sequential scan as the table grows, and every write-back then reads the whole
-- events table. LOCAL: a handler's own queries are never affected.
SELECT set_config('enable_seqscan', 'off', true);

-- name: hand_over_plans
-- For the hand-over claim (claim_next_of_rows), the last statement of a write-back's
-- transaction: its generic plan, always. Left to choose, PostgreSQL planned it afresh at every
-- write-back (its custom plans looked cheaper), for longer than it ran; its generic plan is
-- safe whatever the batch (the ids come first, then an index lookup each). Not for the other
-- statements: a generic plan knows no array's length (it plans for ten elements), and theirs
-- join the arrays to the events.
SELECT set_config('plan_cache_mode', 'force_generic_plan', true);

-- name: extend_leases
-- The heartbeat: a dispatcher keeps the events it is still working on. %(running)s is
-- 'running', a parameter on purpose (see finish_many).
UPDATE orchestrator.events
SET lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(ids)s) AND claimed_by = %(dispatcher)s AND status = %(running)s;

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

-- name: terminate_backend
SELECT pg_terminate_backend(%(pid)s);

-- name: backend_pid
-- The server process of this transaction. Behind a transaction-mode pooler the pid a client
-- was told at connect time is the pooler's invention; this one stays true until COMMIT.
SELECT pg_backend_pid();

-- name: archive
-- Finished events leave the queue for the history (see orchestrator.archive_v1): the queue
-- keeps only open, dead and recently finished events. NULL: another session is at it.
SELECT orchestrator.archive_v1(now() - make_interval(secs => %(after_s)s), %(max_rows)s,
                               false, %(width)s::interval);

-- name: prune
-- Finished events older than the retention leave the history, whole hours at a time (see
-- orchestrator.prune_v1). No row: another session is at it, and this one does not wait.
SELECT events, partitions, pruned_before
FROM orchestrator.prune_v1(now() - %(older_than)s::interval, %(dry_run)s, %(wait)s);

-- name: related_children
-- A workflow's related data (orchestrator.related), read for one row: {table}, {column} and
-- the query's text are composed in from its declaration. The rows of a child table.
SELECT coalesce(jsonb_agg(to_jsonb(c)), '[]'::jsonb) FROM {table} c WHERE c.{column} = %(value)s;

-- name: related_parent
-- The row of a parent table, or NULL: always one result row.
SELECT (SELECT to_jsonb(p) FROM {table} p WHERE p.{column} = %(value)s LIMIT 1);

-- name: related_query
-- The rows of the workflow's own query.
SELECT coalesce(jsonb_agg(to_jsonb(q)), '[]'::jsonb) FROM ({query}) q;

-- name: take_slots
-- Fleet-wide limits (revision 0008): takes up to one slot of limit %(name)s for each of the
-- claimed events %(ids)s, in their order, and returns the ids that got one. A slot is free when
-- it holds no event or one that is no longer running: a slot is given back by the event's own
-- finish, retry, release or requeue, with nothing to undo when a dispatcher dies. Slots these
-- events still hold from an earlier attempt come first, so an event never holds two. SKIP
-- LOCKED: a slot another dispatcher is taking right now is not free for this one.
WITH free AS (
    SELECT s.slot, s.event_id = ANY(%(ids)s::bigint[]) AS own
    FROM orchestrator.limit_slots s
    WHERE s.name = %(name)s
      AND (s.event_id IS NULL OR s.event_id = ANY(%(ids)s::bigint[])
           OR NOT EXISTS (SELECT FROM orchestrator.events e
                          WHERE e.id = s.event_id AND e.status = 'running'))
    ORDER BY own DESC, s.slot
    LIMIT cardinality(%(ids)s::bigint[])
    FOR UPDATE SKIP LOCKED
), paired AS (
    SELECT f.slot, w.id
    FROM (SELECT slot, row_number() OVER (ORDER BY own DESC, slot) AS k FROM free) AS f
    JOIN unnest(%(ids)s::bigint[]) WITH ORDINALITY AS w (id, k) USING (k)
)
UPDATE orchestrator.limit_slots s SET event_id = paired.id
FROM paired
WHERE s.name = %(name)s AND s.slot = paired.slot
RETURNING s.event_id;

-- name: take_tokens
-- A limit's rate: a token bucket refilled at per_s tokens a second up to burst, taken from as
-- one locked row (dispatchers admitting for the same limit take turns here). Returns how many
-- of %(count)s runs may start now; no row for a limit without a rate.
WITH bucket AS (
    SELECT name, least(burst, tokens + per_s * extract(epoch FROM clock_timestamp() - refilled_at))
                 AS have
    FROM orchestrator.limits
    WHERE name = %(name)s AND per_s IS NOT NULL
    FOR UPDATE
), taken AS (
    SELECT name, have, least(floor(have)::integer, %(count)s) AS n FROM bucket
)
UPDATE orchestrator.limits l
SET tokens = taken.have - taken.n, refilled_at = clock_timestamp()
FROM taken
WHERE l.name = taken.name
RETURNING taken.n;

-- name: give_slots_back
-- Slots taken for events the rate then held back.
UPDATE orchestrator.limit_slots SET event_id = NULL
WHERE name = %(name)s AND event_id = ANY(%(ids)s::bigint[]);

-- name: wait_turn
-- Events over their handler's limit go back to the queue to wait their turn: the attempt is not
-- counted (as for a release), the row's later events keep waiting behind them, and the limit
-- counts the wait.
WITH back AS (
    UPDATE orchestrator.events
    SET status = 'pending', attempts = attempts - 1, claimed_by = NULL, lease_until = NULL,
        started_at = NULL, run_after = now() + make_interval(secs => %(delay_s)s)
    WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(dispatcher)s AND status = 'running'
    RETURNING id
)
UPDATE orchestrator.limits SET waits = waits + (SELECT count(*) FROM back)
WHERE name = %(name)s;
