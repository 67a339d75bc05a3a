-- Calls (projection `calls`), built from the Call streams.

-- basic_call / full_call: one row per call.
CREATE TABLE calls
(
    id               text PRIMARY KEY,
    chat_id          text NOT NULL,
    -- the senior who rang, and the volunteer rung
    caller_id        text NOT NULL,
    callee_id        text NOT NULL,
    -- audio | video
    type             text NOT NULL,
    -- ringing | accepted | rejected | missed | ended
    status           text NOT NULL,
    schedule_id      text,
    coins_per_minute bigint NOT NULL,
    -- how long the call may last once accepted (NULL: no limit)
    limit_secs       bigint,
    started_at       timestamptz NOT NULL,
    accepted_at      timestamptz,
    -- when the server ends an accepted call that reached its limit
    limit_at         timestamptz,
    -- rejected, missed or ended
    finished_at      timestamptz,
    ended_by         text,
    -- hung-up | limit-reached
    end_reason       text,
    duration_secs    bigint NOT NULL DEFAULT 0,
    price_coins      bigint NOT NULL DEFAULT 0,
    -- set once the billing saga settled the call
    charged_coins    bigint,
    earned_coins     bigint,
    billed_at        timestamptz
);
CREATE INDEX calls_caller ON calls (caller_id, started_at);
CREATE INDEX calls_callee ON calls (callee_id, started_at);
-- The timers look for ringing and running calls, the billing sweep for unbilled ended ones.
CREATE INDEX calls_open ON calls (status) WHERE status IN ('ringing', 'accepted');
CREATE INDEX calls_unbilled ON calls (finished_at) WHERE status = 'ended' AND billed_at IS NULL;

GRANT SELECT ON calls TO talkamie_analyst;
