//! The Calendar aggregate (one per user): a volunteer's availability and every person's booked
//! calls.
//!
//! A booking touches two calendars, the senior's and the volunteer's. Each calendar is its own
//! consistency boundary, so "no two live bookings of one person overlap" holds under any race:
//! every booking is checked and appended with optimistic concurrency on that person's stream.
//! The booking saga (see the service's `scheduling` module) books the senior's calendar first,
//! then the volunteer's; when the second step is refused it releases the first (compensation).
//! The volunteer's `Booked` event is the commit point and carries the schedule's details.
//!
//! Times in availability are the volunteer's local wall-clock time (`Zone`), so a weekly
//! 09:00–12:00 in New York stays 09:00–12:00 local across daylight saving changes; booked
//! occurrences are UTC instants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike,
    Utc,
};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

/// At most this many ranges in one day.
pub const MAX_RANGES_PER_DAY: usize = 12;
/// Custom availability may be set this many days ahead.
pub const MAX_DAYS_AHEAD: u64 = 366;
/// A recurring series books this many weeks ahead.
pub const SERIES_WEEKS: i64 = 8;
/// A booking older than this (all occurrences ended) is dropped from the calendar's state.
const FORGET_AFTER: Duration = Duration::days(2);

/// A day of the week, as the contract spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Sun,
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
}

impl Day {
    pub const ALL: [Day; 7] = [
        Day::Sun,
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Day::Sun => "sun",
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
        }
    }

    /// Accepts the contract's keys, and `thur` as `thu`.
    pub fn parse(key: &str) -> Option<Day> {
        match key {
            "thur" => Some(Day::Thu),
            _ => Day::ALL.into_iter().find(|d| d.as_str() == key),
        }
    }

    pub fn of(date: NaiveDate) -> Day {
        Day::ALL[date.weekday().num_days_from_sunday() as usize]
    }
}

/// Minutes in a day: the end of a range that reaches midnight ("24:00").
const MINUTES_PER_DAY: u32 = 1440;

/// A wall-clock range within one day, in minutes after midnight (`end` may be 1440, "24:00").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    pub start: u16,
    pub end: u16,
}

impl Range {
    /// Parses `HH:MM` clock times (`24:00` allowed as an end).
    pub fn parse(start: &str, end: &str) -> Result<Range, String> {
        let start = clock_minutes(start, false).ok_or("start must be a time HH:MM")?;
        let end = clock_minutes(end, true).ok_or("end must be a time HH:MM (24:00 allowed)")?;
        Ok(Range { start, end })
    }

    pub fn clock(minutes: u16) -> String {
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    }
}

fn clock_minutes(text: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_24 => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// Where a volunteer's wall clock is: an IANA zone (daylight saving honoured) or a fixed offset
/// in minutes east of UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Zone {
    Named(String),
    Offset(i32),
}

impl Zone {
    /// A user's zone: the IANA `timezone` when set, else the JavaScript-style offset header
    /// (`300` is UTC-5), else UTC.
    pub fn of_user(timezone: Option<&str>, timezone_offset: Option<i32>) -> Zone {
        match timezone.filter(|tz| chrono_tz::Tz::from_str(tz).is_ok()) {
            Some(tz) => Zone::Named(tz.to_string()),
            None => Zone::Offset(-timezone_offset.unwrap_or(0)),
        }
    }

    fn fixed(minutes_east: i32) -> chrono::FixedOffset {
        chrono::FixedOffset::east_opt(minutes_east * 60)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset"))
    }

