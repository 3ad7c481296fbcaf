-- A shop whose order lifecycle is kept in columns, not in one status column: a timestamp and
-- four booleans on the order, and child tables for its items, payments and driver assignment.
-- "stage" derives one state from those columns, for the workflow that prefers one.
CREATE SCHEMA shop;

CREATE TABLE shop.orders (
    id              bigserial PRIMARY KEY,
    customer        text NOT NULL,
    placed_at       timestamptz,         -- set when the customer places the order
    total           numeric(10, 2),
    validated       boolean,             -- NULL: not checked yet
    paid            boolean NOT NULL DEFAULT false,
    approved        boolean NOT NULL DEFAULT false,
    driver_assigned boolean NOT NULL DEFAULT false,
    note            text,
    stage           text GENERATED ALWAYS AS (
        CASE WHEN driver_assigned THEN 'assigned'
             WHEN approved THEN 'approved'
             WHEN paid THEN 'paid'
             WHEN validated THEN 'validated'
             WHEN NOT validated THEN 'rejected'
             ELSE 'new' END) STORED
);

CREATE TABLE shop.items (
    id       bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES shop.orders (id),
    sku      text NOT NULL,
    qty      integer NOT NULL,
    price    numeric(10, 2) NOT NULL
);

CREATE TABLE shop.payments (
    id       bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES shop.orders (id),
    amount   numeric(10, 2) NOT NULL,
    accepted boolean
);

CREATE TABLE shop.drivers (
    name text PRIMARY KEY
);
INSERT INTO shop.drivers (name) VALUES ('dee'), ('max');

CREATE TABLE shop.assignments (
    id       bigserial PRIMARY KEY,
    order_id bigint NOT NULL UNIQUE REFERENCES shop.orders (id),
    driver   text NOT NULL REFERENCES shop.drivers (name)
);

-- What the handlers did to each order, in the order they did it.
CREATE TABLE shop.steps (
    seq      bigserial PRIMARY KEY,
    order_id bigint NOT NULL,
    step     text NOT NULL,
    event_id bigint NOT NULL
);
