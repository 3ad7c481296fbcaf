"""The orchestrator schema: event log, workflow definitions, capture and guard triggers.

Frozen: later changes come as new revisions with new versioned function names.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The schema exists already when Alembic keeps its version table in it (migrations/env.py).
CREATE SCHEMA IF NOT EXISTS orchestrator;

-- The durable event log. A trigger appends a row in the transaction that changed the watched
-- column; dispatchers claim rows from here. NOTIFY only wakes them: this table is the truth.
CREATE TABLE orchestrator.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow     text        NOT NULL,
    row_key      text        NOT NULL,
    column_name  text        NOT NULL,
    op           text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'TIMER')),
    old_value    text,
    new_value    text,
    old_row      jsonb,
    new_row      jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'running', 'done', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    -- Its dispatcher died while running it: run it alone next time, so that a handler which
    -- kills its process burns only its own attempts, not those of events that shared it.
    suspect      boolean     NOT NULL DEFAULT false,
    run_after    timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    claimed_by   text,
    handler      text,
    outcome      text,
    next_state   text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at   timestamptz,
    finished_at  timestamptz
);
-- Claims scan pending events oldest first; finished events drop out of this small index.
CREATE INDEX events_pending ON orchestrator.events (id)
    WHERE status = 'pending' AND op <> 'TIMER';
-- Deadlines waiting to come due, soonest first.
CREATE INDEX events_timers ON orchestrator.events (run_after)
    WHERE status = 'pending' AND op = 'TIMER';
-- Per-row order checks and a row's history.
CREATE INDEX events_row ON orchestrator.events (workflow, row_key, id);
-- Finding expired leases.
CREATE INDEX events_leased ON orchestrator.events (lease_until) WHERE status = 'running';
CREATE INDEX events_dead ON orchestrator.events (id) WHERE status = 'dead';
CREATE INDEX events_suspect ON orchestrator.events (id) WHERE status = 'pending' AND suspect;

-- One row per failed attempt (and per operator redrive), for an event's history.
CREATE TABLE orchestrator.event_errors (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id  bigint      NOT NULL REFERENCES orchestrator.events (id) ON DELETE CASCADE,
    attempt   integer     NOT NULL,
    error     text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_errors_event ON orchestrator.event_errors (event_id, id);

-- What `orchestrator migrate` installed for each workflow; the guard trigger reads it.
CREATE TABLE orchestrator.workflows (
    name          text PRIMARY KEY,
    table_name    text  NOT NULL,
    key_column    text  NOT NULL,
    state_column  text  NOT NULL,
    initial_state text  NOT NULL,
    definition    jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A state's deadline: a row still in `state` after `after_s` seconds moves to `to_state`.
CREATE TABLE orchestrator.deadlines (
    workflow text             NOT NULL REFERENCES orchestrator.workflows (name) ON DELETE CASCADE,
    state    text             NOT NULL,
    after_s  double precision NOT NULL CHECK (after_s > 0),
    to_state text             NOT NULL,
    PRIMARY KEY (workflow, state)
);

CREATE TABLE orchestrator.transitions (
    workflow   text NOT NULL REFERENCES orchestrator.workflows (name) ON DELETE CASCADE,
    from_state text NOT NULL,
    to_state   text NOT NULL,
    trigger    text NOT NULL,
    PRIMARY KEY (workflow, from_state, to_state)
);

-- Records an event for a row change. Arguments: workflow, key column, watched column, and
-- for the state column of a workflow with deadlines, 'deadlines': then a row leaving a state
-- cancels its pending deadline, and a row entering a state with a deadline gets a TIMER event
-- due when the deadline passes.
-- A transaction that sets orchestrator.quiet = 'on' (a dispatcher that hands the new event
-- straight to a worker) sends no NOTIFY. Identical notifications in one transaction are
-- collapsed by PostgreSQL, so a statement touching many rows wakes listeners once.
CREATE FUNCTION orchestrator.capture_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_data jsonb := to_jsonb(NEW);
    old_data jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_data := to_jsonb(OLD);
    END IF;
    INSERT INTO orchestrator.events
        (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row)
    VALUES
        (TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], TG_OP,
         old_data ->> TG_ARGV[2], new_data ->> TG_ARGV[2], old_data, new_data);
    IF TG_NARGS > 3 AND TG_ARGV[3] = 'deadlines' THEN
        UPDATE orchestrator.events e
        SET status = 'done', outcome = 'cancelled', finished_at = now()
        WHERE e.workflow = TG_ARGV[0] AND e.row_key = new_data ->> TG_ARGV[1]
          AND e.op = 'TIMER' AND e.status = 'pending';
        INSERT INTO orchestrator.events
            (workflow, row_key, column_name, op, old_value, new_value, old_row, new_row,
             run_after)
        SELECT TG_ARGV[0], new_data ->> TG_ARGV[1], TG_ARGV[2], 'TIMER',
               d.state, d.to_state, new_data, new_data, now() + make_interval(secs => d.after_s)
        FROM orchestrator.deadlines d
        WHERE d.workflow = TG_ARGV[0] AND d.state = new_data ->> TG_ARGV[2];
    END IF;
    IF current_setting('orchestrator.quiet', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('orchestrator', '');
    END IF;
    RETURN NULL;
END
$$;

-- Refuses a state change the workflow does not allow, whoever writes it. Arguments: workflow,
-- state column. An administrator may bypass it on purpose: SET LOCAL orchestrator.override = 'on'.
CREATE FUNCTION orchestrator.guard_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_state text := to_jsonb(NEW) ->> TG_ARGV[1];
    old_state text;
BEGIN
    IF current_setting('orchestrator.override', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM orchestrator.workflows
                       WHERE name = TG_ARGV[0] AND initial_state = new_state) THEN
            RAISE EXCEPTION 'orchestrator: workflow % must start in its initial state, not %',
                TG_ARGV[0], quote_nullable(new_state)
                USING ERRCODE = 'check_violation', CONSTRAINT = 'orchestrator_transition';
        END IF;
        RETURN NEW;
    END IF;
    old_state := to_jsonb(OLD) ->> TG_ARGV[1];
    IF NOT EXISTS (SELECT 1 FROM orchestrator.transitions
                   WHERE workflow = TG_ARGV[0] AND from_state = old_state
                     AND to_state = new_state) THEN
        RAISE EXCEPTION 'orchestrator: workflow % does not allow % -> %',
            TG_ARGV[0], quote_nullable(old_state), quote_nullable(new_state)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'orchestrator_transition';
    END IF;
    RETURN NEW;
END
$$;
"""

# The schema itself stays while Alembic's version table is in it; `orchestrator migrate
# --downgrade base` drops it once empty. Dropping the functions drops the triggers installed on
# workflow tables with them; the tables and their rows stay.
DOWNGRADE = """
DROP FUNCTION orchestrator.capture_v1() CASCADE;
DROP FUNCTION orchestrator.guard_v1() CASCADE;
DROP TABLE orchestrator.transitions, orchestrator.deadlines, orchestrator.workflows,
    orchestrator.event_errors, orchestrator.events;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
