//! Read model `schedules`: availability (`availability_weekly`, `availability_custom`), the
//! schedules with their occurrences, each calendar's hold on a schedule (`calendar_bookings`)
//! and the reminders due (`schedule_reminders`), all from the Calendar streams.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Map, Value};
use sqlx::types::Json;
use sqlx::FromRow;
use talkamie_aggregates::calendar::{
    Calendar, CalendarEvent, Day, Range, Recurrence, Schedule, Slot, Zone,
};

use crate::bind_all;
use crate::db::{exec, exec_together, one_of, Bind, Params, Source, Statement};
use crate::relations::iso;
use crate::users::UserRecord;
use crate::{with_source, with_source_by_store, with_tx, DbTx, ProjectionError, StoredEvent};
use Bind::{Int, Text, Time};

pub const TABLES: &[&str] = &[
    "availability_weekly",
    "availability_custom",
    "schedules",
    "schedule_occurrences",
    "calendar_bookings",
    "schedule_reminders",
];

/// Reminders go out this many seconds before each occurrence (and at its start).
pub const REMINDER_LEADS: [i64; 2] = [600, 0];

pub fn is_calendar_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <Calendar as cqrs_es::Aggregate>::TYPE
}

/// `[{start, end}]` as the contract shows ranges.
pub fn ranges_json(ranges: &[Range]) -> Value {
    ranges
        .iter()
        .map(|r| json!({"start": Range::clock(r.start), "end": Range::clock(r.end)}))
        .collect()
}

pub fn week_json(week: &BTreeMap<Day, Vec<Range>>) -> Value {
    let mut out = Map::new();
    for day in Day::ALL {
        out.insert(
            day.as_str().into(),
            ranges_json(week.get(&day).map(Vec::as_slice).unwrap_or(&[])),
        );
    }
    Value::Object(out)
}