    /// The wall-clock time at `at`.
    pub fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Zone::Named(name) => match chrono_tz::Tz::from_str(name) {
                Ok(tz) => at.with_timezone(&tz).naive_local(),
                Err(_) => at.naive_utc(),
            },
            Zone::Offset(minutes) => at.with_timezone(&Zone::fixed(*minutes)).naive_local(),
        }
    }

    /// The instant of a wall-clock time; in a daylight-saving gap the time moves forward to the
    /// first valid minute, in an overlap the earlier instant wins.
    pub fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let resolve = |result: chrono::LocalResult<DateTime<Utc>>| result.earliest();
        let mut probe = local;
        for _ in 0..=180 {
            let found = match self {
                Zone::Named(name) => match chrono_tz::Tz::from_str(name) {
                    Ok(tz) => resolve(
                        tz.from_local_datetime(&probe)
                            .map(|t| t.with_timezone(&Utc)),
                    ),
                    Err(_) => Some(Utc.from_utc_datetime(&probe)),
                },
                Zone::Offset(minutes) => resolve(
                    Zone::fixed(*minutes)
                        .from_local_datetime(&probe)
                        .map(|t| t.with_timezone(&Utc)),
                ),
            };
            if let Some(found) = found {
                return found;
            }
            probe += Duration::minutes(1);
        }
        Utc.from_utc_datetime(&local)
    }
}

/// One call time, UTC, `from < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Slot {
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.from < other.to && other.from < self.to
    }

    pub fn seconds(&self) -> i64 {
        (self.to - self.from).num_seconds()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    Audio,
    Video,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Audio => "audio",
            CallKind::Video => "video",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recurrence {
    None,
    Daily,
    Weekly,
}

impl Recurrence {
    pub fn as_str(self) -> &'static str {
        match self {
            Recurrence::None => "none",
            Recurrence::Daily => "daily",
            Recurrence::Weekly => "weekly",
        }
    }
}

/// What a schedule is; carried by both calendars' `Booked` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub senior_id: String,
    pub volunteer_id: String,
    pub chat_id: String,
    pub title: String,
    pub kind: CallKind,
    pub recurrence: Recurrence,
    /// The first occurrence; a series repeats it in the volunteer's wall-clock time.
    pub first: Slot,
    /// The volunteer's zone when booked (the series is laid out in it).
    pub zone: Zone,
}

impl Schedule {
    /// Every occurrence: one, or a series over the next `SERIES_WEEKS` weeks that keeps the
    /// volunteer's local start time across daylight saving changes.
    pub fn occurrences(&self) -> Vec<Slot> {
        let step = match self.recurrence {
            Recurrence::None => return vec![self.first],
            Recurrence::Daily => 1,
            Recurrence::Weekly => 7,
        };
        let length = self.first.to - self.first.from;
        let local_start = self.zone.local(self.first.from);
        (0..SERIES_WEEKS * 7)
            .step_by(step)
            .filter_map(|days| {
                let local = local_start.checked_add_days(Days::new(days as u64))?;
                let from = self.zone.instant(local);
                Some(Slot {
                    from,
                    to: from + length,
                })
            })
            .collect()
    }
}

