"""Session variables: the writing application's session is recorded with each event.

``capture_v4`` takes over every trigger ``capture_v3`` served (same name, table, WHEN and
arguments; re-created in place) and records what capture_v3 records, plus the session
variables of the transaction that made the change, in the new nullable jsonb column
``session_variables`` of ``orchestrator.events`` (and of ``orchestrator.events_history``, and
so of the ``orchestrator.event_log`` view, re-created): the setting ``orchestrator.session``,
or when that is unset or empty ``hasura.user`` (what Hasura sets, so a Hasura application's
writes carry their session unchanged). An application sets it for its transaction:
``SELECT set_config('orchestrator.session', '{"x-user-id": "42"}', true)``. Neither set: NULL.
A value that is not a JSON object fails the application's write with an error that names the
setting (malformed JSON fails it as the cast does, naming capture_v4): recording it as
something else would give handlers a session that is silently wrong. The cost per write is
one setting lookup (two when the first is unset) and, when one is set, one cast.
SECURITY DEFINER, pinned ``search_path``, EXECUTE revoked from PUBLIC, as in revision 0004.
Downgrade points the triggers back at capture_v3 and drops the column (the recorded sessions
with it).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
ALTER TABLE orchestrator.events ADD COLUMN session_variables jsonb;
ALTER TABLE orchestrator.events_history ADD COLUMN session_variables jsonb;

-- The view lists the columns the tables had when it was made: re-created with the new one.
DROP VIEW orchestrator.event_log;
CREATE VIEW orchestrator.event_log AS
    SELECT * FROM orchestrator.events
    UNION ALL
    SELECT * FROM orchestrator.events_history;
GRANT SELECT ON orchestrator.event_log
    TO orchestrator_admin, orchestrator_reader, orchestrator_dispatcher;

-- Records an event for a row change, as the schema's owner, with the session variables of the
-- transaction that made it. Arguments as capture_v3's: workflow, key column, watched column,
-- 'deadlines' or '', then the states whose arrival no handler serves. The session variables:
-- orchestrator.session, else hasura.user (a setting never set is NULL, one set only for an
-- earlier transaction is ''), a JSON object; NULL when neither is set.
CREATE FUNCTION orchestrator.capture_v4() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_data jsonb := pg_catalog.to_jsonb(NEW);
    old_data jsonb;
    unserved boolean;
    raw text := coalesce(
        nullif(pg_catalog.current_setting('orchestrator.session', true), ''),
        nullif(pg_catalog.current_setting('hasura.user', true), ''));
    session jsonb;
BEGIN
    IF raw IS NOT NULL THEN
        session := raw::jsonb;
        IF pg_catalog.jsonb_typeof(session) <> 'object' THEN
            RAISE EXCEPTION 'orchestrator: the session variables (orchestrator.session or '
                            'hasura.user) must be a JSON object, not %',
                            pg_catalog.left(raw, 80)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'SELECT set_config(''orchestrator.session'', '
                             '''{"x-user-id": "42"}'', true)';
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        old_data := pg_catalog.to_jsonb(OLD);
    END IF;
    unserved := coalesce(TG_NARGS > 4
                         AND (new_data ->> TG_ARGV[2]) = ANY (TG_ARGV[4:TG_NARGS - 1]), false);
    IF unserved THEN
        -- No handler serves this arrival: recorded for the timeline, finished already, no
        -- dispatcher's work and nothing to wake one for.
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             session_variables, status, outcome, finished_at)
        VALUES
            (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
             old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data,
             session, 'done', 'no_handler', pg_catalog.clock_timestamp());
    ELSE
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             session_variables)
        VALUES
            (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
             old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data, session);
    END IF;
    IF TG_NARGS > 3 AND TG_ARGV[3] = 'deadlines' THEN
        UPDATE orchestrator.events e
        SET status = 'done', outcome = 'cancelled', finished_at = pg_catalog.now()
        WHERE e.workflow = TG_ARGV[0] AND e.row_key = new_data ->> TG_ARGV[1]
          AND e.op = 'TIMER' AND e.status = 'pending';
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             session_variables, run_after)
        SELECT TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], 'TIMER',
               d.state, d.to_state, new_data, new_data, session,
               pg_catalog.now() + pg_catalog.make_interval(secs => d.after_s)
        FROM orchestrator.deadlines d
        WHERE d.workflow = TG_ARGV[0] AND d.state = new_data ->> TG_ARGV[2];
    END IF;
    IF NOT unserved
       AND pg_catalog.current_setting('orchestrator.quiet', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('orchestrator', '');
    END IF;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION orchestrator.capture_v4() FROM PUBLIC;
"""

