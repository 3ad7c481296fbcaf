-- The helpdesk application's own schema, as its migrations would create it.
CREATE SCHEMA app;

CREATE TABLE app.agents (
    name     text PRIMARY KEY,
    topic    text NOT NULL,
    on_leave boolean NOT NULL DEFAULT false
);
INSERT INTO app.agents (name, topic, on_leave) VALUES
    ('hal', 'hardware', false),
    ('bea', 'billing', false),
    ('lee', 'legal', true);

CREATE TABLE app.tickets (
    id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subject  text NOT NULL,
    topic    text NOT NULL,
    priority text,
    assignee text REFERENCES app.agents (name),
    status   text NOT NULL DEFAULT 'new'
);

CREATE TABLE app.notifications (
    ticket_id uuid NOT NULL REFERENCES app.tickets (id),
    agent     text NOT NULL,
    message   text NOT NULL
);
