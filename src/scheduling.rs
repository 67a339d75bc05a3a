//! The booking saga over two Calendar aggregates, and the timers of schedules.
//!
//! A booking must hold on two calendars, the senior's and the volunteer's. Each calendar is a
//! consistency boundary of its own (optimistic concurrency on that person's stream), so no race
//! can put two live bookings of one person on top of each other. The saga:
//!
//! 1. books the senior's calendar (guest: no overlap, the balance covers one call);
//! 2. books the volunteer's calendar (host: availability, limits, no overlap): the commit point;
//! 3. if step 2 is refused, releases step 1 (compensation) and answers with step 2's reason.
//!
//! A crash between 1 and 2 leaves a guest hold without a host booking: the timer loop releases
//! such holds after a minute. Cancelling releases the host first (the schedule is cancelled from
//! then on), then the guest.

use std::time::Duration;

use actix_web::web;
use chrono::Utc;
use serde_json::json;
use talkamie_aggregates::calendar::{Calendar, CalendarCommand, CalendarError, Schedule, Side};
use talkamie_aggregates::pair::{Attachment, PairCommand};
use talkamie_projections::schedules;
use talkamie_projections::users::UserRecord;
use tokio::sync::watch;

use crate::http::connections::execute_pair;
use crate::http::envelope::ApiError;
use crate::state::AppState;
use crate::store::{system_metadata, CommandError, Metadata};

/// A guest hold this old without its host booking is a saga that stopped half-way.
const ORPHAN_AFTER: chrono::Duration = chrono::Duration::seconds(60);
/// How long an instance owns the reminders it claimed.
const REMINDER_LEASE: chrono::Duration = chrono::Duration::seconds(30);

/// How a broken calendar rule is answered.
pub fn calendar_rejected(error: CalendarError) -> ApiError {
    let message = error.to_string();
    match error {
        CalendarError::TooManyRanges { ref day }
        | CalendarError::EmptyRange { ref day, .. }
        | CalendarError::OverlappingRanges { ref day, .. } => {
            ApiError::invalid(json!({ day.as_str(): message }))
        }
        CalendarError::PastDate(date) | CalendarError::TooFarAhead(date) => ApiError {
            details: Some(json!({ date.to_string(): message.clone() })),
            ..ApiError::unprocessable("date_out_of_range", message)
        },
        CalendarError::StartsInThePast => ApiError::unprocessable("in_the_past", message),
        CalendarError::OverMaxDuration(_) => ApiError::unprocessable("over_max_duration", message),
        CalendarError::OverDailyLimit { .. } => {
            ApiError::unprocessable("over_daily_limit", message)
        }
        CalendarError::OutsideAvailability(_) | CalendarError::Overlaps(_) => {
            ApiError::conflict("slot_unavailable", message)
        }
        CalendarError::InsufficientCoins { .. } => {
            ApiError::conflict("insufficient_coins", message)
        }
    }
}

/// Runs a command on `user_id`'s calendar (availability, bookings, reminders).
pub async fn execute(
    state: &AppState,
    user_id: &str,
    command: CalendarCommand,
    metadata: Metadata,
) -> Result<(), ApiError> {
    calendar_answer(
        state
            .store
            .execute::<Calendar>(user_id, command, metadata)
            .await,
    )
}

/// `execute` for a step a later step of the same saga follows: it does not wait for the read
/// models (the last step does, and its events come after this one's).
async fn execute_step(
    state: &AppState,
    user_id: &str,
    command: CalendarCommand,
    metadata: Metadata,
) -> Result<(), ApiError> {
    calendar_answer(
        state
            .store
            .execute_step::<Calendar>(user_id, command, metadata)
            .await,
    )
}

/// A calendar command's answer: nothing on success, its refusal in the envelope.
fn calendar_answer<T>(result: Result<T, CommandError<CalendarError>>) -> Result<(), ApiError> {
    result
        .map(|_| ())
        .map_err(|e| ApiError::from_command(e, calendar_rejected))
}

/// A call's price: every started minute at the configured rate.
pub fn price(state: &AppState, seconds: i64) -> i64 {
    talkamie_aggregates::call::price(seconds, state.settings.coins.call_coins_per_minute as i64)
}