fn zone_text(zone: &Zone) -> String {
    match zone {
        Zone::Named(name) => name.clone(),
        Zone::Offset(minutes) => format!(
            "UTC{}{:02}:{:02}",
            if *minutes < 0 { '-' } else { '+' },
            minutes.abs() / 60,
            minutes.abs() % 60
        ),
    }
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if !is_calendar_event(event) {
        return Ok(());
    }
    let owner = event.aggregate_id.as_str();
    match event.decode::<CalendarEvent>()? {
        CalendarEvent::WeeklyAvailabilitySet { week } => {
            let week = week_json(&week);
            with_tx!(tx, conn => {
                sqlx::query(
                    "INSERT INTO availability_weekly (user_id, week, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET week = excluded.week,
                                                         updated_at = excluded.updated_at",
                )
                .bind(owner)
                .bind(Json(&week))
                .bind(event.recorded_at)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
            });
        }
        CalendarEvent::CustomAvailabilitySet { days } => {
            for (day, ranges) in days {
                let ranges = ranges_json(&ranges);
                with_tx!(tx, conn => {
                    sqlx::query(
                        "INSERT INTO availability_custom (user_id, day, ranges) VALUES ($1, $2, $3)
                         ON CONFLICT (user_id, day) DO UPDATE SET ranges = excluded.ranges",
                    )
                    .bind(owner)
                    .bind(day)
                    .bind(Json(&ranges))
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
                });
            }
        }
        CalendarEvent::Booked {
            schedule,
            occurrences,
            host,
            at,
            ..
        } => {
            let hold = Statement::new(
                "INSERT INTO calendar_bookings (user_id, schedule_id, host, live, booked_at)
                 VALUES ($1, $2, $3, TRUE, $4)
                 ON CONFLICT (user_id, schedule_id) DO UPDATE SET live = TRUE, booked_at = $4",
                &[Text(owner), Text(&schedule.id), Bind::Bool(host), Time(at)],
            );
            if host {
                record_schedule(tx, hold, &schedule, &occurrences, at).await?;
            } else {
                exec_together(tx, &[hold]).await?;
            }
        }
        CalendarEvent::Released {
            schedule_id,
            host,
            by,
            at,
        } => {
            let mut statements = vec![Statement::new(
                "UPDATE calendar_bookings SET live = FALSE WHERE user_id = $1 AND schedule_id = $2",
                &[Text(owner), Text(&schedule_id)],
            )];
            if host {
                statements.push(Statement::new(
                    "UPDATE schedules SET state = 'canceled', canceled_by = $2, updated_at = $3
                      WHERE id = $1",
                    &[Text(&schedule_id), Text(&by), Time(at)],
                ));
                statements.push(Statement::new(
                    "DELETE FROM schedule_reminders WHERE schedule_id = $1 AND sent_at IS NULL",
                    &[Text(&schedule_id)],
                ));
            }
            exec_together(tx, &statements).await?;
        }
        CalendarEvent::Reminded {
            schedule_id,
            occurrence,
            lead_secs,
            at,
        } => {
            exec(
                tx,
                "UPDATE schedule_reminders SET sent_at = $4
                  WHERE schedule_id = $1 AND occurrence = $2 AND lead_secs = $3",
                &[
                    Text(&schedule_id),
                    Time(occurrence),
                    Int(lead_secs),
                    Time(at),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// The host's hold, the schedule row, its occurrences and its reminders (an update replaces
/// the last three): two round trips on PostgreSQL whatever the number of occurrences, the
/// second writing what the first cleared.
async fn record_schedule(
    tx: &mut DbTx,
    hold: Statement<'_>,
    schedule: &Schedule,
    occurrences: &[Slot],
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let last_ends = occurrences
        .iter()
        .map(|s| s.to)
        .max()
        .unwrap_or(schedule.first.to);
    let zone = zone_text(&schedule.zone);
    let row = Statement::new(
        "INSERT INTO schedules (id, senior_id, volunteer_id, chat_id, title, type, recurrence,
                                starts_at, ends_at, last_ends_at, zone, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'live', $12, $12)
         ON CONFLICT (id) DO UPDATE SET title = $5, type = $6, recurrence = $7, starts_at = $8,
                ends_at = $9, last_ends_at = $10, zone = $11, state = 'live', updated_at = $12",
        &[
            Text(&schedule.id),
            Text(&schedule.senior_id),
            Text(&schedule.volunteer_id),
            Text(&schedule.chat_id),
            Text(&schedule.title),
            Text(schedule.kind.as_str()),
            Text(schedule.recurrence.as_str()),
            Time(schedule.first.from),
            Time(schedule.first.to),
            Time(last_ends),
            Text(&zone),
            Time(at),
        ],
    );
    let id = [Text(&schedule.id)];
    exec_together(
        tx,
        &[
            hold,
            row,
            Statement::new(
                "DELETE FROM schedule_occurrences WHERE schedule_id = $1",
                &id,
            ),
            Statement::new(
                "DELETE FROM schedule_reminders WHERE schedule_id = $1 AND sent_at IS NULL",
                &id,
            ),
        ],
    )
    .await?;
    if occurrences.is_empty() {
        return Ok(());
    }
    // One multi-row INSERT per table (a series has up to 56 occurrences; each used to be three
    // statements of its own).
    let mut slots = Params::default();
    let slot_rows: Vec<String> = occurrences
        .iter()
        .map(|slot| slots.row(&[Text(&schedule.id), Time(slot.from), Time(slot.to)]))
        .collect();
    let mut reminders = Params::default();
    let reminder_rows: Vec<String> = occurrences
        .iter()
        .flat_map(|slot| REMINDER_LEADS.map(|lead| (slot.from, lead)))
        .map(|(from, lead)| {
            let due = from - Duration::seconds(lead);
            reminders.row(&[Text(&schedule.id), Time(from), Int(lead), Time(due)])
        })
        .collect();
    exec_together(
        tx,
        &[
            Statement {
                sql: format!(
                    "INSERT INTO schedule_occurrences (schedule_id, starts_at, ends_at) VALUES {}",
                    slot_rows.join(", ")
                ),
                binds: slots.binds,
            },
            Statement {
                sql: format!(
                    "INSERT INTO schedule_reminders (schedule_id, occurrence, lead_secs, due_at)
                     VALUES {} ON CONFLICT DO NOTHING",
                    reminder_rows.join(", ")
                ),
                binds: reminders.binds,
            },
        ],
    )
    .await
}

/// The weekly availability of a user, every day present (`{sun:[...], ...}`).
pub async fn weekly(source: Source<'_>, user_id: &str) -> Result<Value, sqlx::Error> {
    let week: Option<Json<Value>> = with_source!(source, conn => {
        sqlx::query_scalar("SELECT week FROM availability_weekly WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?
    });
    Ok(week
        .map(|w| w.0)
        .unwrap_or_else(|| week_json(&BTreeMap::new())))
}

/// Custom dates of a user between `from` and `to` (inclusive): `{"YYYY-MM-DD": [...]}`.
pub async fn custom(
    source: Source<'_>,
    user_id: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, sqlx::Error> {
    let rows: Vec<(NaiveDate, Json<Value>)> = with_source!(source, conn => {
        sqlx::query_as(
            "SELECT day, ranges FROM availability_custom
              WHERE user_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        )
        .bind(user_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?
    });
    Ok(Value::Object(
        rows.into_iter()
            .map(|(day, ranges)| (day.to_string(), ranges.0))
            .collect(),
    ))
}

/// `availability{custom, weekly, bookedSlots{custom, weekly}}` of `full_user`: custom dates from
/// `today` (the user's local date) and the booked times of live schedules still to come, both
/// in the user's wall-clock time.
pub async fn availability_json(
    source: Source<'_>,
    user: &UserRecord,
    now: DateTime<Utc>,
) -> Result<Value, sqlx::Error> {
    let mut many = availability_of_many(source, &[(user, now)]).await?;
    Ok(many.remove(&user.id).unwrap_or(Value::Null))
}

/// [`availability_json`] of several users, each at their own `now` (a projector round's
/// `user.update` pushes): three statements for any number of users (one when none is a
/// volunteer), each reading the rows of all of them.
pub async fn availability_of_many(
    mut source: Source<'_>,
    users: &[(&UserRecord, DateTime<Utc>)],
) -> Result<HashMap<String, Value>, sqlx::Error> {
    let Some(earliest) = users.iter().map(|(_, now)| *now).min() else {
        return Ok(HashMap::new());
    };
    let postgres = source.is_postgres();
    // Only volunteers publish availability: spare the two reads for everyone else (this runs
    // for every `user.update` push).
    let volunteers: Vec<String> = users
        .iter()
        .filter(|(user, _)| user.is_volunteer())
        .map(|(user, _)| user.id.clone())
        .collect();
    let mut weekly: HashMap<String, Value> = HashMap::new();
    let mut custom: HashMap<String, Vec<(NaiveDate, Value)>> = HashMap::new();
    if !volunteers.is_empty() {
        let sql = format!(
            "SELECT user_id, week FROM availability_weekly WHERE user_id {}",
            one_of(postgres, 1, volunteers.len())
        );
        let rows: Vec<(String, Json<Value>)> = with_source_by_store!(source.reborrow(), conn,
            postgres => sqlx::query_as(&sql).bind(&volunteers).fetch_all(conn).await?,
            sqlite => bind_each(sqlx::query_as(&sql), &volunteers).fetch_all(conn).await?
        );
        weekly.extend(rows.into_iter().map(|(id, week)| (id, week.0)));
        // Each user's dates run from their own today; read the widest span and cut per user.
        let days = |(user, now): &(&UserRecord, DateTime<Utc>)| custom_days(user, *now);
        let from = users.iter().map(|u| days(u).0).min().unwrap_or_default();
        let to = users.iter().map(|u| days(u).1).max().unwrap_or_default();
        let next = if postgres { 2 } else { volunteers.len() + 1 };
        let sql = format!(
            "SELECT user_id, day, ranges FROM availability_custom
              WHERE user_id {} AND day >= ${next} AND day <= ${} ORDER BY day",
            one_of(postgres, 1, volunteers.len()),
            next + 1
        );
        let rows: Vec<(String, NaiveDate, Json<Value>)> = with_source_by_store!(source.reborrow(), conn,
            postgres => sqlx::query_as(&sql).bind(&volunteers).bind(from).bind(to)
                .fetch_all(conn).await?,
            sqlite => bind_each(sqlx::query_as(&sql), &volunteers).bind(from).bind(to)
                .fetch_all(conn).await?
        );
        for (id, day, ranges) in rows {
            custom.entry(id).or_default().push((day, ranges.0));
        }
    }
    let ids: Vec<String> = users.iter().map(|(user, _)| user.id.clone()).collect();
    let next = if postgres { 2 } else { ids.len() + 1 };
    let list = one_of(postgres, 1, ids.len());
    let sql = format!(
        "SELECT volunteer_id, senior_id, recurrence, starts_at, ends_at, last_ends_at FROM schedules
          WHERE (volunteer_id {list} OR senior_id {list}) AND state = 'live'
            AND last_ends_at > ${next}
          ORDER BY starts_at"
    );
    let booked: Vec<BookedRow> = with_source_by_store!(source, conn,
        postgres => sqlx::query_as(&sql).bind(&ids).bind(earliest).fetch_all(conn).await?,
        sqlite => bind_each(sqlx::query_as(&sql), &ids).bind(earliest).fetch_all(conn).await?
    );
    Ok(users
        .iter()
        .map(|&(user, now)| {
            let id = user.id.as_str();
            let (from, to) = custom_days(user, now);
            let dates = custom.get(id).map_or(&[][..], Vec::as_slice);
            let dates = dates.iter().filter(|(day, _)| from <= *day && *day <= to);
            let slots = booked
                .iter()
                .filter(|row| (row.0 == id || row.1 == id) && row.5 > now);
            let week = weekly.remove(id);
            (
                user.id.clone(),
                render_availability(user, week, dates, slots),
            )
        })
        .collect())
}

/// A live schedule's times: volunteer, senior, recurrence, starts, ends, last occurrence's end.
type BookedRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Binds each of `ids` in turn (SQLite's `IN` lists: it binds no arrays).
fn bind_each<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments<'q>>,
    ids: &'q [String],
) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments<'q>> {
    for id in ids {
        query = query.bind(id);
    }
    query
}

/// The custom dates `full_user` shows: from the user's local today to as far ahead as a
/// booking may be made.
fn custom_days(user: &UserRecord, now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let today = user.zone().local(now).date();
    // A real bound: SQLite compares dates as text, where NaiveDate::MAX sorts first.
    let horizon = today + chrono::Days::new(talkamie_aggregates::calendar::MAX_DAYS_AHEAD + 1);
    (today, horizon)
}

/// The `availability` object from the rows read for `user`.
fn render_availability<'a>(
    user: &UserRecord,
    weekly: Option<Value>,
    custom: impl Iterator<Item = &'a (NaiveDate, Value)>,
    booked: impl Iterator<Item = &'a BookedRow>,
) -> Value {
    let zone = &user.zone();
    let (weekly, custom) = if user.is_volunteer() {
        let custom: Map<String, Value> = custom
            .map(|(day, ranges)| (day.to_string(), ranges.clone()))
            .collect();
        (
            weekly.unwrap_or_else(|| week_json(&BTreeMap::new())),
            Value::Object(custom),
        )
    } else {
        (week_json(&BTreeMap::new()), json!({}))
    };
    let mut booked_custom: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut booked_weekly: BTreeMap<Day, Vec<Value>> = BTreeMap::new();
    for (_, _, recurrence, from, to, _) in booked {
        let (start, end) = (zone.local(*from), zone.local(*to));
        let clock = |at: chrono::NaiveDateTime| at.format("%H:%M").to_string();
        // A slot across midnight shows on both of its days.
        let mut parts = vec![(start.date(), clock(start), "24:00".to_string())];
        if end.date() == start.date() {
            parts[0].2 = clock(end);
        } else if end.time() != chrono::NaiveTime::MIN {
            parts.push((end.date(), "00:00".to_string(), clock(end)));
        }
        for (date, start, end) in parts {
            let range = json!({ "start": start, "end": end });
            match recurrence.as_str() {
                "weekly" => booked_weekly.entry(Day::of(date)).or_default().push(range),
                "daily" => {
                    for day in Day::ALL {
                        booked_weekly.entry(day).or_default().push(range.clone());
                    }
                }
                _ => booked_custom
                    .entry(date.to_string())
                    .or_default()
                    .push(range),
            }
        }
    }
    let booked_weekly: Map<String, Value> = booked_weekly
        .into_iter()
        .map(|(day, ranges)| (day.as_str().to_string(), json!(ranges)))
        .collect();
    json!({
        "custom": custom,
        "weekly": weekly,
        "bookedSlots": {"custom": booked_custom, "weekly": booked_weekly},
    })
}

/// SQL condition (for the directory's `?` placeholders: bind the date twice): the user in
/// `user_column` has availability on that local date, whose weekday is `weekday` (a custom entry
/// with ranges, or no custom entry and weekly ranges on that weekday). JSON compares as text,
/// and PostgreSQL may print a space after a colon.
pub fn available_on_sql(user_column: &str, weekday: Day) -> String {
    let day = weekday.as_str();
    format!(
        "(EXISTS (SELECT 1 FROM availability_custom ac
                   WHERE ac.user_id = {user_column} AND CAST(ac.day AS TEXT) = ?
                     AND CAST(ac.ranges AS TEXT) <> '[]')
          OR (NOT EXISTS (SELECT 1 FROM availability_custom ac
                           WHERE ac.user_id = {user_column} AND CAST(ac.day AS TEXT) = ?)
              AND EXISTS (SELECT 1 FROM availability_weekly aw
                           WHERE aw.user_id = {user_column}
                             AND CAST(aw.week AS TEXT) NOT LIKE '%\"{day}\":[]%'
                             AND CAST(aw.week AS TEXT) NOT LIKE '%\"{day}\": []%')))"
    )
}

/// A schedule row with what a viewer needs to render it.
#[derive(Debug, Clone, FromRow)]
pub struct ScheduleRow {
    pub id: String,
    pub senior_id: String,
    pub volunteer_id: String,
    pub chat_id: String,
    pub title: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub recurrence: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub last_ends_at: DateTime<Utc>,
    pub zone: String,
    pub state: String,
    pub canceled_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The occurrence running now or next (or the last one when all are over).
    pub slot_from: DateTime<Utc>,
    pub slot_to: DateTime<Utc>,
}

const SCHEDULE_COLUMNS: &str = "s.id, s.senior_id, s.volunteer_id, s.chat_id, s.title, s.type,
    s.recurrence, s.starts_at, s.ends_at, s.last_ends_at, s.zone, s.state, s.canceled_by,
    s.created_at, s.updated_at";

/// The current or next occurrence at `$1` (else the last one).
const SLOT_COLUMNS: &str = "
    COALESCE((SELECT MIN(o.starts_at) FROM schedule_occurrences o
               WHERE o.schedule_id = s.id AND o.ends_at > $1),
             (SELECT MAX(o.starts_at) FROM schedule_occurrences o WHERE o.schedule_id = s.id),
             s.starts_at) AS slot_from,
    COALESCE((SELECT MIN(o.ends_at) FROM schedule_occurrences o
               WHERE o.schedule_id = s.id AND o.ends_at > $1),
             s.last_ends_at) AS slot_to";

impl ScheduleRow {
    pub fn other_side(&self, viewer: &str) -> &str {
        if viewer == self.senior_id {
            &self.volunteer_id
        } else {
            &self.senior_id
        }
    }

    pub fn is_member(&self, user_id: &str) -> bool {
        user_id == self.senior_id || user_id == self.volunteer_id
    }

    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.state == "canceled" {
            "canceled"
        } else if self.slot_from <= now && now < self.slot_to {
            "on-going"
        } else if now < self.slot_from {
            "upcoming"
        } else {
            "past"
        }
    }

    pub fn recurrence(&self) -> Recurrence {
        match self.recurrence.as_str() {
            "daily" => Recurrence::Daily,
            "weekly" => Recurrence::Weekly,
            _ => Recurrence::None,
        }
    }

    /// `basic_call_schedule` with `attendee` (the other side, already rendered).
    pub fn to_json(&self, now: DateTime<Utc>, attendee: Value) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "type": self.kind,
            "recurrence": self.recurrence,
            "timeslot": {"from": iso(self.slot_from), "to": iso(self.slot_to)},
            "status": self.status(now),
            "attendee": attendee,
            "chat": {"id": self.chat_id},
        })
    }

    /// `full_call_schedule`: the basic shape plus both sides, the series and its history.
    pub fn to_full_json(&self, now: DateTime<Utc>, attendee: Value, occurrences: &[Slot]) -> Value {
        let mut schedule = self.to_json(now, attendee);
        let extra = json!({
            "senior": {"id": self.senior_id},
            "volunteer": {"id": self.volunteer_id},
            "startDateTime": iso(self.starts_at),
            "endDateTime": iso(self.ends_at),
            "occurrences": occurrences.iter()
                .map(|s| json!({"from": iso(s.from), "to": iso(s.to)}))
                .collect::<Vec<_>>(),
            "timezone": self.zone,
            "canceledBy": self.canceled_by.as_ref().map(|id| json!({"id": id})),
            "insertDate": iso(self.created_at),
            "updateDate": iso(self.updated_at),
        });
        crate::profiles::merge(&mut schedule, extra);
        schedule
    }
}

