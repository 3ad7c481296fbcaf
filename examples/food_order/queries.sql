-- The food-order demo's queries, loaded once by orchestrator.demo. Each starts with "-- name: x".

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
-- Orders with more than one payment. payments has no UNIQUE constraint (see schema.sql): a
-- charge committed twice would be counted here.
SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id HAVING count(*) > 1) d;

-- name: setup_lock
-- Concurrent setups (several commands started at once) take turns creating the tables.
SELECT pg_advisory_xact_lock(hashtext('orchestrator.demo.setup'));