/// Books `schedule` on both calendars (or moves it, when `previous` is the booking it
/// replaces). `balance` is the senior's balance now.
pub async fn book(
    state: &AppState,
    volunteer: &UserRecord,
    schedule: &Schedule,
    previous: Option<&Schedule>,
    balance: i64,
    metadata: Metadata,
) -> Result<(), ApiError> {
    let at = state.clock.now();
    let guest = CalendarCommand::Book {
        schedule: schedule.clone(),
        side: Side::Guest {
            balance,
            price: price(state, schedule.first.seconds()),
        },
        at,
    };
    execute_step(state, &schedule.senior_id, guest, metadata.clone()).await?;
    let host = CalendarCommand::Book {
        schedule: schedule.clone(),
        side: Side::Host {
            max_duration_secs: volunteer.max_call_duration,
            max_count: volunteer.max_call_count.and_then(|n| u32::try_from(n).ok()),
        },
        at,
    };
    let Err(refused) = execute(state, &schedule.volunteer_id, host, metadata.clone()).await else {
        return Ok(());
    };
    // Compensation: give the senior's calendar back what it held before.
    let undo = match previous {
        Some(previous) => CalendarCommand::Book {
            schedule: previous.clone(),
            // Restoring a booking the senior already had; the balance was checked then.
            side: Side::Guest {
                balance: i64::MAX,
                price: 0,
            },
            at,
        },
        None => CalendarCommand::Release {
            schedule_id: schedule.id.clone(),
            by: schedule.senior_id.clone(),
            at,
        },
    };
    if let Err(error) = execute(state, &schedule.senior_id, undo, metadata).await {
        tracing::warn!(schedule = %schedule.id, error = %error.message, "compensation failed; the timer loop will retry");
    }
    Err(refused)
}

/// Cancels a schedule on both calendars: the volunteer's first (the schedule is cancelled from
/// then on), then the senior's.
pub async fn cancel(
    state: &AppState,
    schedule: &schedules::ScheduleRow,
    by: &str,
    metadata: Metadata,
) -> Result<(), ApiError> {
    let at = state.clock.now();
    let release = |owner: &str| -> (String, CalendarCommand) {
        let command = CalendarCommand::Release {
            schedule_id: schedule.id.clone(),
            by: by.to_string(),
            at,
        };
        (owner.to_string(), command)
    };
    let (volunteer, first) = release(&schedule.volunteer_id);
    execute_step(state, &volunteer, first, metadata.clone()).await?;
    let (senior, last) = release(&schedule.senior_id);
    execute(state, &senior, last, metadata).await
}

/// Posts the `schedule` message of a new booking into the pair's chat (once per schedule).
pub async fn post_schedule_message(
    state: &AppState,
    schedule: &Schedule,
    metadata: Metadata,
) -> Result<Option<String>, ApiError> {
    let message_id = uuid::Uuid::new_v4().to_string();
    let command = PairCommand::SendMessage {
        message_id: message_id.clone(),
        sender: schedule.senior_id.clone(),
        text: schedule.title.clone(),
        client_id: Some(format!("schedule:{}", schedule.id)),
        attachment: Some(Attachment::Schedule(schedule.id.clone())),
        at: Utc::now(),
    };
    let events = execute_pair(state, &schedule.chat_id, command, metadata).await?;
    Ok((!events.is_empty()).then_some(message_id))
}

/// The timer loop: sends due reminders, misses and ends calls on time (`crate::calls`), and
/// finishes sagas that stopped half-way (booking holds, call billing). Every instance runs it; claims and the aggregates make each effect happen once.
pub async fn run_timers(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.settings.timers.poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = send_due_reminders(&state).await {
            tracing::warn!(error = %error.message, "reminders failed; retrying next tick");
        }
        if let Err(error) = crate::calls::run_due(&state).await {
            tracing::warn!(error = %error.message, "call timers failed; retrying next tick");
        }
        let sweep_every = (5_000 / state.settings.timers.poll_ms).max(1);
        if rounds.is_multiple_of(sweep_every) {
            if let Err(error) = release_orphan_holds(&state).await {
                tracing::warn!(error = %error.message, "orphan sweep failed; retrying later");
            }
            if let Err(error) = crate::calls::billing::sweep(&state).await {
                tracing::warn!(error = %error.message, "billing sweep failed; retrying later");
            }
        }
        rounds += 1;
    }
}

async fn send_due_reminders(state: &AppState) -> Result<(), ApiError> {
    let now = state.clock.now();
    let due = schedules::claim_due_reminders(&state.store.db, now, REMINDER_LEASE, 100).await?;
    for (schedule_id, occurrence, lead_secs, volunteer_id) in due {
        let remind = CalendarCommand::Remind {
            schedule_id,
            occurrence,
            lead_secs,
            at: state.clock.now(),
        };
        execute(state, &volunteer_id, remind, system_metadata("reminders")).await?;
    }
    Ok(())
}

async fn release_orphan_holds(state: &AppState) -> Result<(), ApiError> {
    let before = state.clock.now() - ORPHAN_AFTER;
    for (user_id, schedule_id) in schedules::orphan_holds((&state.store.db).into(), before).await? {
        tracing::info!(%user_id, %schedule_id, "releasing a booking hold left half-way");
        let release = CalendarCommand::Release {
            schedule_id,
            by: "system".into(),
            at: state.clock.now(),
        };
        execute(state, &user_id, release, system_metadata("orphan-sweeper")).await?;
    }
    Ok(())
}

/// 404 unless `user_id` is one of the schedule's two people.
pub fn member_or_404(schedule: &schedules::ScheduleRow, user_id: &str) -> Result<(), ApiError> {
    if schedule.is_member(user_id) {
        Ok(())
    } else {
        Err(ApiError::not_found("schedule"))
    }
}