pub async fn find(
    source: Source<'_>,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<ScheduleRow>, sqlx::Error> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS}, {SLOT_COLUMNS} FROM schedules s WHERE s.id = $2");
    with_source!(source, conn => {
        sqlx::query_as::<_, ScheduleRow>(&sql).bind(now).bind(id).fetch_optional(conn).await
    })
}

/// The occurrence a schedule shows at `now` (the one running or next, else the last one), from
/// its occurrences as an event lists them: what [`find`] reads back once they are stored.
pub fn slot_at(first: Slot, occurrences: &[Slot], now: DateTime<Utc>) -> Slot {
    let ahead = || occurrences.iter().filter(|slot| slot.to > now);
    let from = ahead()
        .map(|slot| slot.from)
        .min()
        .or_else(|| occurrences.iter().map(|slot| slot.from).max())
        .unwrap_or(first.from);
    let to = ahead()
        .map(|slot| slot.to)
        .min()
        .or_else(|| occurrences.iter().map(|slot| slot.to).max())
        .unwrap_or(first.to);
    Slot { from, to }
}

/// A schedule row with one user's name and picture (`user` is `None` when there is no such
/// user), read together: a schedule alert's two reads in one round trip.
#[derive(Debug, FromRow)]
pub struct ScheduleWithUser {
    #[sqlx(flatten)]
    pub schedule: ScheduleRow,
    pub user_found: Option<String>,
    pub user_name: Option<String>,
    pub user_picture: Option<Json<Value>>,
}

