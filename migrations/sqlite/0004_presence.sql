-- Who has an open WebSocket on which instance, so `online` is right whichever instance a
-- user is connected to. Each instance refreshes its rows every 30 s; rows of an instance that
-- stopped refreshing (crashed) count as offline after 90 s. Not a read model.
CREATE TABLE presence
(
    instance_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    sockets     INTEGER NOT NULL,
    seen_at     TEXT NOT NULL,
    PRIMARY KEY (instance_id, user_id)
);
CREATE INDEX presence_user ON presence (user_id);
