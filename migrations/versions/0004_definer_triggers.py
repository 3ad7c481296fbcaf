"""Writers need no privilege on the event log; bypassing the guard is a role, not a setting.

- ``capture_v2`` and ``guard_v2`` take over every trigger ``capture_v1`` and ``guard_v1`` served
  (same arguments, same names; each trigger is re-created in place). They are SECURITY DEFINER:
  they run as the role that migrated (the owner of the orchestrator schema), with
  ``search_path`` pinned to ``pg_catalog, pg_temp`` and every table schema-qualified, so a role
  that writes a workflow table needs no privilege on the orchestrator schema and its changes
  are still recorded and checked. EXECUTE on them is revoked from PUBLIC: nobody else can
  attach them to a table of their own to record made-up events (a trigger fires whoever
  writes; EXECUTE is checked only when a trigger is created).
- ``guard_v2`` lets a write move a row outside its workflow only when the transaction sets
  ``orchestrator.override = 'on'`` **and** the session's user is a member of
  ``orchestrator_admin`` (or a superuser). Anyone may set the setting; it says what the session
  means to do. Membership says it may: ``session_user`` changes only by SET SESSION
  AUTHORIZATION, which only a superuser's session can run, and SET ROLE leaves it alone.
- Two group roles (NOLOGIN, shared by the server's databases, created when missing, which
  needs CREATEROLE), granted here in this database:
  ``orchestrator_admin``, an operator who redrives dead events and may move rows outside the
  workflow: SELECT on the schema's tables, UPDATE of the columns a redrive resets, INSERT on
  event_errors; ``orchestrator_reader``, an operator or dashboard that only reads: SELECT on
  the schema's tables. Both need SELECT (the admin: UPDATE) on the workflow tables from the
  application.
- ``orchestrator_dispatcher`` keeps only what dispatching uses: no INSERT on events (capture
  records the events of its write-backs as the owner), UPDATE of the bookkeeping columns only
  (never of what an event says happened: workflow, row, values, rows), INSERT on event_errors,
  SELECT on events and workflows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
-- capture_v1 as the schema's owner: see the revision's docstring. Arguments: workflow, key
-- column, watched column, and 'deadlines' for the state column of a workflow with deadlines.
CREATE FUNCTION orchestrator.capture_v2() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_data jsonb := pg_catalog.to_jsonb(NEW);
    old_data jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_data := pg_catalog.to_jsonb(OLD);
    END IF;
    INSERT INTO orchestrator.events
        (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row)
    VALUES
        (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
         old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data);
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
    IF pg_catalog.current_setting('orchestrator.quiet', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('orchestrator', '');
    END IF;
    RETURN NULL;
END
$$;

-- Refuses a state change the workflow does not allow, whoever writes it. Arguments: workflow,
-- state column. A member of orchestrator_admin (or a superuser) may bypass it on purpose:
-- SET LOCAL orchestrator.override = 'on'. Anyone else who sets it is refused all the same.
CREATE FUNCTION orchestrator.guard_v2() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_state text := pg_catalog.to_jsonb(NEW) ->> TG_ARGV[1];
    old_state text;
    asked boolean := coalesce(
        pg_catalog.current_setting('orchestrator.override', true) = 'on', false);
    why text := '';
BEGIN
    IF asked THEN
        IF pg_catalog.pg_has_role(SESSION_USER, 'orchestrator_admin', 'MEMBER') THEN
            RETURN NEW;
        END IF;
        why := pg_catalog.format(' (orchestrator.override is on, but %s is not a member of '
                                 'orchestrator_admin)', SESSION_USER);
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT FROM orchestrator.workflows w
                       WHERE w.name = TG_ARGV[0] AND w.initial_state = new_state) THEN
            RAISE EXCEPTION 'orchestrator: workflow % must start in its initial state, not %',
                TG_ARGV[0], pg_catalog.quote_nullable(new_state) || why
                USING ERRCODE = 'check_violation', CONSTRAINT = 'orchestrator_transition';
        END IF;
        RETURN NEW;
    END IF;
    old_state := pg_catalog.to_jsonb(OLD) ->> TG_ARGV[1];
    IF NOT EXISTS (SELECT FROM orchestrator.transitions t
                   WHERE t.workflow = TG_ARGV[0] AND t.from_state = old_state
                     AND t.to_state = new_state) THEN
        RAISE EXCEPTION 'orchestrator: workflow % does not allow % -> %',
            TG_ARGV[0], pg_catalog.quote_nullable(old_state),
            pg_catalog.quote_nullable(new_state) || why
            USING ERRCODE = 'check_violation', CONSTRAINT = 'orchestrator_transition';
    END IF;
    RETURN NEW;
END
$$;

REVOKE EXECUTE ON FUNCTION orchestrator.capture_v2(), orchestrator.guard_v2() FROM PUBLIC;
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


ROLES = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orchestrator_admin') THEN
        CREATE ROLE orchestrator_admin NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it at the same moment
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orchestrator_reader') THEN
        CREATE ROLE orchestrator_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA orchestrator TO orchestrator_admin, orchestrator_reader;
GRANT SELECT ON orchestrator.events, orchestrator.event_errors, orchestrator.workflows,
    orchestrator.transitions, orchestrator.deadlines TO orchestrator_admin, orchestrator_reader;
-- A redrive: dead events back to the queue with fresh attempts, and a line in their history.
-- SELECT ... FOR UPDATE of the chosen events needs an UPDATE privilege too.
GRANT UPDATE (status, attempts, run_after, claimed_by, lease_until, outcome, started_at,
              finished_at) ON orchestrator.events TO orchestrator_admin;
GRANT INSERT ON orchestrator.event_errors TO orchestrator_admin;

-- Dispatchers: claim, finish, retry, release, requeue and renew leases change these columns
-- only; their write-backs' events are recorded by capture_v2, as the owner.
REVOKE INSERT, UPDATE ON orchestrator.events FROM orchestrator_dispatcher;
GRANT UPDATE (status, attempts, suspect, run_after, lease_until, claimed_by, handler, outcome,
              next_state, last_error, started_at, finished_at)
    ON orchestrator.events TO orchestrator_dispatcher;
REVOKE SELECT ON orchestrator.event_errors, orchestrator.transitions, orchestrator.deadlines
    FROM orchestrator_dispatcher;
"""