/// Which side of a booking this calendar is, with the rules that side checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The volunteer: availability, `maxDuration` (seconds), daily `maxCount`.
    Host {
        max_duration_secs: Option<i64>,
        max_count: Option<u32>,
    },
    /// The senior: the balance must cover one call's price.
    Guest { balance: i64, price: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CalendarCommand {
    /// Replaces the weekly availability.
    SetWeekly { week: BTreeMap<Day, Vec<Range>> },
    /// Sets the given dates (an empty list is a day off); `today` is the owner's local date.
    SetCustom {
        days: BTreeMap<NaiveDate, Vec<Range>>,
        today: NaiveDate,
    },
    /// Books (or re-books, for an update) a schedule on this calendar.
    Book {
        schedule: Schedule,
        side: Side,
        at: DateTime<Utc>,
    },
    /// Cancels a schedule on this calendar (or compensates a booking); no-op when not live.
    Release {
        schedule_id: String,
        by: String,
        at: DateTime<Utc>,
    },
    /// A reminder of an occurrence, `lead_secs` before it starts; once per occurrence and lead.
    Remind {
        schedule_id: String,
        occurrence: DateTime<Utc>,
        lead_secs: i64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CalendarEvent {
    WeeklyAvailabilitySet {
        week: BTreeMap<Day, Vec<Range>>,
    },
    CustomAvailabilitySet {
        days: BTreeMap<NaiveDate, Vec<Range>>,
    },
    Booked {
        schedule: Schedule,
        occurrences: Vec<Slot>,
        /// `true` on the volunteer's calendar (the commit point of a booking).
        host: bool,
        /// The first booking of this schedule, or an update of it.
        update: bool,
        at: DateTime<Utc>,
    },
    Released {
        schedule_id: String,
        host: bool,
        by: String,
        at: DateTime<Utc>,
    },
    Reminded {
        schedule_id: String,
        occurrence: DateTime<Utc>,
        lead_secs: i64,
        at: DateTime<Utc>,
    },
}
domain_event!(CalendarEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("{day}: at most {MAX_RANGES_PER_DAY} ranges in a day")]
    TooManyRanges { day: String },
    #[error("{day}: {start}-{end} must start before it ends")]
    EmptyRange {
        day: String,
        start: String,
        end: String,
    },
    #[error("{day}: ranges {first} and {second} overlap")]
    OverlappingRanges {
        day: String,
        first: String,
        second: String,
    },
    #[error("{0} is in the past")]
    PastDate(NaiveDate),
    #[error("{0} is more than {MAX_DAYS_AHEAD} days ahead")]
    TooFarAhead(NaiveDate),
    #[error("the call must start in the future")]
    StartsInThePast,
    #[error("the call is longer than the volunteer's maximum of {0} seconds")]
    OverMaxDuration(i64),
    #[error("the volunteer takes at most {max} calls a day and {date} is full")]
    OverDailyLimit { date: NaiveDate, max: u32 },
    #[error("{0} is outside the volunteer's availability")]
    OutsideAvailability(String),
    #[error("the slot at {0} overlaps another call")]
    Overlaps(String),
    #[error("the call costs {price} coins and the balance is {balance}")]
    InsufficientCoins { balance: i64, price: i64 },
}

/// A schedule as this calendar holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub host: bool,
    pub occurrences: Vec<Slot>,
    pub live: bool,
}

impl Booking {
    fn ends(&self) -> Option<DateTime<Utc>> {
        self.occurrences.iter().map(|s| s.to).max()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calendar {
    pub weekly: BTreeMap<Day, Vec<Range>>,
    pub custom: BTreeMap<NaiveDate, Vec<Range>>,
    pub bookings: BTreeMap<String, Booking>,
    /// `(schedule, occurrence, lead)` reminders already sent.
    reminded: BTreeSet<(String, DateTime<Utc>, i64)>,
}

impl Calendar {
    /// The wall-clock ranges available on `date` (custom dates replace the weekly ranges).
    pub fn ranges_on(&self, date: NaiveDate) -> &[Range] {
        match self.custom.get(&date) {
            Some(ranges) => ranges,
            None => self
                .weekly
                .get(&Day::of(date))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        }
    }

    /// Is `slot` inside one available range of its local day? A slot across midnight is when
    /// its first day's range reaches midnight and its second day's starts there.
    pub fn is_available(&self, zone: &Zone, slot: &Slot) -> bool {
        let start = zone.local(slot.from);
        let end = zone.local(slot.to);
        let date = start.date();
        let start_minutes = start.time().num_seconds_from_midnight() / 60;
        // A slot ending at 11:59:30 needs the minute up to 12:00.
        let end_minutes = end.time().num_seconds_from_midnight().div_ceil(60);
        let covered = |date: NaiveDate, from: u32, to: u32| {
            self.ranges_on(date)
                .iter()
                .any(|r| u32::from(r.start) <= from && to <= u32::from(r.end))
        };
        if end.date() == date {
            covered(date, start_minutes, end_minutes)
        } else if end.date() == date + Days::new(1) {
            covered(date, start_minutes, MINUTES_PER_DAY)
                && (end.time() == NaiveTime::MIN || covered(end.date(), 0, end_minutes))
        } else {
            false
        }
    }

    fn live_slots_except<'a>(&'a self, schedule_id: &'a str) -> impl Iterator<Item = &'a Slot> {
        self.bookings
            .iter()
            .filter(move |(id, b)| b.live && id.as_str() != schedule_id)
            .flat_map(|(_, b)| b.occurrences.iter())
    }
}

fn check_day(day: &dyn fmt::Display, ranges: &mut [Range]) -> Result<(), CalendarError> {
    let day = day.to_string();
    if ranges.len() > MAX_RANGES_PER_DAY {
        return Err(CalendarError::TooManyRanges { day });
    }
    if let Some(r) = ranges.iter().find(|r| r.start >= r.end) {
        return Err(CalendarError::EmptyRange {
            day,
            start: Range::clock(r.start),
            end: Range::clock(r.end),
        });
    }
    ranges.sort();
    if let Some(pair) = ranges.windows(2).find(|w| w[0].end > w[1].start) {
        return Err(CalendarError::OverlappingRanges {
            day,
            first: format!(
                "{}-{}",
                Range::clock(pair[0].start),
                Range::clock(pair[0].end)
            ),
            second: format!(
                "{}-{}",
                Range::clock(pair[1].start),
                Range::clock(pair[1].end)
            ),
        });
    }
    Ok(())
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn decide(
    calendar: &Calendar,
    command: CalendarCommand,
) -> Result<Vec<CalendarEvent>, CalendarError> {
    Ok(match command {
        CalendarCommand::SetWeekly { mut week } => {
            for (day, ranges) in week.iter_mut() {
                check_day(day, ranges)?;
            }
            week.retain(|_, ranges| !ranges.is_empty());
            vec![CalendarEvent::WeeklyAvailabilitySet { week }]
        }
        CalendarCommand::SetCustom { mut days, today } => {
            for (date, ranges) in days.iter_mut() {
                if *date < today {
                    return Err(CalendarError::PastDate(*date));
                }
                if *date > today + Days::new(MAX_DAYS_AHEAD) {
                    return Err(CalendarError::TooFarAhead(*date));
                }
                check_day(date, ranges)?;
            }
            if days.is_empty() {
                return Ok(vec![]);
            }
            vec![CalendarEvent::CustomAvailabilitySet { days }]
        }
        CalendarCommand::Book { schedule, side, at } => {
            if schedule.first.from <= at {
                return Err(CalendarError::StartsInThePast);
            }
            let occurrences = schedule.occurrences();
            let host = matches!(side, Side::Host { .. });
            match side {
                Side::Host {
                    max_duration_secs,
                    max_count,
                } => check_host_rules(
                    calendar,
                    &schedule,
                    &occurrences,
                    max_duration_secs,
                    max_count,
                )?,
                Side::Guest { balance, price } => {
                    if balance < price {
                        return Err(CalendarError::InsufficientCoins { balance, price });
                    }
                }
            }
            let taken: Vec<&Slot> = calendar.live_slots_except(&schedule.id).collect();
            if let Some(clash) = occurrences
                .iter()
                .find(|slot| taken.iter().any(|t| t.overlaps(slot)))
            {
                return Err(CalendarError::Overlaps(iso(clash.from)));
            }
            let update = calendar.bookings.contains_key(&schedule.id);
            vec![CalendarEvent::Booked {
                schedule,
                occurrences,
                host,
                update,
                at,
            }]
        }
        CalendarCommand::Release {
            schedule_id,
            by,
            at,
        } => match calendar.bookings.get(&schedule_id) {
            Some(booking) if booking.live => vec![CalendarEvent::Released {
                schedule_id,
                host: booking.host,
                by,
                at,
            }],
            _ => vec![],
        },
        CalendarCommand::Remind {
            schedule_id,
            occurrence,
            lead_secs,
            at,
        } => {
            let due = calendar.bookings.get(&schedule_id).is_some_and(|b| {
                b.live && b.host && b.occurrences.iter().any(|s| s.from == occurrence)
            });
            let key = (schedule_id.clone(), occurrence, lead_secs);
            if !due || calendar.reminded.contains(&key) {
                vec![]
            } else {
                vec![CalendarEvent::Reminded {
                    schedule_id,
                    occurrence,
                    lead_secs,
                    at,
                }]
            }
        }
    })
}

fn check_host_rules(
    calendar: &Calendar,
    schedule: &Schedule,
    occurrences: &[Slot],
    max_duration_secs: Option<i64>,
    max_count: Option<u32>,
) -> Result<(), CalendarError> {
    if let Some(max) = max_duration_secs {
        if schedule.first.seconds() > max {
            return Err(CalendarError::OverMaxDuration(max));
        }
    }
    let zone = &schedule.zone;
    if let Some(slot) = occurrences
        .iter()
        .find(|slot| !calendar.is_available(zone, slot))
    {
        let local = zone.local(slot.from);
        return Err(CalendarError::OutsideAvailability(format!(
            "{} {} (local time)",
            local.date(),
            local.format("%H:%M")
        )));
    }
    if let Some(max) = max_count {
        let mut per_day: BTreeMap<NaiveDate, u32> = BTreeMap::new();
        for slot in calendar.live_slots_except(&schedule.id) {
            *per_day.entry(zone.local(slot.from).date()).or_default() += 1;
        }
        for slot in occurrences {
            let date = zone.local(slot.from).date();
            let count = per_day.entry(date).or_default();
            *count += 1;
            if *count > max {
                return Err(CalendarError::OverDailyLimit { date, max });
            }
        }
    }
    Ok(())
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Aggregate for Calendar {
    const TYPE: &'static str = "Calendar";
    type Command = CalendarCommand;
    type Event = CalendarEvent;
    type Error = CalendarError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in decide(self, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CalendarEvent::WeeklyAvailabilitySet { week } => self.weekly = week,
            CalendarEvent::CustomAvailabilitySet { days } => {
                for (date, ranges) in days {
                    self.custom.insert(date, ranges);
                }
            }
            CalendarEvent::Booked {
                schedule,
                occurrences,
                host,
                at,
                ..
            } => {
                // Old bookings no longer matter for any rule; keep the state small.
                let horizon = at - FORGET_AFTER;
                self.bookings
                    .retain(|_, b| b.live && b.ends().is_some_and(|end| end > horizon));
                let live: BTreeSet<&String> = self.bookings.keys().collect();
                self.reminded.retain(|(id, _, _)| live.contains(id));
                self.custom.retain(|date, _| {
                    date.and_hms_opt(0, 0, 0)
                        .is_some_and(|d| d.and_utc() > horizon - Duration::days(2))
                });
                self.bookings.insert(
                    schedule.id,
                    Booking {
                        host,
                        occurrences,
                        live: true,
                    },
                );
            }
            CalendarEvent::Released { schedule_id, .. } => {
                if let Some(booking) = self.bookings.get_mut(&schedule_id) {
                    booking.live = false;
                }
            }
            CalendarEvent::Reminded {
                schedule_id,
                occurrence,
                lead_secs,
                ..
            } => {
                self.reminded.insert((schedule_id, occurrence, lead_secs));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Calendar>;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn range(start: &str, end: &str) -> Range {
        Range::parse(start, end).expect("test range")
    }

    fn week(day: Day, ranges: Vec<Range>) -> CalendarEvent {
        CalendarEvent::WeeklyAvailabilitySet {
            week: BTreeMap::from([(day, ranges)]),
        }
    }

    fn schedule(id: &str, from: &str, to: &str, recurrence: Recurrence) -> Schedule {
        Schedule {
            id: id.into(),
            senior_id: "senior".into(),
            volunteer_id: "volunteer".into(),
            chat_id: "chat".into(),
            title: "Tea".into(),
            kind: CallKind::Audio,
            recurrence,
            first: Slot {
                from: utc(from),
                to: utc(to),
            },
            zone: Zone::Named("America/New_York".into()),
        }
    }

    fn host() -> Side {
        Side::Host {
            max_duration_secs: None,
            max_count: None,
        }
    }

    fn book(schedule: Schedule, side: Side) -> CalendarCommand {
        CalendarCommand::Book {
            schedule,
            side,
            at: utc("2026-03-01T12:00:00Z"),
        }
    }

    fn booked(schedule: Schedule, host: bool) -> CalendarEvent {
        CalendarEvent::Booked {
            occurrences: schedule.occurrences(),
            schedule,
            host,
            update: false,
            at: utc("2026-03-01T12:00:00Z"),
        }
    }

    #[test]
    fn clock_times_parse_strictly() {
        assert_eq!(
            range("09:00", "24:00"),
            Range {
                start: 540,
                end: 1440
            }
        );
        for (start, end) in [
            ("9:00", "10:00"),
            ("24:00", "24:00"),
            ("10:60", "11:00"),
            ("x", "y"),
        ] {
            assert!(Range::parse(start, end).is_err(), "{start}-{end}");
        }
        assert_eq!(Day::parse("thur"), Some(Day::Thu));
        assert_eq!(Day::parse("funday"), None);
    }

    #[test]
    fn a_day_holds_at_most_twelve_ordered_disjoint_ranges() {
        let set = |ranges: Vec<Range>| CalendarCommand::SetWeekly {
            week: BTreeMap::from([(Day::Mon, ranges)]),
        };
        Given::with(())
            .given_no_previous_events()
            .when(set(vec![range("13:00", "14:00"), range("09:00", "10:00")]))
            .then_expect_events(vec![week(
                Day::Mon,
                vec![range("09:00", "10:00"), range("13:00", "14:00")],
            )]);
        Given::with(())
            .given_no_previous_events()
            .when(set(vec![range("09:00", "10:30"), range("10:00", "11:00")]))
            .then_expect_error(CalendarError::OverlappingRanges {
                day: "mon".into(),
                first: "09:00-10:30".into(),
                second: "10:00-11:00".into(),
            });
        Given::with(())
            .given_no_previous_events()
            .when(set(vec![range("10:00", "09:00")]))
            .then_expect_error(CalendarError::EmptyRange {
                day: "mon".into(),
                start: "10:00".into(),
                end: "09:00".into(),
            });
        let thirteen = (0..13)
            .map(|h| Range {
                start: h * 60,
                end: h * 60 + 30,
            })
            .collect();
        Given::with(())
            .given_no_previous_events()
            .when(set(thirteen))
            .then_expect_error(CalendarError::TooManyRanges { day: "mon".into() });
    }

    #[test]
    fn custom_dates_are_today_or_later() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 1).expect("date");
        let days = |date: NaiveDate| CalendarCommand::SetCustom {
            days: BTreeMap::from([(date, vec![])]),
            today,
        };
        Given::with(())
            .given_no_previous_events()
            .when(days(today))
            .then_expect_events(vec![CalendarEvent::CustomAvailabilitySet {
                days: BTreeMap::from([(today, vec![])]),
            }]);
        let yesterday = today.pred_opt().expect("date");
        Given::with(())
            .given_no_previous_events()
            .when(days(yesterday))
            .then_expect_error(CalendarError::PastDate(yesterday));
    }

    #[test]
    fn weekly_hours_stay_local_across_daylight_saving() {
        // New York moves from UTC-5 to UTC-4 on 2026-03-08. Mondays 09:00-12:00 local are
        // 14:00-17:00Z before and 13:00-16:00Z after.
        let mut calendar = Calendar::default();
        calendar.apply(week(Day::Mon, vec![range("09:00", "12:00")]));
        let zone = Zone::Named("America/New_York".into());
        let slot = |from: &str, to: &str| Slot {
            from: utc(from),
            to: utc(to),
        };
        assert!(calendar.is_available(&zone, &slot("2026-03-02T14:00:00Z", "2026-03-02T17:00:00Z")));
        assert!(calendar.is_available(&zone, &slot("2026-03-09T13:00:00Z", "2026-03-09T16:00:00Z")));
        assert!(
            !calendar.is_available(&zone, &slot("2026-03-09T14:00:00Z", "2026-03-09T17:00:00Z"))
        );
        // A weekly series keeps 09:00 local: 14:00Z, then 13:00Z after the change.
        let series = schedule(
            "s",
            "2026-03-02T14:00:00Z",
            "2026-03-02T15:00:00Z",
            Recurrence::Weekly,
        );
        let starts: Vec<_> = series.occurrences().iter().map(|s| s.from).collect();
        assert_eq!(starts.len(), 8);
        assert_eq!(starts[0], utc("2026-03-02T14:00:00Z"));
        assert_eq!(starts[1], utc("2026-03-09T13:00:00Z"));
        assert_eq!(
            Schedule {
                recurrence: Recurrence::Daily,
                ..series
            }
            .occurrences()
            .len(),
            56
        );
    }

    #[test]
    fn a_slot_across_midnight_needs_both_days_open_to_midnight() {
        let zone = Zone::Named("UTC".into());
        let slot = |from: &str, to: &str| Slot {
            from: utc(from),
            to: utc(to),
        };
        // Monday 2026-03-02 23:50 to Tuesday 00:05.
        let late = slot("2026-03-02T23:50:00Z", "2026-03-03T00:05:00Z");
        let mut calendar = Calendar::default();
        calendar.apply(CalendarEvent::WeeklyAvailabilitySet {
            week: BTreeMap::from([
                (Day::Mon, vec![range("20:00", "24:00")]),
                (Day::Tue, vec![range("00:00", "01:00")]),
            ]),
        });
        assert!(calendar.is_available(&zone, &late));
        // Ending at midnight needs only the first day.
        assert!(calendar.is_available(&zone, &slot("2026-03-02T23:00:00Z", "2026-03-03T00:00:00Z")));
        // Tuesday closed until 00:05, or Monday closed before midnight: not available.
        let tuesday = NaiveDate::from_ymd_opt(2026, 3, 3).expect("date");
        let mut closed_after = calendar.clone();
        closed_after.apply(CalendarEvent::CustomAvailabilitySet {
            days: BTreeMap::from([(tuesday, vec![range("00:02", "01:00")])]),
        });
        assert!(!closed_after.is_available(&zone, &late));
        let mut closed_before = Calendar::default();
        closed_before.apply(CalendarEvent::WeeklyAvailabilitySet {
            week: BTreeMap::from([
                (Day::Mon, vec![range("20:00", "23:55")]),
                (Day::Tue, vec![range("00:00", "01:00")]),
            ]),
        });
        assert!(!closed_before.is_available(&zone, &late));
        // Longer than into the next day: never.
        let long = slot("2026-03-02T23:50:00Z", "2026-03-04T00:05:00Z");
        assert!(!calendar.is_available(&zone, &long));
    }

    #[test]
    fn a_custom_date_replaces_the_weekly_hours() {
        let mut calendar = Calendar::default();
        calendar.apply(week(Day::Mon, vec![range("09:00", "12:00")]));
        let monday = NaiveDate::from_ymd_opt(2026, 3, 2).expect("date");
        calendar.apply(CalendarEvent::CustomAvailabilitySet {
            days: BTreeMap::from([(monday, vec![])]),
        });
        assert!(calendar.ranges_on(monday).is_empty());
        assert_eq!(calendar.ranges_on(monday + Days::new(7)).len(), 1);
    }

    #[test]
    fn a_booking_lies_in_the_future_inside_the_availability_and_the_hosts_limits() {
        let open = week(Day::Mon, vec![range("09:00", "12:00")]);
        let one = schedule(
            "s1",
            "2026-03-02T14:00:00Z",
            "2026-03-02T15:00:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open.clone()])
            .when(book(one.clone(), host()))
            .then_expect_events(vec![booked(one.clone(), true)]);
        let early = schedule(
            "s1",
            "2026-03-02T13:00:00Z",
            "2026-03-02T14:30:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open.clone()])
            .when(book(early, host()))
            .then_expect_error(CalendarError::OutsideAvailability(
                "2026-03-02 08:00 (local time)".into(),
            ));
        let past = schedule(
            "s1",
            "2026-02-23T14:00:00Z",
            "2026-02-23T15:00:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open.clone()])
            .when(book(past, host()))
            .then_expect_error(CalendarError::StartsInThePast);
        Given::with(())
            .given(vec![open.clone()])
            .when(book(
                one.clone(),
                Side::Host {
                    max_duration_secs: Some(1800),
                    max_count: None,
                },
            ))
            .then_expect_error(CalendarError::OverMaxDuration(1800));
        let other = schedule(
            "s2",
            "2026-03-02T16:00:00Z",
            "2026-03-02T16:30:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open, booked(one, true)])
            .when(book(
                other,
                Side::Host {
                    max_duration_secs: None,
                    max_count: Some(1),
                },
            ))
            .then_expect_error(CalendarError::OverDailyLimit {
                date: NaiveDate::from_ymd_opt(2026, 3, 2).expect("date"),
                max: 1,
            });
    }

    #[test]
    fn live_bookings_never_overlap_and_a_series_conflict_names_its_week() {
        let open = week(Day::Mon, vec![range("00:00", "24:00")]);
        let single = schedule(
            "s1",
            "2026-04-13T13:00:00Z",
            "2026-04-13T14:00:00Z",
            Recurrence::None,
        );
        let series = schedule(
            "s2",
            "2026-03-02T14:30:00Z",
            "2026-03-02T15:00:00Z",
            Recurrence::Weekly,
        );
        // Week 7 of the series (2026-04-13 09:30 local = 13:30Z after DST) overlaps the single call.
        let clash = schedule(
            "s2",
            "2026-03-02T14:30:00Z",
            "2026-03-02T15:00:00Z",
            Recurrence::Weekly,
        )
        .occurrences()[6]
            .from;
        Given::with(())
            .given(vec![open.clone(), booked(single.clone(), true)])
            .when(book(series, host()))
            .then_expect_error(CalendarError::Overlaps(iso(clash)));
        // A guest calendar checks overlap and the balance.
        Given::with(())
            .given(vec![booked(single.clone(), false)])
            .when(book(
                schedule(
                    "s3",
                    "2026-04-13T13:59:00Z",
                    "2026-04-13T14:30:00Z",
                    Recurrence::None,
                ),
                Side::Guest {
                    balance: 1000,
                    price: 50,
                },
            ))
            .then_expect_error(CalendarError::Overlaps("2026-04-13T13:59:00Z".into()));
        Given::with(())
            .given_no_previous_events()
            .when(book(
                single.clone(),
                Side::Guest {
                    balance: 40,
                    price: 50,
                },
            ))
            .then_expect_error(CalendarError::InsufficientCoins {
                balance: 40,
                price: 50,
            });
        // Once released, the slot is free again; re-booking the same schedule is an update.
        let released = CalendarEvent::Released {
            schedule_id: "s1".into(),
            host: true,
            by: "senior".into(),
            at: utc("2026-03-01T12:00:00Z"),
        };
        let again = schedule(
            "s4",
            "2026-04-13T13:00:00Z",
            "2026-04-13T14:00:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open.clone(), booked(single.clone(), true), released])
            .when(book(again.clone(), host()))
            .then_expect_events(vec![booked(again, true)]);
        let moved = schedule(
            "s1",
            "2026-04-13T13:30:00Z",
            "2026-04-13T14:30:00Z",
            Recurrence::None,
        );
        Given::with(())
            .given(vec![open, booked(single, true)])
            .when(book(moved.clone(), host()))
            .then_expect_events(vec![CalendarEvent::Booked {
                occurrences: moved.occurrences(),
                schedule: moved,
                host: true,
                update: true,
                at: utc("2026-03-01T12:00:00Z"),
            }]);
    }

    #[test]
    fn release_and_reminders_happen_once() {
        let one = schedule(
            "s1",
            "2026-03-02T14:00:00Z",
            "2026-03-02T15:00:00Z",
            Recurrence::None,
        );
        let at = utc("2026-03-02T13:50:00Z");
        let release = CalendarCommand::Release {
            schedule_id: "s1".into(),
            by: "senior".into(),
            at,
        };
        let released = CalendarEvent::Released {
            schedule_id: "s1".into(),
            host: true,
            by: "senior".into(),
            at,
        };
        Given::with(())
            .given(vec![booked(one.clone(), true)])
            .when(release.clone())
            .then_expect_events(vec![released.clone()]);
        Given::with(())
            .given(vec![booked(one.clone(), true), released.clone()])
            .when(release)
            .then_expect_events(vec![]);
        let remind = CalendarCommand::Remind {
            schedule_id: "s1".into(),
            occurrence: one.first.from,
            lead_secs: 600,
            at,
        };
        let reminded = CalendarEvent::Reminded {
            schedule_id: "s1".into(),
            occurrence: one.first.from,
            lead_secs: 600,
            at,
        };
        Given::with(())
            .given(vec![booked(one.clone(), true)])
            .when(remind.clone())
            .then_expect_events(vec![reminded.clone()]);
        Given::with(())
            .given(vec![booked(one.clone(), true), reminded])
            .when(remind.clone())
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![booked(one, true), released])
            .when(remind)
            .then_expect_events(vec![]);
    }
}
