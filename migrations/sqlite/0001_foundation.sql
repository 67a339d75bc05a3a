-- The event log and snapshot store in the shapes sqlite-es uses, plus:
--   position     the global position; SQLite has one writer, so position order is commit order
--   transaction_id always 0 (kept so both stores have the same columns)
--   recorded_at  when the event was written
-- Optimistic concurrency: a second writer of the same (aggregate, sequence) breaks the UNIQUE
-- constraint and the command is retried.
CREATE TABLE events
(
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 0),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    transaction_id INTEGER NOT NULL DEFAULT 0,
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   TEXT                                  NOT NULL,
    aggregate_id     TEXT                                  NOT NULL,
    last_sequence    INTEGER CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot INTEGER CHECK (current_snapshot >= 0) NOT NULL,
    payload          TEXT                                  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

CREATE TABLE projection_checkpoints
(
    name          TEXT PRIMARY KEY,
    last_xid      INTEGER NOT NULL DEFAULT 0,
    last_position INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE server_secrets
(
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE users
(
    id                      TEXT PRIMARY KEY,
    email                   TEXT,
    email_normalized        TEXT,
    email_verified          BOOLEAN NOT NULL DEFAULT 0,
    type                    TEXT NOT NULL,
    name                    TEXT,
    gender                  TEXT,
    bio                     TEXT,
    dob                     TEXT,
    city                    TEXT,
    state                   TEXT,
    country                 TEXT,
    license_id              TEXT,
    paypal_email            TEXT,
    language                TEXT,
    visibility              TEXT NOT NULL DEFAULT 'public',
    timezone_offset         INTEGER,
    timezone                TEXT,
    specialization          TEXT,
    interests               TEXT,
    certificate_state       TEXT,
    picture_file             TEXT,
    video_file               TEXT,
    certificate_file         TEXT,
    max_call_duration       INTEGER,
    max_call_count          INTEGER,
    push_enabled            BOOLEAN NOT NULL DEFAULT 1,
    metas                   TEXT,
    verification_admin      TEXT NOT NULL DEFAULT 'pending',
    verification_background TEXT NOT NULL DEFAULT 'pending',
    insert_date             TEXT NOT NULL,
    last_login_date         TEXT,
    updated_at              TEXT NOT NULL,
    deleted_at              TEXT
);
CREATE INDEX users_email ON users (email_normalized);

-- Per-user keys for personal fields (crypto-shredding). Not a read model: never rebuilt, never
-- granted to analysts; deleting a user deletes their row.
CREATE TABLE user_keys
(
    user_id    TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE user_credentials
(
    user_id       TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    changed_at    TEXT NOT NULL
);

CREATE TABLE sessions
(
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    refresh_jti  TEXT NOT NULL,
    status       TEXT NOT NULL,
    end_reason   TEXT,
    created_at   TEXT NOT NULL,
    refreshed_at TEXT NOT NULL,
    ended_at     TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE feed
(
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL,
    action     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX feed_user ON feed (user_id, position);
CREATE INDEX feed_created ON feed (created_at);
