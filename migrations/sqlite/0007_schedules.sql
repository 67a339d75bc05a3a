-- Availability and schedules (projection `schedules`), built from the Calendar streams.

-- A volunteer's weekly availability in their local wall-clock time:
-- {"mon": [{"start": "09:00", "end": "12:00"}], ...}
CREATE TABLE availability_weekly
(
    user_id    TEXT PRIMARY KEY,
    week       TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Custom dates (local dates of the volunteer); an empty list is a day off.
CREATE TABLE availability_custom
(
    user_id TEXT NOT NULL,
    day     TEXT NOT NULL,
    ranges  TEXT NOT NULL,
    PRIMARY KEY (user_id, day)
);

-- basic_call_schedule: one row per schedule (a series is one row).
CREATE TABLE schedules
(
    id           TEXT PRIMARY KEY,
    senior_id    TEXT NOT NULL,
    volunteer_id TEXT NOT NULL,
    chat_id      TEXT NOT NULL,
    title        TEXT NOT NULL,
    -- audio | video
    type         TEXT NOT NULL,
    -- none | daily | weekly
    recurrence   TEXT NOT NULL,
    -- the first occurrence, and the end of the last one
    starts_at    TEXT NOT NULL,
    ends_at      TEXT NOT NULL,
    last_ends_at TEXT NOT NULL,
    -- the volunteer's zone the series is laid out in (IANA name or UTC offset)
    zone         TEXT NOT NULL,
    -- live | canceled
    state        TEXT NOT NULL,
    canceled_by  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX schedules_senior ON schedules (senior_id, starts_at);
CREATE INDEX schedules_volunteer ON schedules (volunteer_id, starts_at);

-- Every occurrence of every live schedule (a series has many).
CREATE TABLE schedule_occurrences
(
    schedule_id TEXT NOT NULL,
    starts_at   TEXT NOT NULL,
    ends_at     TEXT NOT NULL,
    PRIMARY KEY (schedule_id, starts_at)
);
CREATE INDEX schedule_occurrences_time ON schedule_occurrences (starts_at);

-- Each calendar's hold on a schedule: the senior's (guest) and the volunteer's (host). A guest
-- hold without a live host booking is a saga left half-way (the sweeper releases it).
CREATE TABLE calendar_bookings
(
    user_id     TEXT NOT NULL,
    schedule_id TEXT NOT NULL,
    host        BOOLEAN NOT NULL,
    live        BOOLEAN NOT NULL,
    booked_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, schedule_id)
);
CREATE INDEX calendar_bookings_live ON calendar_bookings (live, host, booked_at);

-- Reminders due (10 minutes before and at the start of each occurrence). Instances claim due
-- rows with a short lease (SQLite has one writer); the Calendar makes each one happen once.
CREATE TABLE schedule_reminders
(
    schedule_id   TEXT NOT NULL,
    occurrence    TEXT NOT NULL,
    lead_secs     INTEGER NOT NULL,
    due_at        TEXT NOT NULL,
    claimed_until TEXT,
    sent_at       TEXT,
    PRIMARY KEY (schedule_id, occurrence, lead_secs)
);
CREATE INDEX schedule_reminders_due ON schedule_reminders (due_at);

-- Messages about a schedule or a call link it.
ALTER TABLE messages ADD COLUMN ref_id TEXT;

