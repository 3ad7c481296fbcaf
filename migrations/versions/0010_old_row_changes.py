"""An event's ``old_row`` holds only the columns whose value differs from ``new_row``.

``capture_v5`` takes over every trigger ``capture_v4`` served (same name, table, WHEN and
arguments; re-created in place) and records what capture_v4 records, except that ``old_row``
is the old row's columns whose value (as JSON text) differs from the new row's: the whole old
row is ``new_row || old_row`` (OLD and NEW of one trigger call have the same columns), which
also holds for events recorded before (their ``old_row`` is whole). An INSERT's ``old_row``
stays NULL; a deadline timer's is ``'{}'`` (the row as it was is the row as it is). The
claims read it back whole, so a handler's ``Event.old_row`` is unchanged.

Why: the event's content is written twice (at capture, and into the history), and the old row
was most of it. pg_walinspect over 3,000 transitions of the bench's workflow
(``bench/walsplit.py``, variants a and ad): 2,948 -> 2,653 bytes of WAL per transition.

SECURITY DEFINER, pinned ``search_path``, EXECUTE revoked from PUBLIC, as in revision 0004.
Downgrade points the triggers back at capture_v4 and writes every partial ``old_row`` whole.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE FUNCTION orchestrator.capture_v5() RETURNS trigger
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
        -- Only the columns whose value differs from NEW's (compared as JSON text, so that a
        -- number's written form counts): the old row is new_row || old_row. The trigger fires
        -- on a real change of its column, so this is never empty but for values whose JSON
        -- text is the same; then it is '{}' and the old row is new_row.
        SELECT coalesce(pg_catalog.jsonb_object_agg(o.key, o.value), '{}'::jsonb)
        INTO old_data
        FROM pg_catalog.jsonb_each(pg_catalog.to_jsonb(OLD)) AS o (key, value)
        WHERE (new_data -> o.key)::text IS DISTINCT FROM o.value::text;
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
             (new_data || old_data) ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data,
             session, 'done', 'no_handler', pg_catalog.clock_timestamp());
    ELSE
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             session_variables)
        VALUES
            (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
             (new_data || old_data) ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data,
             new_data, session);
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
               d.state, d.to_state, '{}'::jsonb, new_data, session,
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

REVOKE EXECUTE ON FUNCTION orchestrator.capture_v5() FROM PUBLIC;
"""

# Back to whole old rows: an old_row missing a column of new_row was recorded by capture_v5.
DOWNGRADE = r"""
DROP FUNCTION orchestrator.capture_v5();
UPDATE orchestrator.events SET old_row = new_row || old_row
WHERE old_row IS NOT NULL AND NOT old_row ?& ARRAY(SELECT jsonb_object_keys(new_row));
UPDATE orchestrator.events_history SET old_row = new_row || old_row
WHERE old_row IS NOT NULL AND NOT old_row ?& ARRAY(SELECT jsonb_object_keys(new_row));
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


V4_TO_V5 = [("orchestrator.capture_v4()", "orchestrator.capture_v5")]
V5_TO_V4 = [("orchestrator.capture_v5()", "orchestrator.capture_v4")]


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(repoint(V4_TO_V5))


def downgrade() -> None:
    op.execute(repoint(V5_TO_V4))
    op.execute(DOWNGRADE)
