-- Installing workflows, loaded once by orchestrator.install: their definitions, and the guard
-- and capture triggers on their tables. Each starts with "-- name: x"; {name}-style parts are
-- identifiers or keywords composed in with psycopg.sql, never text from a user.

-- name: schema_present
SELECT to_regclass('orchestrator.events') IS NOT NULL;

-- name: schema_exists
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'orchestrator');

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

-- name: limits_present
-- Whether the schema has the fleet-wide limits' tables (revision 0008 on).
SELECT to_regclass('orchestrator.limits') IS NOT NULL;

-- name: upsert_limit
-- A handler's fleet-wide limit; the bucket never holds more than a second's worth of tokens
-- (at least one), and keeps what it holds when the rate changes.
INSERT INTO orchestrator.limits AS l (name, max_running, per_s, burst, tokens)
VALUES (%(name)s, %(max_running)s, %(per_s)s, %(burst)s, %(burst)s)
ON CONFLICT (name) DO UPDATE
SET max_running = EXCLUDED.max_running, per_s = EXCLUDED.per_s, burst = EXCLUDED.burst,
    tokens = least(l.tokens, EXCLUDED.burst), updated_at = now();

-- name: size_limit_slots
-- One slot per run at once: those missing are added, those over the bound removed (an event
-- running in a removed slot finishes; the new bound holds from then on).
WITH added AS (
    INSERT INTO orchestrator.limit_slots (name, slot)
    SELECT %(name)s, g FROM generate_series(1, coalesce(%(max_running)s::integer, 0)) AS g
    ON CONFLICT DO NOTHING
)
DELETE FROM orchestrator.limit_slots
WHERE name = %(name)s AND slot > coalesce(%(max_running)s::integer, 0);

-- name: column_types
-- The columns of a workflow's table and their types as casts name them (the dispatcher's
-- write-back casts its arrays of values to these). A workflow names its table exactly (case
-- and all): quoted here before the lookup.
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND a.attnum > 0 AND NOT a.attisdropped;

-- name: column_generated
-- Whether a column is one PostgreSQL computes from the row's other columns (GENERATED ALWAYS AS).
SELECT a.attgenerated <> ''
FROM pg_attribute a
WHERE a.attrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND a.attname = %(column)s AND NOT a.attisdropped;

-- name: functions_present
-- Whether the schema has the trigger functions (and so the columns) this version needs
-- (revision 0007 on).
SELECT to_regprocedure('orchestrator.capture_v4()') IS NOT NULL
   AND to_regprocedure('orchestrator.guard_v2()') IS NOT NULL;

-- name: own_triggers
-- The triggers on a workflow's table that the orchestrator made for that workflow: they call
-- one of its trigger functions (any version) and their first argument is the workflow's name
-- (tgargs holds each argument followed by a zero byte).
SELECT t.tgname
FROM pg_trigger t
WHERE t.tgrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND t.tgfoid IN (SELECT p.oid FROM pg_proc p
                   WHERE p.pronamespace = 'orchestrator'::regnamespace
                     AND p.proname IN ('capture_v1', 'guard_v1', 'capture_v2', 'guard_v2',
                                       'capture_v3', 'capture_v4'))
  AND t.tgnargs >= 1
  AND substring(t.tgargs FROM 1 FOR octet_length(convert_to(%(name)s::text,
          current_setting('server_encoding'))) + 1)
      = convert_to(%(name)s::text, current_setting('server_encoding')) || '\x00'::bytea;

-- name: table_triggers
-- Every trigger a user made on a workflow's table (not those PostgreSQL makes for constraints).
SELECT t.tgname
FROM pg_trigger t
WHERE t.tgrelid = to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))
  AND NOT t.tgisinternal;

-- name: migrate_lock
SELECT pg_advisory_lock(hashtext('orchestrator.migrate'));

-- name: create_trigger
-- One guard or capture trigger of a workflow. {timing} is BEFORE or AFTER, {event} INSERT or
-- UPDATE OF a column, {when} empty or a WHEN clause: a real change of the column (and, for a
-- column served by column routes alone, values one of them serves), or a new row's values.
CREATE OR REPLACE TRIGGER {name} {timing} {event} ON {table}
FOR EACH ROW {when} EXECUTE FUNCTION {function}({args});

-- name: drop_trigger
DROP TRIGGER {name} ON {table};

-- name: adopt_old_version_table
-- Builds before 0.1.0 kept Alembic's version in public.orchestrator_alembic_version; it moves
-- into the orchestrator schema, beside what it describes, under Alembic's usual name.
DO $$
BEGIN
    IF to_regclass('public.orchestrator_alembic_version') IS NOT NULL
       AND to_regclass('orchestrator.alembic_version') IS NULL
       AND EXISTS (SELECT FROM pg_namespace WHERE nspname = 'orchestrator') THEN
        ALTER TABLE public.orchestrator_alembic_version SET SCHEMA orchestrator;
        ALTER TABLE orchestrator.orchestrator_alembic_version RENAME TO alembic_version;
    END IF;
END
$$;

-- name: drop_schema
-- After a downgrade to base only Alembic's version table is left in the schema. RESTRICT: an
-- object someone else put there keeps the schema, and the error says which.
DROP TABLE IF EXISTS orchestrator.alembic_version;
DROP SCHEMA IF EXISTS orchestrator RESTRICT;
