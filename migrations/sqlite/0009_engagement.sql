-- Reviews (projection `reviews`), support tickets (projection `support`), push devices
-- (projection `users`) and the push dispatcher's cursor.

-- basic_review / full_review: the live reviews (a deleted review leaves the table).
CREATE TABLE reviews
(
    id         TEXT PRIMARY KEY,
    rater_id   TEXT NOT NULL,
    ratee_id   TEXT NOT NULL,
    -- 1..5
    rate       INTEGER NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (rater_id, ratee_id)
);
CREATE INDEX reviews_ratee ON reviews (ratee_id, created_at, id);

-- A user's `rating` (rate_sum / total_reviews) and `totalReviews`.
CREATE TABLE user_ratings
(
    user_id       TEXT PRIMARY KEY,
    total_reviews INTEGER NOT NULL,
    rate_sum      INTEGER NOT NULL
);

-- full_support_ticket: one row per ticket.
CREATE TABLE support_tickets
(
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    -- open | closed
    status           TEXT NOT NULL,
    opened_at        TEXT NOT NULL,
    closed_at        TEXT,
    closed_by        TEXT,
    last_message_id  TEXT,
    last_activity_at TEXT NOT NULL
);
CREATE INDEX support_tickets_user ON support_tickets (user_id, status);
CREATE INDEX support_tickets_activity ON support_tickets (last_activity_at, id);

-- basic_support_message: one row per message.
CREATE TABLE support_messages
(
    id               TEXT PRIMARY KEY,
    ticket_id        TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    sender_id        TEXT NOT NULL,
    -- user | staff
    side             TEXT NOT NULL,
    text             TEXT NOT NULL,
    client_id        TEXT,
    created_at       TEXT NOT NULL,
    -- sent | delivered | read
    delivery_status  TEXT NOT NULL,
    delivery_at      TEXT NOT NULL,
    -- the event that last changed delivery_status (the feed pushes exactly those)
    receipt_position INTEGER,
    UNIQUE (ticket_id, seq)
);
CREATE INDEX support_messages_client ON support_messages (ticket_id, sender_id, client_id);
CREATE INDEX support_messages_receipt ON support_messages (ticket_id, receipt_position);

-- The devices that receive a user's push notifications (token in clear: the read model is
-- wiped for a deleted user, the log only holds it sealed).
CREATE TABLE push_devices
(
    token_hash    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    token         TEXT NOT NULL,
    -- ios | android | web
    platform      TEXT NOT NULL,
    registered_at TEXT NOT NULL
);
CREATE INDEX push_devices_user ON push_devices (user_id);

-- How far the push dispatcher has read the feed (one row). Starts at the feed's end, so
-- upgrading never sends old news.
CREATE TABLE push_cursor
(
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO push_cursor (id, position) SELECT 1, COALESCE(MAX(position), 0) FROM feed;

-- Interest names are unique whatever their case (admins add interests).
CREATE UNIQUE INDEX interests_name ON interests (LOWER(name));