/// [`find`], with `user_id`'s name and picture.
pub async fn find_with_user(
    source: Source<'_>,
    id: &str,
    now: DateTime<Utc>,
    user_id: &str,
) -> Result<Option<ScheduleWithUser>, sqlx::Error> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS}, {SLOT_COLUMNS}, u.id AS user_found, u.name AS user_name,
                u.picture_file AS user_picture
           FROM schedules s LEFT JOIN users u ON u.id = $3
          WHERE s.id = $2"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ScheduleWithUser>(&sql)
            .bind(now)
            .bind(id)
            .bind(user_id)
            .fetch_optional(conn)
            .await
    })
}

pub async fn occurrences(source: Source<'_>, id: &str) -> Result<Vec<Slot>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = with_source!(source, conn => {
        sqlx::query_as(
            "SELECT starts_at, ends_at FROM schedule_occurrences WHERE schedule_id = $1
              ORDER BY starts_at",
        )
        .bind(id)
        .fetch_all(conn)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(from, to)| Slot { from, to })
        .collect())
}

/// Which schedules a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleList {
    /// Every schedule, latest first.
    All,
    /// Live schedules with an occurrence still to end, soonest first.
    Upcoming,
    /// Schedules whose last occurrence has ended, or that were canceled, latest first.
    Past,
}

