-- Uploaded files: storage metadata (like an object store's index), not an event-sourced read
-- model. A row is created when an upload URL is handed out and marked uploaded when the bytes
-- arrived within the limits. Deleting an account deletes its rows and its files.
CREATE TABLE files
(
    user_id       TEXT NOT NULL,
    key           TEXT NOT NULL,
    object_type   TEXT NOT NULL,
    mime_type     TEXT NOT NULL,
    name          TEXT NOT NULL,
    size_bytes    INTEGER,
    has_thumbnail BOOLEAN NOT NULL DEFAULT 0,
    status        TEXT NOT NULL DEFAULT 'pending',
    created_at    TEXT NOT NULL,
    uploaded_at   TEXT,
    PRIMARY KEY (user_id, key)
);
