-- Uploaded files: storage metadata (like an object store's index), not an event-sourced read
-- model. A row is created when an upload URL is handed out and marked uploaded when the bytes
-- arrived within the limits. Deleting an account deletes its rows and its files.
CREATE TABLE files
(
    user_id       text NOT NULL,
    key           text NOT NULL,
    object_type   text NOT NULL,
    mime_type     text NOT NULL,
    name          text NOT NULL,
    size_bytes    bigint,
    has_thumbnail BOOLEAN NOT NULL DEFAULT FALSE,
    status        text NOT NULL DEFAULT 'pending',
    created_at    timestamptz NOT NULL,
    uploaded_at   timestamptz,
    PRIMARY KEY (user_id, key)
);