/// One page of `user_id`'s schedules; `after` is the previous page's last `(starts_at, id)`.
pub async fn page(
    mut source: Source<'_>,
    user_id: &str,
    list: ScheduleList,
    keyword: Option<&str>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<ScheduleRow>, i64), sqlx::Error> {
    let mut params = Params::default();
    params.add(Time(now));
    let user = params.add(Text(user_id));
    let mut filters = vec![format!("(s.senior_id = {user} OR s.volunteer_id = {user})")];
    match list {
        ScheduleList::All => {}
        ScheduleList::Upcoming => filters.push("s.state = 'live' AND s.last_ends_at > $1".into()),
        ScheduleList::Past => filters.push("(s.state = 'canceled' OR s.last_ends_at <= $1)".into()),
    }
    let pattern = keyword.map(crate::directory::like);
    if let Some(pattern) = &pattern {
        let pattern = params.add(Text(pattern));
        filters.push(format!(
            "(LOWER(s.title) LIKE {pattern} ESCAPE '\\'
              OR LOWER(COALESCE(u.name, '')) LIKE {pattern} ESCAPE '\\')"
        ));
    }
    let from = format!(
        "FROM schedules s LEFT JOIN users u
           ON u.id = CASE WHEN s.senior_id = {user} THEN s.volunteer_id ELSE s.senior_id END"
    );
    let count_sql = format!("SELECT COUNT(*) {from} WHERE {}", filters.join(" AND "));
    let count_binds = params.binds.clone();
    let total: i64 = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_scalar(&count_sql), count_binds).fetch_one(conn).await?
    });
    let (order, cmp) = match list {
        ScheduleList::Upcoming => ("ASC", ">"),
        _ => ("DESC", "<"),
    };
    if let Some((at, id)) = &after {
        let (at, id) = (params.add(Time(*at)), params.add(Text(id)));
        filters.push(format!(
            "(s.starts_at {cmp} {at} OR (s.starts_at = {at} AND s.id {cmp} {id}))"
        ));
    }
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS}, {SLOT_COLUMNS} {from} WHERE {}
          ORDER BY s.starts_at {order}, s.id {order} LIMIT {limit}",
        filters.join(" AND ")
    );
    let rows = with_source!(source, conn => {
        bind_all!(sqlx::query_as::<_, ScheduleRow>(&sql), params.binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

/// The live future schedules between two people (for "clear my schedules with {id}").
pub async fn future_between(
    source: Source<'_>,
    a: &str,
    b: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_scalar(
            "SELECT id FROM schedules
              WHERE ((senior_id = $1 AND volunteer_id = $2) OR (senior_id = $2 AND volunteer_id = $1))
                AND state = 'live' AND last_ends_at > $3 ORDER BY starts_at",
        )
        .bind(a)
        .bind(b)
        .bind(now)
        .fetch_all(conn)
        .await
    })
}

/// The live schedule of this senior with this volunteer whose occurrence runs at `now` or
/// starts within `early` of it (a call started then belongs to it).
pub async fn scheduled_now(
    source: Source<'_>,
    senior_id: &str,
    volunteer_id: &str,
    now: DateTime<Utc>,
    early: Duration,
) -> Result<Option<String>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_scalar(
            "SELECT s.id FROM schedules s JOIN schedule_occurrences o ON o.schedule_id = s.id
              WHERE s.senior_id = $1 AND s.volunteer_id = $2 AND s.state = 'live'
                AND o.starts_at <= $3 AND o.ends_at > $4
              ORDER BY o.starts_at LIMIT 1",
        )
        .bind(senior_id)
        .bind(volunteer_id)
        .bind(now + early)
        .bind(now)
        .fetch_optional(conn)
        .await
    })
}