# Back to capture_v3's columns: the view goes while the columns do, then comes back.
DOWNGRADE = r"""
DROP FUNCTION orchestrator.capture_v4();
DROP VIEW orchestrator.event_log;
ALTER TABLE orchestrator.events DROP COLUMN session_variables;
ALTER TABLE orchestrator.events_history DROP COLUMN session_variables;
CREATE VIEW orchestrator.event_log AS
    SELECT * FROM orchestrator.events
    UNION ALL
    SELECT * FROM orchestrator.events_history;
GRANT SELECT ON orchestrator.event_log
    TO orchestrator_admin, orchestrator_reader, orchestrator_dispatcher;
"""


def repoint(pairs: list[tuple[str, str]]) -> str:
    """A DO block re-creating, in place, each trigger whose function is the first of a pair so
    that it calls the second: same name, table, timing, event, WHEN and arguments. The
    arguments are read from pg_trigger.tgargs (each ends with a zero byte); the orchestrator's
    UPDATE triggers fire on one column, when its value really changes. The clones a trigger on
    a partitioned table has on its partitions follow their parent's."""
    values = ", ".join(f"('{old}'::regprocedure, '{new}')" for old, new in pairs)
    return f"""
DO $$
DECLARE
    t record;
    args text[];
    rest bytea;
    cut integer;
    event text;
    condition text;
BEGIN
    FOR t IN
        SELECT tg.tgname, tg.tgrelid, tg.tgtype, tg.tgattr, tg.tgnargs, tg.tgargs,
               tg.tgqual IS NOT NULL AS has_when, n.nspname, c.relname, f.new_function
        FROM pg_trigger tg
        JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN (VALUES {values}) AS f (old_function, new_function)
          ON tg.tgfoid = f.old_function
        WHERE NOT tg.tgisinternal AND tg.tgparentid = 0
    LOOP
        args := '{{}}';
        rest := t.tgargs;
        FOR i IN 1 .. t.tgnargs LOOP
            cut := position('\\x00'::bytea IN rest);
            args := args || convert_from(substring(rest FROM 1 FOR cut - 1),
                                         current_setting('server_encoding'));
            rest := substring(rest FROM cut + 1);
        END LOOP;
        IF t.tgtype & 4 <> 0 THEN  -- TRIGGER_TYPE_INSERT
            event := 'INSERT';
            condition := '';
        ELSE
            SELECT format('UPDATE OF %I', a.attname),
                   format('WHEN (OLD.%1$I IS DISTINCT FROM NEW.%1$I)', a.attname)
            INTO event, condition
            FROM pg_attribute a
            WHERE a.attrelid = t.tgrelid AND a.attnum = t.tgattr[0];
            IF NOT t.has_when THEN
                condition := '';
            END IF;
        END IF;
        EXECUTE format('CREATE OR REPLACE TRIGGER %I %s %s ON %I.%I FOR EACH ROW %s '
                       'EXECUTE FUNCTION %s(%s)',
                       t.tgname, CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' ELSE 'AFTER' END,
                       event, t.nspname, t.relname, condition, t.new_function,
                       (SELECT coalesce(string_agg(quote_literal(a), ', '), '')
                        FROM unnest(args) AS a));
    END LOOP;
END
$$;
"""


V3_TO_V4 = [("orchestrator.capture_v3()", "orchestrator.capture_v4")]
V4_TO_V3 = [("orchestrator.capture_v4()", "orchestrator.capture_v3")]


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(repoint(V3_TO_V4))


def downgrade() -> None:
    op.execute(repoint(V4_TO_V3))
    op.execute(DOWNGRADE)
