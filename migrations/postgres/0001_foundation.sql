-- The event log (the source of truth) and the snapshot store, in the shapes postgres-es uses.
-- Our extra columns get their values from defaults, because postgres-es names its columns:
--   position        the global position (a sequence: unique, but may commit out of order)
--   transaction_id  the writing transaction; readers order by (transaction_id, position) and
--                   read only transactions older than pg_snapshot_xmin, so no late commit is skipped
--   recorded_at     when the event was written
CREATE TABLE events
(
    position       bigserial                    NOT NULL,
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    transaction_id xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE UNIQUE INDEX events_position ON events (position);
CREATE INDEX events_global_order ON events (transaction_id, position);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Where each projection is in the global order.
CREATE TABLE projection_checkpoints
(
    name          text PRIMARY KEY,
    last_xid      bigint NOT NULL DEFAULT 0,
    last_position bigint NOT NULL DEFAULT 0
);

-- Secrets generated on first start (JWT signing key, hashing keys), shared by all instances.
CREATE TABLE server_secrets
(
    name       text PRIMARY KEY,
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Read model "users" (see docs/read-models.md).
CREATE TABLE users
(
    id                      text PRIMARY KEY,
    email                   text,
    email_normalized        text,
    email_verified          boolean NOT NULL DEFAULT false,
    type                    text NOT NULL,
    name                    text,
    gender                  text,
    bio                     text,
    dob                     text,
    city                    text,
    state                   text,
    country                 text,
    license_id              text,
    paypal_email            text,
    language                text,
    visibility              text NOT NULL DEFAULT 'public',
    timezone_offset         integer,
    timezone                text,
    specialization          text,
    interests               json,
    certificate_state       text,
    picture_file             json,
    video_file               json,
    certificate_file         json,
    max_call_duration       bigint,
    max_call_count          bigint,
    push_enabled            boolean NOT NULL DEFAULT true,
    metas                   json,
    verification_admin      text NOT NULL DEFAULT 'pending',
    verification_background text NOT NULL DEFAULT 'pending',
    insert_date             timestamptz NOT NULL,
    last_login_date         timestamptz,
    updated_at              timestamptz NOT NULL,
    deleted_at              timestamptz
);
CREATE INDEX users_email ON users (email_normalized);

-- Per-user keys for personal fields (crypto-shredding). Not a read model: never rebuilt, never
-- granted to analysts; deleting a user deletes their row.
CREATE TABLE user_keys
(
    user_id    text PRIMARY KEY,
    key        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_credentials
(
    user_id       text PRIMARY KEY,
    password_hash text        NOT NULL,
    changed_at    timestamptz NOT NULL
);

CREATE TABLE sessions
(
    id           text PRIMARY KEY,
    user_id      text        NOT NULL,
    refresh_jti  text        NOT NULL,
    status       text        NOT NULL,
    end_reason   text,
    created_at   timestamptz NOT NULL,
    refreshed_at timestamptz NOT NULL,
    ended_at     timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Read model "feed": per-user ordered WebSocket pushes.
CREATE TABLE feed
(
    position   bigserial PRIMARY KEY,
    user_id    text        NOT NULL,
    action     text        NOT NULL,
    payload    json        NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX feed_user ON feed (user_id, position);
CREATE INDEX feed_created ON feed (created_at);

-- Read-only role for analysts. Roles are cluster-wide, so creating it tolerates a concurrent
-- creation by another database's migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'talkamie_analyst') THEN
        CREATE ROLE talkamie_analyst NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
-- Analysts read the log through a view that hides the payloads of account streams (they hold
-- emails and password hashes); the raw events table stays with the service and the audit CLI.
CREATE VIEW events_for_analysts AS
SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
       CASE WHEN aggregate_type IN ('User', 'EmailClaim', 'Otp') THEN NULL ELSE payload END AS payload,
       recorded_at
  FROM events;
GRANT SELECT ON events_for_analysts, projection_checkpoints, users, sessions, feed TO talkamie_analyst;