/// Every live future schedule of a user (account deletion cancels them).
pub async fn future_of(
    source: Source<'_>,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS}, {SLOT_COLUMNS} FROM schedules s
          WHERE (s.senior_id = $2 OR s.volunteer_id = $2) AND s.state = 'live' AND s.last_ends_at > $1"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ScheduleRow>(&sql).bind(now).bind(user_id).fetch_all(conn).await
    })
}

/// Guest holds older than `before` whose schedule has no live host booking: sagas that stopped
/// half-way (a crash between the two calendars). `(user_id, schedule_id)`.
pub async fn orphan_holds(
    source: Source<'_>,
    before: DateTime<Utc>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_as(
            "SELECT g.user_id, g.schedule_id FROM calendar_bookings g
              WHERE g.host = FALSE AND g.live = TRUE AND g.booked_at < $1
                AND NOT EXISTS (SELECT 1 FROM calendar_bookings h
                                 WHERE h.schedule_id = g.schedule_id AND h.host = TRUE
                                   AND h.live = TRUE)",
        )
        .bind(before)
        .fetch_all(conn)
        .await
    })
}

/// A reminder that is due: `(schedule id, occurrence, lead seconds, volunteer id)`.
pub type DueReminder = (String, DateTime<Utc>, i64, String);

/// Claims up to `limit` due reminders for `lease` (other instances skip them meanwhile).
pub async fn claim_due_reminders(
    db: &crate::Db,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<DueReminder>, sqlx::Error> {
    let select = "SELECT r.schedule_id, r.occurrence, r.lead_secs, s.volunteer_id
                    FROM schedule_reminders r JOIN schedules s ON s.id = r.schedule_id
                   WHERE r.sent_at IS NULL AND r.due_at <= $1
                     AND (r.claimed_until IS NULL OR r.claimed_until < $1)
                   ORDER BY r.due_at LIMIT $2";
    let claim = "UPDATE schedule_reminders SET claimed_until = $4
                  WHERE schedule_id = $1 AND occurrence = $2 AND lead_secs = $3";
    let until = now + lease;
    let locked = match db {
        crate::Db::Postgres(_) => format!("{select} FOR UPDATE OF r SKIP LOCKED"),
        crate::Db::Sqlite(_) => select.to_string(),
    };
    crate::with_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        let due: Vec<DueReminder> = sqlx::query_as(&locked)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        for (schedule_id, occurrence, lead, _) in &due {
            sqlx::query(claim)
                .bind(schedule_id)
                .bind(occurrence)
                .bind(lead)
                .bind(until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(due)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn slot(from: u32, to: u32) -> Slot {
        Slot {
            from: at(from),
            to: at(to),
        }
    }

    #[test]
    fn slot_at_shows_the_running_or_next_occurrence() {
        let occurrences = [slot(9, 10), slot(12, 13), slot(15, 16)];
        // Before all: the first; during one: that one; between two: the next.
        assert_eq!(slot_at(slot(9, 10), &occurrences, at(8)), slot(9, 10));
        assert_eq!(slot_at(slot(9, 10), &occurrences, at(12)), slot(12, 13));
        assert_eq!(slot_at(slot(9, 10), &occurrences, at(11)), slot(12, 13));
    }

    #[test]
    fn slot_at_falls_back_to_the_last_occurrence_then_the_first_slot() {
        let occurrences = [slot(12, 13), slot(9, 10)];
        // All over: the last one, whatever the order they are listed in.
        assert_eq!(slot_at(slot(9, 10), &occurrences, at(20)), slot(12, 13));
        // No occurrences listed: the schedule's first slot.
        assert_eq!(slot_at(slot(9, 10), &[], at(20)), slot(9, 10));
    }
}
