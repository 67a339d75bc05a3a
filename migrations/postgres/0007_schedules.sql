-- Availability and schedules (projection `schedules`), built from the Calendar streams.

-- A volunteer's weekly availability in their local wall-clock time:
-- {"mon": [{"start": "09:00", "end": "12:00"}], ...}
CREATE TABLE availability_weekly
(
    user_id    text PRIMARY KEY,
    week       json NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Custom dates (local dates of the volunteer); an empty list is a day off.
CREATE TABLE availability_custom
(
    user_id text NOT NULL,
    day     date NOT NULL,
    ranges  json NOT NULL,
    PRIMARY KEY (user_id, day)
);

-- basic_call_schedule: one row per schedule (a series is one row).
CREATE TABLE schedules
(
    id           text PRIMARY KEY,
    senior_id    text NOT NULL,
    volunteer_id text NOT NULL,
    chat_id      text NOT NULL,
    title        text NOT NULL,
    -- audio | video
    type         text NOT NULL,
    -- none | daily | weekly
    recurrence   text NOT NULL,
    -- the first occurrence, and the end of the last one
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    last_ends_at timestamptz NOT NULL,
    -- the volunteer's zone the series is laid out in (IANA name or UTC offset)
    zone         text NOT NULL,
    -- live | canceled
    state        text NOT NULL,
    canceled_by  text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX schedules_senior ON schedules (senior_id, starts_at);
CREATE INDEX schedules_volunteer ON schedules (volunteer_id, starts_at);

-- Every occurrence of every live schedule (a series has many).
CREATE TABLE schedule_occurrences
(
    schedule_id text NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    PRIMARY KEY (schedule_id, starts_at)
);
CREATE INDEX schedule_occurrences_time ON schedule_occurrences (starts_at);

-- Each calendar's hold on a schedule: the senior's (guest) and the volunteer's (host). A guest
-- hold without a live host booking is a saga left half-way (the sweeper releases it).
CREATE TABLE calendar_bookings
(
    user_id     text NOT NULL,
    schedule_id text NOT NULL,
    host        boolean NOT NULL,
    live        boolean NOT NULL,
    booked_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, schedule_id)
);
CREATE INDEX calendar_bookings_live ON calendar_bookings (live, host, booked_at);

-- Reminders due (10 minutes before and at the start of each occurrence). Instances claim due
-- rows with FOR UPDATE SKIP LOCKED and a short lease; the Calendar makes each one happen once.
CREATE TABLE schedule_reminders
(
    schedule_id   text NOT NULL,
    occurrence    timestamptz NOT NULL,
    lead_secs     bigint NOT NULL,
    due_at        timestamptz NOT NULL,
    claimed_until timestamptz,
    sent_at       timestamptz,
    PRIMARY KEY (schedule_id, occurrence, lead_secs)
);
CREATE INDEX schedule_reminders_due ON schedule_reminders (due_at) WHERE sent_at IS NULL;

-- Messages about a schedule or a call link it.
ALTER TABLE messages ADD COLUMN ref_id text;

GRANT SELECT ON availability_weekly, availability_custom, schedules, schedule_occurrences,
    calendar_bookings, schedule_reminders TO talkamie_analyst;
