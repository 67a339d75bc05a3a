-- Calls (projection `calls`), built from the Call streams.

-- basic_call / full_call: one row per call.
CREATE TABLE calls
(
    id               TEXT PRIMARY KEY,
    chat_id          TEXT NOT NULL,
    -- the senior who rang, and the volunteer rung
    caller_id        TEXT NOT NULL,
    callee_id        TEXT NOT NULL,
    -- audio | video
    type             TEXT NOT NULL,
    -- ringing | accepted | rejected | missed | ended
    status           TEXT NOT NULL,
    schedule_id      TEXT,
    coins_per_minute INTEGER NOT NULL,
    -- how long the call may last once accepted (NULL: no limit)
    limit_secs       INTEGER,
    started_at       TEXT NOT NULL,
    accepted_at      TEXT,
    -- when the server ends an accepted call that reached its limit
    limit_at         TEXT,
    -- rejected, missed or ended
    finished_at      TEXT,
    ended_by         TEXT,
    -- hung-up | limit-reached
    end_reason       TEXT,
    duration_secs    INTEGER NOT NULL DEFAULT 0,
    price_coins      INTEGER NOT NULL DEFAULT 0,
    -- set once the billing saga settled the call
    charged_coins    INTEGER,
    earned_coins     INTEGER,
    billed_at        TEXT
);
CREATE INDEX calls_caller ON calls (caller_id, started_at);
CREATE INDEX calls_callee ON calls (callee_id, started_at);
-- The timers look for ringing and running calls, the billing sweep for unbilled ended ones.
CREATE INDEX calls_open ON calls (status) WHERE status IN ('ringing', 'accepted');
CREATE INDEX calls_unbilled ON calls (finished_at) WHERE status = 'ended' AND billed_at IS NULL;

