"""An arrival that no handler serves is recorded finished: no claim, no finish, no NOTIFY.

``capture_v3`` takes over every trigger ``capture_v2`` served (same name, table, WHEN and
arguments; re-created in place). Its arguments are capture_v2's (workflow, key column, watched
column, then ``'deadlines'`` or ``''``), followed by the states whose arrival no handler of the
installed workflow serves: an event whose new value is one of them is inserted already ``done``
with the outcome ``no_handler`` and ``finished_at`` set, as a dispatcher would have finished it
after a claim, so the row's timeline stays complete and the queue gets no work for it (one in
five to seven events of a chain that ends in a terminal state). ``orchestrator migrate``
installs the states; triggers carried over from capture_v2 have none and record as before.
SECURITY DEFINER, pinned ``search_path``, EXECUTE revoked from PUBLIC, as in revision 0004.
Downgrade points the triggers back at capture_v2, which ignores the extra arguments.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
-- Records an event for a row change, as the schema's owner. Arguments: workflow, key column,
-- watched column, 'deadlines' (the state column of a workflow with deadlines) or '', then the
-- states whose arrival no handler serves: such an event is recorded finished (no_handler).
CREATE FUNCTION orchestrator.capture_v3() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_data jsonb := pg_catalog.to_jsonb(NEW);
    old_data jsonb;
    unserved boolean;
BEGIN
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
             status, outcome, finished_at)
        VALUES
            (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
             old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data,
             'done', 'no_handler', pg_catalog.clock_timestamp());
    ELSE
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row)
        VALUES
            (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
             old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data);
    END IF;
    IF TG_NARGS > 3 AND TG_ARGV[3] = 'deadlines' THEN
        UPDATE orchestrator.events e
        SET status = 'done', outcome = 'cancelled', finished_at = pg_catalog.now()
        WHERE e.workflow = TG_ARGV[0] AND e.row_key = new_data ->> TG_ARGV[1]
          AND e.op = 'TIMER' AND e.status = 'pending';
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             run_after)
        SELECT TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], 'TIMER',
               d.state, d.to_state, new_data, new_data,
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

REVOKE EXECUTE ON FUNCTION orchestrator.capture_v3() FROM PUBLIC;
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


V2_TO_V3 = [("orchestrator.capture_v2()", "orchestrator.capture_v3")]
V3_TO_V2 = [("orchestrator.capture_v3()", "orchestrator.capture_v2")]


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(repoint(V2_TO_V3))


def downgrade() -> None:
    op.execute(repoint(V3_TO_V2))
    op.execute("DROP FUNCTION orchestrator.capture_v3();")