UNDO_ROLES = r"""
-- Back to revision 0003's grants (a table-wide REVOKE takes the column grants with it).
REVOKE UPDATE ON orchestrator.events FROM orchestrator_dispatcher;
GRANT SELECT, INSERT, UPDATE ON orchestrator.events TO orchestrator_dispatcher;
GRANT SELECT ON orchestrator.event_errors, orchestrator.transitions, orchestrator.deadlines
    TO orchestrator_dispatcher;

REVOKE ALL ON ALL TABLES IN SCHEMA orchestrator FROM orchestrator_admin, orchestrator_reader;
REVOKE ALL ON SCHEMA orchestrator FROM orchestrator_admin, orchestrator_reader;

DO $$
BEGIN
    DROP ROLE orchestrator_admin;
EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
    NULL;  -- still granted in another database of this server: it stays
END
$$;

DO $$
BEGIN
    DROP ROLE orchestrator_reader;
EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
    NULL;
END
$$;
"""

V1_TO_V2 = [("orchestrator.capture_v1()", "orchestrator.capture_v2"),
            ("orchestrator.guard_v1()", "orchestrator.guard_v2")]
V2_TO_V1 = [("orchestrator.capture_v2()", "orchestrator.capture_v1"),
            ("orchestrator.guard_v2()", "orchestrator.guard_v1")]


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(repoint(V1_TO_V2))
    op.execute(ROLES)


def downgrade() -> None:
    op.execute(repoint(V2_TO_V1))
    op.execute("DROP FUNCTION orchestrator.capture_v2(), orchestrator.guard_v2();")
    op.execute(UNDO_ROLES)
