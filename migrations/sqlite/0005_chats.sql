-- Read models of the pair relation (projection `chats`): connect requests, connections, chats,
-- their members (one row per member: list order, read positions, unread counts) and messages.
-- And the alerts read model (projection `alerts`).

CREATE TABLE connect_requests
(
    id         TEXT PRIMARY KEY,
    chat_id    TEXT NOT NULL,
    from_id    TEXT NOT NULL,
    to_id      TEXT NOT NULL,
    -- pending | accepted | rejected | canceled
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX connect_requests_to ON connect_requests (to_id, status, created_at);
CREATE INDEX connect_requests_from ON connect_requests (from_id, status, created_at);
CREATE INDEX connect_requests_chat ON connect_requests (chat_id, created_at);

-- Both directions of every accepted, not yet ended connection.
CREATE TABLE connections
(
    user_id  TEXT NOT NULL,
    other_id TEXT NOT NULL,
    chat_id  TEXT NOT NULL,
    since    TEXT NOT NULL,
    PRIMARY KEY (user_id, other_id)
);

-- One chat per pair; its id is the Pair aggregate id.
CREATE TABLE chats
(
    id              TEXT PRIMARY KEY,
    -- connect | message
    type            TEXT NOT NULL,
    -- accepts messages now (connected, or message request accepted)
    is_open         BOOLEAN NOT NULL DEFAULT 0,
    -- the latest message request, if any
    request_id      text,
    request_text    text,
    request_status  text,
    request_sender  text,
    request_at      TEXT,
    last_message_id text,
    total_messages  INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE chat_members
(
    chat_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    other_id         TEXT NOT NULL,
    last_activity_at TEXT NOT NULL,
    -- the member has received / read every message of the other member up to this seq
    delivered_seq    INTEGER NOT NULL DEFAULT 0,
    read_seq         INTEGER NOT NULL DEFAULT 0,
    -- messages of the other member after read_seq
    unread_count     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user ON chat_members (user_id, last_activity_at, chat_id);
CREATE INDEX chat_members_pair ON chat_members (user_id, other_id);

CREATE TABLE messages
(
    id              TEXT PRIMARY KEY,
    chat_id         TEXT NOT NULL,
    -- order within the chat: 1, 2, 3, ...
    seq             INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    client_id       text,
    -- text | schedule | call
    type            TEXT NOT NULL,
    text            TEXT NOT NULL,
    is_request      BOOLEAN NOT NULL DEFAULT 0,
    -- sent | delivered | read, and when it became so
    delivery_status TEXT NOT NULL,
    delivery_at     TEXT NOT NULL,
    -- the event position that last changed the delivery status (the feed's cue)
    receipt_position INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    UNIQUE (chat_id, seq)
);
CREATE INDEX messages_client ON messages (chat_id, sender_id, client_id);
CREATE INDEX messages_receipt ON messages (chat_id, receipt_position);

CREATE TABLE alerts
(
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    -- schedule | connect-request | message-request | review | transaction
    type       TEXT NOT NULL,
    -- unread | read
    status     TEXT NOT NULL,
    -- what the alert is about (a request id, ...): later changes of it update the alert
    subject_id TEXT NOT NULL,
    -- the type's fields of basic_alert (connectRequest, chat, message, ...)
    body       TEXT NOT NULL,
    -- event positions that created it and last changed it (the feed's cue for pushes)
    created_position INTEGER NOT NULL,
    changed_position INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX alerts_user ON alerts (user_id, created_at, id);
CREATE INDEX alerts_subject ON alerts (subject_id);
CREATE INDEX alerts_changed ON alerts (changed_position);
CREATE INDEX alerts_unread ON alerts (user_id) WHERE status = 'unread';

