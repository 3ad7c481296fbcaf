"""Retention without bloat: finished events leave the queue for a history partitioned by time.

- ``orchestrator.events`` stays the queue the engine works on. ``archive_v1`` moves its finished
  (``done``) events, in batches, into ``orchestrator.events_history``, a table of the same
  columns partitioned by ``finished_at``, created as needed: a partition spans the width the
  caller asks for (an hour or a day, aligned in UTC), cut short where it would overlap one
  made earlier with another width. The queue then holds only open, dead and recently finished
  events: its size levels off whatever the volume, and vacuum keeps up with it as with any
  queue.
- ``prune_v1`` removes finished events older than a time by dropping the partitions that end
  before it (no mass DELETE, nothing left to vacuum); an event stays at most a partition's
  width past the window. Each prune that removed something is a row of ``orchestrator.prunes``
  (finished events before its ``finished_before`` are gone): operator reads say from it when a
  row's older history is gone.
- ``prune_dead_v1`` removes dead events an operator gives up on (they never leave otherwise).
- ``orchestrator.event_log`` is the queue and the history as one view, for operator reads.
- ``event_errors`` no longer references ``events`` (an event's errors outlive its move to the
  history); the prune functions remove the errors of the events they remove.

The functions are SECURITY DEFINER (the owner creates and drops partitions), with
``search_path`` and ``TimeZone`` pinned. Only one session archives or prunes at a time: they
take a transaction-level advisory lock, and a caller that must not wait (a dispatcher applying
the retention) is told when another session holds it. EXECUTE: ``archive_v1`` and ``prune_v1``
to ``orchestrator_dispatcher`` and ``orchestrator_admin``, ``prune_dead_v1`` to
``orchestrator_admin``; SELECT on the new tables and the view to the three roles (each could
read the events before).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE orchestrator.events_history (LIKE orchestrator.events)
    PARTITION BY RANGE (finished_at);
ALTER TABLE orchestrator.events_history ALTER COLUMN finished_at SET NOT NULL;
-- A row's timeline, and lookups by id; each partition gets its own copy.
CREATE INDEX events_history_row ON orchestrator.events_history (workflow, row_key, id);
CREATE INDEX events_history_id ON orchestrator.events_history (id);

-- One row per prune that removed events: finished events before `finished_before` are gone.
CREATE TABLE orchestrator.prunes (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    finished_before timestamptz NOT NULL,
    events          bigint      NOT NULL,
    partitions      integer     NOT NULL
);

ALTER TABLE orchestrator.event_errors DROP CONSTRAINT event_errors_event_id_fkey;

CREATE VIEW orchestrator.event_log AS
    SELECT * FROM orchestrator.events
    UNION ALL
    SELECT * FROM orchestrator.events_history;

-- The history's partitions and their bounds (read back from the catalog).
CREATE FUNCTION orchestrator.history_partitions_v1()
RETURNS TABLE (name text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
    SELECT c.relname::text, b[1]::timestamptz, b[2]::timestamptz
    FROM pg_catalog.pg_inherits i
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_catalog.regexp_match(
        pg_catalog.pg_get_expr(c.relpartbound, c.oid),
        'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b
    WHERE i.inhparent = 'orchestrator.events_history'::pg_catalog.regclass
$$;

-- Makes sure a partition of the history holds time t: if none does, one of the given width
-- (aligned in UTC), cut short where it would overlap a partition of another width, named
-- after its start (events_history_YYYYMMDDHH24MI).
CREATE FUNCTION orchestrator.history_partition_v1(t timestamptz, width interval) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'
AS $$
DECLARE
    lo timestamptz := pg_catalog.date_bin(width, t, '2000-01-01 00:00:00+00');
    hi timestamptz;
BEGIN
    IF EXISTS (SELECT FROM orchestrator.history_partitions_v1() p
               WHERE p.lower <= t AND t < p.upper) THEN
        RETURN;
    END IF;
    hi := lo + width;
    SELECT greatest(lo, pg_catalog.max(p.upper)) INTO lo
    FROM orchestrator.history_partitions_v1() p WHERE p.upper <= t;
    SELECT least(hi, pg_catalog.min(p.lower)) INTO hi
    FROM orchestrator.history_partitions_v1() p WHERE p.lower > t;
    EXECUTE pg_catalog.format(
        'CREATE TABLE orchestrator.%I PARTITION OF orchestrator.events_history '
        'FOR VALUES FROM (%L) TO (%L)',
        'events_history_' || pg_catalog.to_char(lo, 'YYYYMMDDHH24MI'), lo, hi);
END
$$;

-- Moves up to max_rows done events finished before finished_before (all of them when max_rows
-- is NULL) from the queue to the history, oldest id first, creating partitions of the given
-- width where none holds them yet. Returns how many moved, or NULL when another session
-- archives or prunes and wait is false.
CREATE FUNCTION orchestrator.archive_v1(finished_before timestamptz, max_rows integer,
                                        wait boolean, width interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'
AS $$
DECLARE
    ids bigint[];
    hours timestamptz[];
    h timestamptz;
    moved bigint;
BEGIN
    IF wait THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(1869767528, 5);
    ELSIF NOT pg_catalog.pg_try_advisory_xact_lock(1869767528, 5) THEN
        RETURN NULL;
    END IF;
    SELECT pg_catalog.array_agg(d.id),
           pg_catalog.array_agg(DISTINCT pg_catalog.date_trunc('hour', d.finished_at))
    INTO ids, hours
    FROM (SELECT e.id, e.finished_at FROM orchestrator.events e
          WHERE e.status = 'done' AND e.finished_at < finished_before
          ORDER BY e.id LIMIT max_rows) d;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    -- Every bound is a whole hour, so a partition holding an hour's start holds all of it.
    FOREACH h IN ARRAY hours LOOP
        PERFORM orchestrator.history_partition_v1(h, width);
    END LOOP;
    WITH gone AS (
        DELETE FROM orchestrator.events e
        WHERE e.id = ANY (ids) AND e.status = 'done'
        RETURNING e.*)
    INSERT INTO orchestrator.events_history SELECT * FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- Removes the finished events of the partitions that end before finished_before (rounded down
-- to the hour): moves the queue's remaining ones to the history (in hour partitions), then
-- drops those partitions (and deletes their events' errors). With dry_run, only counts. One
-- row: events removed, partitions dropped, and the time before which every finished event is
-- gone (NULL when nothing is); no row when another session archives or prunes and wait is
-- false.
CREATE FUNCTION orchestrator.prune_v1(finished_before timestamptz, dry_run boolean,
                                      wait boolean)
RETURNS TABLE (events bigint, partitions integer, pruned_before timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'
AS $$
DECLARE
    boundary timestamptz := pg_catalog.date_trunc('hour', finished_before);
    part record;
    n bigint;
BEGIN
    IF wait THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(1869767528, 5);
    ELSIF NOT pg_catalog.pg_try_advisory_xact_lock(1869767528, 5) THEN
        RETURN;
    END IF;
    events := 0;
    partitions := 0;
    IF dry_run THEN
        -- The queue's leftovers that the archive would put in a partition dropped below.
        SELECT pg_catalog.count(*),
               pg_catalog.date_trunc('hour', pg_catalog.max(e.finished_at)) + interval '1 hour'
        INTO events, pruned_before
        FROM orchestrator.events e
        WHERE e.status = 'done' AND e.finished_at < boundary
          AND NOT EXISTS (SELECT FROM orchestrator.history_partitions_v1() p
                          WHERE p.lower <= e.finished_at AND e.finished_at < p.upper
                            AND p.upper > boundary);
    ELSE
        PERFORM orchestrator.archive_v1(boundary, NULL, true, interval '1 hour');
    END IF;
    FOR part IN
        SELECT p.name, p.upper FROM orchestrator.history_partitions_v1() p
        WHERE p.upper <= boundary ORDER BY p.lower
    LOOP
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM orchestrator.%I', part.name)
            INTO n;
        events := events + n;
        partitions := partitions + 1;
        pruned_before := greatest(pruned_before, part.upper);
        IF NOT dry_run THEN
            EXECUTE pg_catalog.format(
                'DELETE FROM orchestrator.event_errors r USING orchestrator.%I e '
                'WHERE r.event_id = e.id', part.name);
            EXECUTE pg_catalog.format('DROP TABLE orchestrator.%I', part.name);
        END IF;
    END LOOP;
    IF NOT dry_run AND partitions > 0 THEN
        INSERT INTO orchestrator.prunes (finished_before, events, partitions)
        VALUES (pruned_before, events, partitions);
    END IF;
    RETURN NEXT;
END
$$;

-- Removes dead events (and their errors) that died before died_before, of one workflow and
-- handler (full or last dotted name) when given. Returns how many; dry_run only counts.
CREATE FUNCTION orchestrator.prune_dead_v1(died_before timestamptz, of_workflow text,
                                           of_handler text, dry_run boolean) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT pg_catalog.array_agg(e.id) INTO ids
    FROM orchestrator.events e
    WHERE e.status = 'dead' AND e.finished_at < died_before
      AND (of_workflow IS NULL OR e.workflow = of_workflow)
      AND (of_handler IS NULL OR e.handler = of_handler
           OR e.handler LIKE '%.' || of_handler);
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT dry_run THEN
        DELETE FROM orchestrator.event_errors r WHERE r.event_id = ANY (ids);
        DELETE FROM orchestrator.events e WHERE e.id = ANY (ids) AND e.status = 'dead';
    END IF;
    RETURN pg_catalog.cardinality(ids);
END
$$;

REVOKE EXECUTE ON FUNCTION orchestrator.history_partition_v1(timestamptz, interval),
    orchestrator.history_partitions_v1(),
    orchestrator.archive_v1(timestamptz, integer, boolean, interval),
    orchestrator.prune_v1(timestamptz, boolean, boolean),
    orchestrator.prune_dead_v1(timestamptz, text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orchestrator.archive_v1(timestamptz, integer, boolean, interval),
    orchestrator.prune_v1(timestamptz, boolean, boolean)
    TO orchestrator_dispatcher, orchestrator_admin;
GRANT EXECUTE ON FUNCTION orchestrator.prune_dead_v1(timestamptz, text, text, boolean)
    TO orchestrator_admin;
GRANT SELECT ON orchestrator.events_history, orchestrator.prunes, orchestrator.event_log
    TO orchestrator_admin, orchestrator_reader, orchestrator_dispatcher;
"""

# Back to one table: the history returns to the queue (ids kept), errors whose event is gone
# are deleted, and the reference is restored.
DOWNGRADE = r"""
DROP VIEW orchestrator.event_log;
DROP FUNCTION orchestrator.history_partition_v1(timestamptz, interval),
    orchestrator.history_partitions_v1(),
    orchestrator.archive_v1(timestamptz, integer, boolean, interval),
    orchestrator.prune_v1(timestamptz, boolean, boolean),
    orchestrator.prune_dead_v1(timestamptz, text, text, boolean);
INSERT INTO orchestrator.events OVERRIDING SYSTEM VALUE
    SELECT * FROM orchestrator.events_history;
DROP TABLE orchestrator.events_history, orchestrator.prunes;
DELETE FROM orchestrator.event_errors r
WHERE NOT EXISTS (SELECT FROM orchestrator.events e WHERE e.id = r.event_id);
ALTER TABLE orchestrator.event_errors ADD CONSTRAINT event_errors_event_id_fkey
    FOREIGN KEY (event_id) REFERENCES orchestrator.events (id) ON DELETE CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
