-- Read models of the pair relation (projection `chats`): connect requests, connections, chats,
-- their members (one row per member: list order, read positions, unread counts) and messages.
-- And the alerts read model (projection `alerts`).

CREATE TABLE connect_requests
(
    id         text PRIMARY KEY,
    chat_id    text NOT NULL,
    from_id    text NOT NULL,
    to_id      text NOT NULL,
    -- pending | accepted | rejected | canceled
    status     text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX connect_requests_to ON connect_requests (to_id, status, created_at);
CREATE INDEX connect_requests_from ON connect_requests (from_id, status, created_at);
CREATE INDEX connect_requests_chat ON connect_requests (chat_id, created_at);

-- Both directions of every accepted, not yet ended connection.
CREATE TABLE connections
(
    user_id  text NOT NULL,
    other_id text NOT NULL,
    chat_id  text NOT NULL,
    since    timestamptz NOT NULL,
    PRIMARY KEY (user_id, other_id)
);

-- One chat per pair; its id is the Pair aggregate id.
CREATE TABLE chats
(
    id              text PRIMARY KEY,
    -- connect | message
    type            text NOT NULL,
    -- accepts messages now (connected, or message request accepted)
    is_open         boolean NOT NULL DEFAULT FALSE,
    -- the latest message request, if any
    request_id      text,
    request_text    text,
    request_status  text,
    request_sender  text,
    request_at      timestamptz,
    last_message_id text,
    total_messages  bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE chat_members
(
    chat_id          text NOT NULL,
    user_id          text NOT NULL,
    other_id         text NOT NULL,
    last_activity_at timestamptz NOT NULL,
    -- the member has received / read every message of the other member up to this seq
    delivered_seq    bigint NOT NULL DEFAULT 0,
    read_seq         bigint NOT NULL DEFAULT 0,
    -- messages of the other member after read_seq
    unread_count     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user ON chat_members (user_id, last_activity_at, chat_id);
CREATE INDEX chat_members_pair ON chat_members (user_id, other_id);

CREATE TABLE messages
(
    id              text PRIMARY KEY,
    chat_id         text NOT NULL,
    -- order within the chat: 1, 2, 3, ...
    seq             bigint NOT NULL,
    sender_id       text NOT NULL,
    client_id       text,
    -- text | schedule | call
    type            text NOT NULL,
    text            text NOT NULL,
    is_request      boolean NOT NULL DEFAULT FALSE,
    -- sent | delivered | read, and when it became so
    delivery_status text NOT NULL,
    delivery_at     timestamptz NOT NULL,
    -- the event position that last changed the delivery status (the feed's cue)
    receipt_position bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    UNIQUE (chat_id, seq)
);
CREATE INDEX messages_client ON messages (chat_id, sender_id, client_id);
CREATE INDEX messages_receipt ON messages (chat_id, receipt_position);

CREATE TABLE alerts
(
    id         text PRIMARY KEY,
    user_id    text NOT NULL,
    -- schedule | connect-request | message-request | review | transaction
    type       text NOT NULL,
    -- unread | read
    status     text NOT NULL,
    -- what the alert is about (a request id, ...): later changes of it update the alert
    subject_id text NOT NULL,
    -- the type's fields of basic_alert (connectRequest, chat, message, ...)
    body       json NOT NULL,
    -- event positions that created it and last changed it (the feed's cue for pushes)
    created_position bigint NOT NULL,
    changed_position bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX alerts_user ON alerts (user_id, created_at, id);
CREATE INDEX alerts_subject ON alerts (subject_id);
CREATE INDEX alerts_changed ON alerts (changed_position);
CREATE INDEX alerts_unread ON alerts (user_id) WHERE status = 'unread';

-- Chat texts are personal: analysts read the read models, not message payloads in the log.
CREATE OR REPLACE VIEW events_for_analysts AS
SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       CASE WHEN aggregate_type IN ('User', 'EmailClaim', 'Otp', 'Pair') THEN NULL ELSE payload END AS payload,
       recorded_at
  FROM events;
GRANT SELECT ON connect_requests, connections, chats, chat_members, alerts TO talkamie_analyst;
