-- Reviews (projection `reviews`), support tickets (projection `support`), push devices
-- (projection `users`) and the push dispatcher's cursor.

-- basic_review / full_review: the live reviews (a deleted review leaves the table).
CREATE TABLE reviews
(
    id         text PRIMARY KEY,
    rater_id   text NOT NULL,
    ratee_id   text NOT NULL,
    -- 1..5
    rate       bigint NOT NULL,
    text       text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (rater_id, ratee_id)
);
CREATE INDEX reviews_ratee ON reviews (ratee_id, created_at, id);

-- A user's `rating` (rate_sum / total_reviews) and `totalReviews`.
CREATE TABLE user_ratings
(
    user_id       text PRIMARY KEY,
    total_reviews bigint NOT NULL,
    rate_sum      bigint NOT NULL
);

-- full_support_ticket: one row per ticket.
CREATE TABLE support_tickets
(
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    -- open | closed
    status           text NOT NULL,
    opened_at        timestamptz NOT NULL,
    closed_at        timestamptz,
    closed_by        text,
    last_message_id  text,
    last_activity_at timestamptz NOT NULL
);
CREATE INDEX support_tickets_user ON support_tickets (user_id, status);
CREATE INDEX support_tickets_activity ON support_tickets (last_activity_at, id);

-- basic_support_message: one row per message.
CREATE TABLE support_messages
(
    id               text PRIMARY KEY,
    ticket_id        text NOT NULL,
    seq              bigint NOT NULL,
    sender_id        text NOT NULL,
    -- user | staff
    side             text NOT NULL,
    text             text NOT NULL,
    client_id        text,
    created_at       timestamptz NOT NULL,
    -- sent | delivered | read
    delivery_status  text NOT NULL,
    delivery_at      timestamptz NOT NULL,
    -- the event that last changed delivery_status (the feed pushes exactly those)
    receipt_position bigint,
    UNIQUE (ticket_id, seq)
);
CREATE INDEX support_messages_client ON support_messages (ticket_id, sender_id, client_id);
CREATE INDEX support_messages_receipt ON support_messages (ticket_id, receipt_position);

-- The devices that receive a user's push notifications (token in clear: the read model is
-- wiped for a deleted user, the log only holds it sealed).
CREATE TABLE push_devices
(
    token_hash    text PRIMARY KEY,
    user_id       text NOT NULL,
    token         text NOT NULL,
    -- ios | android | web
    platform      text NOT NULL,
    registered_at timestamptz NOT NULL
);
CREATE INDEX push_devices_user ON push_devices (user_id);

-- How far the push dispatcher has read the feed (one row). Starts at the feed's end, so
-- upgrading never sends old news.
CREATE TABLE push_cursor
(
    id       integer PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO push_cursor (id, position) SELECT 1, COALESCE(MAX(position), 0) FROM feed;

-- Interest names are unique whatever their case (admins add interests).
CREATE UNIQUE INDEX interests_name ON interests (LOWER(name));

-- Support message texts are personal (like chat messages): not granted, and the analysts' view
-- of the log hides the payloads of the new personal streams too.
GRANT SELECT ON reviews, user_ratings, support_tickets TO talkamie_analyst;
CREATE OR REPLACE VIEW events_for_analysts AS
SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       CASE WHEN aggregate_type IN ('User', 'EmailClaim', 'Otp', 'Pair', 'SupportDesk', 'PushDevices')
            THEN NULL ELSE payload END AS payload,
       recorded_at
  FROM events;
