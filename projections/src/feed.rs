//! Read model `feed`: the WebSocket push feed. One ordered row per recipient and push
//! (`position`, `user_id`, `action`, `payload`). Every instance tails it and delivers rows to
//! its local sockets; a client that reconnects with `since` gets the rows it missed.
//! Rows are kept 7 days (`prune`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use talkamie_aggregates::alert_inbox::{AlertInbox, AlertInboxEvent};
use talkamie_aggregates::calendar::CalendarEvent;
use talkamie_aggregates::call::CallEvent;
use talkamie_aggregates::pair::PairEvent;
use talkamie_aggregates::support::SupportEvent;
use talkamie_aggregates::user::{User, UserEvent};
use talkamie_aggregates::wallet::WalletEvent;

use crate::alerts::AlertRow;
use crate::chats::{self, is_pair_event};
use crate::ledger::TransactionRow;
use crate::users::UserRecord;
use crate::{
    alerts, calls, chat_views, ledger, relations, reviews, schedules, support, users, with_pool,
    with_tx, Db, DbTx, ProjectionError, StoredEvent,
};

pub const TABLES: &[&str] = &["feed"];
pub const RETENTION_DAYS: i64 = 7;
/// Push sent to the sockets of a session that has ended; they close right after it.
pub const SESSION_ENDED: &str = "session.ended";

/// One push for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    pub position: i64,
    pub user_id: String,
    pub action: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// Writes the pushes an event causes; returns how many rows it wrote.
pub async fn apply(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    if is_pair_event(event) {
        return pair_pushes(tx, out, event).await;
    }
    if ledger::is_wallet_event(event) {
        return wallet_pushes(tx, out, event).await;
    }
    if event.aggregate_type == <AlertInbox as cqrs_es::Aggregate>::TYPE {
        return inbox_pushes(tx, out, event).await;
    }
    if schedules::is_calendar_event(event) {
        return calendar_pushes(tx, out, event).await;
    }
    if calls::is_call_event(event) {
        return call_pushes(tx, out, event).await;
    }
    if reviews::is_review_event(event) {
        return review_pushes(tx, out, event).await;
    }
    if support::is_support_event(event) {
        return support_pushes(tx, out, event).await;
    }
    if event.aggregate_type != <User as cqrs_es::Aggregate>::TYPE {
        return Ok(0);
    }
    let user_id = event.aggregate_id.as_str();
    match event.decode::<UserEvent>()? {
        UserEvent::ProfileUpdated { .. }
        | UserEvent::EmailVerified { .. }
        | UserEvent::MetasReplaced { .. }
        | UserEvent::VerificationChanged { .. } => {}
        // The deleted user's pushes held their profile: purge them. `session.ended` rows hold
        // nothing personal and must still reach (and close) the user's sockets.
        UserEvent::UserDeleted { .. } => {
            // Pushes rendered earlier in this round are purged too.
            out.flush(tx).await?;
            with_tx!(tx, conn => {
                sqlx::query("DELETE FROM feed WHERE user_id = $1 AND action <> $2")
                    .bind(user_id)
                    .bind(SESSION_ENDED)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
            return Ok(0);
        }
        // Tells the sockets of that session to close (sign-out, password change, token theft).
        UserEvent::SessionEnded {
            session_id, reason, ..
        } => {
            let payload = json!({ "sessionId": session_id, "reason": reason.as_str() });
            out.add(user_id, SESSION_ENDED, &payload, event.recorded_at);
            return Ok(1);
        }
        _ => return Ok(0),
    }
    user_update(tx, out, user_id, event.recorded_at).await
}

/// The user's `extended_user` as it is at `at` (none once deleted).
async fn extended_user(
    tx: &mut DbTx,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<Value>, ProjectionError> {
    let mut many = extended_users(tx, &[(user_id.to_string(), at)]).await?;
    Ok(many.remove(user_id))
}

/// The `extended_user` of each `(user, at)` (none for a deleted user): one statement per part
/// (the users, their counters, their availability) for all of them, so a round's `user.update`
/// pushes cost the same few round trips however many users they go to.
async fn extended_users(
    tx: &mut DbTx,
    wanted: &[(String, DateTime<Utc>)],
) -> Result<HashMap<String, Value>, ProjectionError> {
    let ids: Vec<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
    let found = users::find_many(tx.into(), &ids).await?;
    let live: Vec<(&UserRecord, DateTime<Utc>)> = wanted
        .iter()
        .filter_map(|(id, at)| found.get(id).map(|user| (user, *at)))
        .filter(|(user, _)| !user.is_deleted())
        .collect();
    let days: Vec<(String, DateTime<Utc>)> = live
        .iter()
        .map(|(user, at)| (user.id.clone(), user.day_start(*at)))
        .collect();
    let counters = relations::counters_of_many(tx.into(), &days).await?;
    let mut availability = schedules::availability_of_many(tx.into(), &live).await?;
    Ok(live
        .iter()
        .map(|(user, _)| {
            let counters = counters.get(&user.id).cloned().unwrap_or_default();
            // Pushes go to a connected socket of the user, so `online` is true from their side.
            let mut rendered = user.extended(true, &counters);
            rendered["availability"] = availability.remove(&user.id).unwrap_or(Value::Null);
            (user.id.clone(), rendered)
        })
        .collect())
}

/// `user.update` with the user's `extended_user`, rendered when the round's pushes are
/// written (see [`Pushes`]).
async fn user_update(
    _tx: &mut DbTx,
    out: &mut Pushes,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<usize, ProjectionError> {
    out.add_user_update(user_id, at);
    Ok(1)
}

/// `basic_chat` of `chat_id` as member `user_id` sees it now, if they are a member.
async fn render_chat(
    tx: &mut DbTx,
    chat_id: &str,
    user_id: &str,
) -> Result<Option<Value>, ProjectionError> {
    let Some(view) = chats::find_for_member(tx.into(), chat_id, user_id).await? else {
        return Ok(None);
    };
    let online = chat_views::online(tx.into(), &view.other_id).await?;
    Ok(Some(
        chat_views::basic_chat(tx.into(), &view, online).await?,
    ))
}

/// `chat.update` with the chat as `user_id` sees it.
async fn chat_update(
    tx: &mut DbTx,
    out: &mut Pushes,
    chat_id: &str,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<usize, ProjectionError> {
    let Some(chat) = render_chat(tx, chat_id, user_id).await? else {
        return Ok(0);
    };
    out.add(user_id, "chat.update", &json!({ "chat": chat }), at);
    Ok(1)
}

/// `chats.update` for one chat of `user_id`, with the user's unread chat count.
async fn chats_update(
    tx: &mut DbTx,
    out: &mut Pushes,
    chat_id: &str,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<usize, ProjectionError> {
    let Some(chat) = render_chat(tx, chat_id, user_id).await? else {
        return Ok(0);
    };
    let unread_chats = chats::total_unread_chats(tx.into(), user_id).await?;
    let payload = json!({
        "chatsMap": { chat_id: chat },
        "viewer": {"id": user_id, "totalUnreadChats": unread_chats},
    });
    out.add(user_id, "chats.update", &payload, at);
    Ok(1)
}

/// `chat.message.new` of one message, for one member (the recipient, or the sender's other
/// sockets), with that member's unread counts.
async fn message_new(
    tx: &mut DbTx,
    out: &mut Pushes,
    chat_id: &str,
    message_id: &str,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<usize, ProjectionError> {
    let (Some(message), Some(view)) = (
        chats::message(tx.into(), message_id).await?,
        chats::find_for_member(tx.into(), chat_id, user_id).await?,
    ) else {
        return Ok(0);
    };
    let unread_chats = chats::total_unread_chats(tx.into(), user_id).await?;
    let payload = json!({
        "chat": {"id": chat_id, "totalUnreadMessages": view.unread_count},
        "message": message.to_json(),
        "viewer": {"id": user_id, "totalUnreadChats": unread_chats},
    });
    out.add(user_id, "chat.message.new", &payload, at);
    Ok(1)
}

/// The pushes of a sent message: `chat.message.new` to every member (the recipient, and the
/// sender's other sockets) and `chats.update` to the recipients. The most frequent event: the
/// message, the members' views and unread totals are read once for all of them (the projector
/// applies events one at a time, so each read is a round trip on its serial path).
async fn message_sent_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    chat_id: &str,
    message_id: &str,
    sender: &str,
    at: DateTime<Utc>,
) -> Result<usize, ProjectionError> {
    let Some(message) = chats::message(tx.into(), message_id).await? else {
        return Ok(0);
    };
    let views = chats::views_of_chat(tx.into(), chat_id).await?;
    let members: Vec<String> = views.iter().map(|v| v.user_id.clone()).collect();
    let unread_chats = chats::total_unread_chats_of(tx.into(), &members).await?;
    let mut written = 0;
    for view in &views {
        let viewer = json!({
            "id": view.user_id,
            "totalUnreadChats": unread_chats.get(&view.user_id).copied().unwrap_or(0),
        });
        let payload = json!({
            "chat": {"id": chat_id, "totalUnreadMessages": view.unread_count},
            "message": message.to_json(),
            "viewer": viewer,
        });
        out.add(&view.user_id, "chat.message.new", &payload, at);
        written += 1;
        if view.user_id != sender {
            let online = chat_views::online(tx.into(), &view.other_id).await?;
            let chat =
                chat_views::basic_chat_knowing(tx.into(), view, online, Some(&message)).await?;
            let payload = json!({ "chatsMap": { chat_id: chat }, "viewer": viewer });
            out.add(&view.user_id, "chats.update", &payload, at);
            written += 1;
        }
    }
    Ok(written)
}

/// `alert.new` / `alert.update` for the alerts the event created or changed.
async fn alert_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let mut written = 0;
    let changed = match out.noted_alerts(event.position) {
        Some(rows) => rows,
        None => alerts::changed_at(tx.into(), event.position).await?,
    };
    for alert in changed {
        let action = if alert.created_position == event.position {
            "alert.new"
        } else {
            "alert.update"
        };
        let payload = json!({ "alert": alert.to_json() });
        out.add(&alert.user_id, action, &payload, event.recorded_at);
        written += 1;
    }
    Ok(written)
}

/// `basic_user` of `other` as `viewer` sees them in a push (`{id}` once they are gone).
async fn basic_user_for(
    tx: &mut DbTx,
    viewer: &str,
    other: &str,
) -> Result<Value, ProjectionError> {
    Ok(match users::find_by_id_tx(tx, other).await? {
        Some(user) => user.basic(&crate::profiles::Reader::user(viewer, false), false),
        None => json!({ "id": other }),
    })
}

/// The pushes of a Calendar event: schedule alerts, the volunteer's `user.update` when their
/// availability or booked slots changed, and `schedule.upcoming` to both sides of a reminder.
async fn calendar_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let mut written = alert_pushes(tx, out, event).await?;
    let at = event.recorded_at;
    match event.decode::<CalendarEvent>()? {
        CalendarEvent::Reminded {
            schedule_id,
            occurrence,
            at: now,
            ..
        } => {
            // `now` is the server's clock when the reminder was due (tests move it forward).
            let Some(schedule) = schedules::find(tx.into(), &schedule_id, now).await? else {
                return Ok(written);
            };
            let starts_in = (occurrence - now).num_seconds().max(0);
            for (viewer, other) in [
                (&schedule.senior_id, &schedule.volunteer_id),
                (&schedule.volunteer_id, &schedule.senior_id),
            ] {
                let attendee = basic_user_for(tx, viewer, other).await?;
                let payload = json!({
                    "schedule": schedule.to_json(now, attendee),
                    "startsInSeconds": starts_in,
                });
                out.add(viewer, "schedule.upcoming", &payload, at);
                written += 1;
            }
        }
        CalendarEvent::WeeklyAvailabilitySet { .. }
        | CalendarEvent::CustomAvailabilitySet { .. }
        | CalendarEvent::Booked { host: true, .. }
        | CalendarEvent::Released { host: true, .. } => {
            written += user_update(tx, out, &event.aggregate_id, at).await?;
        }
        _ => {}
    }
    Ok(written)
}

/// The pushes of a Call event: `call.incoming` to the callee's sockets, the answer (accepted,
/// rejected, missed) to both sides, and `call.ended` with each side's updated user once the call
/// is billed (so `me` shows the new balance), plus `user.coins.low` when the senior's balance
/// fell below the threshold.
async fn call_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let at = event.recorded_at;
    let change = event.decode::<CallEvent>()?;
    let Some(call) = calls::find(tx.into(), &event.aggregate_id).await? else {
        return Ok(0);
    };
    let callee_only = [call.callee_id.clone()];
    let both = [call.caller_id.clone(), call.callee_id.clone()];
    // A call with a price says `call.ended` once billed (so `me` shows the new balance); a free
    // one (cancelled while ringing, free rate) at once.
    let priced = call.price_coins > 0;
    let (action, recipients) = match change {
        CallEvent::Started { .. } => ("call.incoming", &callee_only[..]),
        CallEvent::Accepted { .. } => ("call.accepted", &both[..]),
        CallEvent::Rejected { .. } => ("call.rejected", &both[..]),
        CallEvent::Missed { .. } => ("call.missed", &both[..]),
        CallEvent::Ended { .. } if !priced => ("call.ended", &both[..]),
        CallEvent::Billed { .. } if priced => ("call.ended", &both[..]),
        CallEvent::Ended { .. } | CallEvent::Billed { .. } => ("", &both[..0]),
    };
    let mut written = 0;
    for viewer in recipients {
        let other = call.other_side(viewer);
        let user = basic_user_for(tx, viewer, other).await?;
        let mut payload = json!({
            "call": call.to_json(viewer, user),
            "chat": {"id": call.chat_id},
        });
        if action == "call.ended" {
            payload["me"] = extended_user(tx, viewer, at).await?.unwrap_or(Value::Null);
        }
        out.add(viewer, action, &payload, at);
        written += 1;
    }
    if change.crossed_low_balance() {
        if let CallEvent::Billed {
            balance_after,
            low_balance_coins,
            ..
        } = change
        {
            let payload = json!({ "balance": balance_after, "lowBalanceCoins": low_balance_coins });
            out.add(&call.caller_id, "user.coins.low", &payload, at);
            written += 1;
        }
    }
    Ok(written)
}

/// The pushes of a Review event: the ratee's `review` alert and their `user.update` (the
/// rating and the alert count changed).
async fn review_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let mut written = alert_pushes(tx, out, event).await?;
    // The stream id is `rater:ratee` (the review row is gone after a delete).
    if let Some((_, ratee)) = event.aggregate_id.split_once(':') {
        written += user_update(tx, out, ratee, event.recorded_at).await?;
    }
    Ok(written)
}

/// The pushes of a SupportDesk event: messages and receipts to the ticket's user and to every
/// admin (any of them may answer), and the user's `user.update` when their open ticket changed.
async fn support_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let at = event.recorded_at;
    let owner = event.aggregate_id.as_str();
    let (action, ticket_id, payload) = match event.decode::<SupportEvent>()? {
        SupportEvent::TicketOpened { .. } | SupportEvent::TicketClosed { .. } => {
            return user_update(tx, out, owner, at).await;
        }
        SupportEvent::SupportMessagePosted {
            ticket_id,
            message_id,
            ..
        } => {
            let Some(message) = support::message(tx.into(), &message_id).await? else {
                return Ok(0);
            };
            let payload = json!({ "ticket": {"id": ticket_id}, "message": message.to_json() });
            ("support.message.new", ticket_id, payload)
        }
        SupportEvent::SupportMessagesDelivered { ticket_id, .. }
        | SupportEvent::SupportMessagesRead { ticket_id, .. } => {
            let changed = support::receipts_at(tx.into(), &ticket_id, event.position).await?;
            if changed.is_empty() {
                return Ok(0);
            }
            let map: serde_json::Map<String, Value> = changed
                .iter()
                .map(|m| (m.id.clone(), m.to_json()["delivery"].clone()))
                .collect();
            let payload = json!({ "ticket": {"id": ticket_id}, "messagesMap": map });
            ("support.messages.update", ticket_id, payload)
        }
    };
    let mut recipients = vec![owner.to_string()];
    recipients.extend(support::staff(tx.into()).await?);
    recipients.dedup();
    tracing::debug!(
        ticket_id,
        action,
        recipients = recipients.len(),
        "support push"
    );
    for user in &recipients {
        out.add(user, action, &payload, at);
    }
    Ok(recipients.len())
}

/// The pushes of a Wallet event: `transaction` alerts, then the owner's `user.update` when the
/// balance or the alert count changed.
async fn wallet_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let alerts = alert_pushes(tx, out, event).await?;
    let balance_changed = matches!(event.decode::<WalletEvent>()?, WalletEvent::Posted(_));
    if alerts == 0 && !balance_changed {
        return Ok(0);
    }
    Ok(alerts + user_update(tx, out, &event.aggregate_id, event.recorded_at).await?)
}

/// The pushes of a Pair event: alerts it created or changed, then the chat traffic.
async fn pair_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let at = event.recorded_at;
    let chat_id = event.aggregate_id.as_str();
    let decoded = event.decode::<PairEvent>()?;
    let mut written = if alerts::pair_event_writes_alerts(&decoded) {
        alert_pushes(tx, out, event).await?
    } else {
        0
    };
    if let PairEvent::MessageSent {
        message_id, sender, ..
    } = &decoded
    {
        return Ok(written + message_sent_pushes(tx, out, chat_id, message_id, sender, at).await?);
    }
    let members = chats::members(tx.into(), chat_id).await?;
    match decoded {
        PairEvent::ConnectionRequested { from, to, .. } => {
            written += user_update(tx, out, &to, at).await?;
            written += user_update(tx, out, &from, at).await?;
        }
        PairEvent::ConnectionRequestCanceled { request_id, .. }
        | PairEvent::ConnectionRequestRejected { request_id, .. }
        | PairEvent::ConnectionAccepted { request_id, .. } => {
            if let Some(request) = chats::connect_request(tx.into(), &request_id).await? {
                written += user_update(tx, out, &request.to_id, at).await?;
                written += user_update(tx, out, &request.from_id, at).await?;
            }
        }
        PairEvent::ChatOpened { members, .. } => {
            for member in &members {
                written += chat_update(tx, out, chat_id, member, at).await?;
            }
        }
        PairEvent::Disconnected { .. } => {
            for member in &members {
                written += chat_update(tx, out, chat_id, member, at).await?;
                written += user_update(tx, out, member, at).await?;
            }
        }
        PairEvent::MessageRequested {
            message_id,
            from,
            to,
            ..
        } => {
            written += message_new(tx, out, chat_id, &message_id, &to, at).await?;
            written += message_new(tx, out, chat_id, &message_id, &from, at).await?;
            written += chats_update(tx, out, chat_id, &to, at).await?;
            written += user_update(tx, out, &to, at).await?;
        }
        PairEvent::MessageRequestCanceled { .. }
        | PairEvent::MessageRequestRejected { .. }
        | PairEvent::MessageRequestAccepted { .. } => {
            for member in &members {
                written += chat_update(tx, out, chat_id, member, at).await?;
                written += user_update(tx, out, member, at).await?;
            }
        }
        PairEvent::MessageSent { .. } => {}
        PairEvent::MessagesDelivered { member, .. } | PairEvent::MessagesRead { member, .. } => {
            let changed = chats::receipts_at(tx.into(), chat_id, event.position).await?;
            if !changed.is_empty() {
                let map: serde_json::Map<String, Value> = changed
                    .iter()
                    .map(|m| {
                        let delivery = json!({"status": m.delivery_status, "at": relations::iso(m.delivery_at)});
                        (m.id.clone(), delivery)
                    })
                    .collect();
                let payload = json!({ "chat": {"id": chat_id}, "messagesMap": map });
                for user in &members {
                    out.add(user, "chat.messages.update", &payload, at);
                    written += 1;
                }
            }
            written += chats_update(tx, out, chat_id, &member, at).await?;
        }
    }
    Ok(written)
}

/// Alerts read on one socket: every socket of the user learns it.
async fn inbox_pushes(
    tx: &mut DbTx,
    out: &mut Pushes,
    event: &StoredEvent,
) -> Result<usize, ProjectionError> {
    let AlertInboxEvent::AlertsRead { alert_ids, .. } = event.decode()?;
    let user_id = event.aggregate_id.as_str();
    let unread = alerts::total_unread(tx.into(), user_id).await?;
    let map: serde_json::Map<String, Value> = alert_ids
        .into_iter()
        .map(|id| (id, json!({"status": "read"})))
        .collect();
    let payload = json!({
        "alertsMap": map,
        "viewer": {"id": user_id, "totalUnreadAlerts": unread},
    });
    out.add(user_id, "alerts.update", &payload, event.recorded_at);
    Ok(1)
}

/// A push of this round, not yet written.
#[derive(Debug, Clone)]
struct NewPush {
    user_id: String,
    action: String,
    /// `None`: a `user.update`, rendered when the round's pushes are written.
    payload: Option<Value>,
    at: DateTime<Utc>,
}

/// Rows per INSERT (4 parameters each: well under both stores' parameter limits).
const ROWS_PER_INSERT: usize = 1000;

/// The pushes a projector round renders, written together before it commits (one multi-row
/// INSERT instead of a round trip per push on the projector's serial path). Rows keep the
/// order they were added in, so feed positions follow the log.
///
/// `user.update` carries the whole `extended_user` as it is now, so one that a later one of
/// the same round replaces tells nothing: a round renders each user's `user.update` once,
/// from the state the round leaves, at the place of the last one (a busy volunteer's
/// bookings and a wallet's postings cost one render a round instead of one an event).
#[derive(Debug, Default)]
pub struct Pushes {
    pending: Vec<NewPush>,
    /// The alerts the event being applied created or changed, noted by the alerts projection
    /// (applied just before the feed) so the feed need not read them back.
    noted_alerts: Noted<AlertRow>,
    /// The transactions the event being applied created or changed, noted by the ledger
    /// projection so the alerts projection need not read them back.
    noted_transactions: Noted<TransactionRow>,
}

/// Rows one projection wrote for the event at a position, handed to a projection applied
/// after it to the same event.
#[derive(Debug)]
struct Noted<T>(Option<(i64, Vec<T>)>);

impl<T> Default for Noted<T> {
    fn default() -> Self {
        Noted(None)
    }
}

impl<T> Noted<T> {
    fn note(&mut self, position: i64, rows: Vec<T>) {
        self.0 = Some((position, rows));
    }

    /// The rows noted for the event at `position`; `None` when the noting projection did not
    /// apply that event in this round (it was already past it), so they must be read.
    fn take(&mut self, position: i64) -> Option<Vec<T>> {
        match self.0.take() {
            Some((at, rows)) if at == position => Some(rows),
            _ => None,
        }
    }
}

impl Pushes {
    pub fn add(&mut self, user_id: &str, action: &str, payload: &Value, at: DateTime<Utc>) {
        self.pending.push(NewPush {
            user_id: user_id.to_string(),
            action: action.to_string(),
            payload: Some(payload.clone()),
            at,
        });
    }

    /// Notes the alerts that the event at `position` created or changed.
    pub fn note_alerts(&mut self, position: i64, rows: Vec<AlertRow>) {
        self.noted_alerts.note(position, rows);
    }

    /// The alerts noted for the event at `position` (`None`: they must be read).
    fn noted_alerts(&mut self, position: i64) -> Option<Vec<AlertRow>> {
        self.noted_alerts.take(position)
    }

    /// Notes the transactions that the event at `position` created or changed.
    pub fn note_transactions(&mut self, position: i64, rows: Vec<TransactionRow>) {
        self.noted_transactions.note(position, rows);
    }

    /// The transactions noted for the event at `position` (`None`: they must be read).
    pub fn noted_transactions(&mut self, position: i64) -> Option<Vec<TransactionRow>> {
        self.noted_transactions.take(position)
    }

    /// A `user.update` for `user_id`, rendered when the pushes are written.
    pub fn add_user_update(&mut self, user_id: &str, at: DateTime<Utc>) {
        self.pending.push(NewPush {
            user_id: user_id.to_string(),
            action: "user.update".to_string(),
            payload: None,
            at,
        });
    }

    /// Renders the pending `user.update`s and writes the pending pushes into `tx`.
    pub async fn flush(&mut self, tx: &mut DbTx) -> Result<(), ProjectionError> {
        let rows = self.render(tx).await?;
        write_pushes(tx, &rows).await
    }

    /// Renders the pending `user.update`s (all of them together) and returns the pushes to
    /// write, in order.
    pub async fn render(&mut self, tx: &mut DbTx) -> Result<Vec<ReadyPush>, ProjectionError> {
        let pending = std::mem::take(&mut self.pending);
        let last_update: HashMap<String, usize> = pending
            .iter()
            .enumerate()
            .filter(|(_, push)| push.payload.is_none())
            .map(|(i, push)| (push.user_id.clone(), i))
            .collect();
        let wanted: Vec<(String, DateTime<Utc>)> = last_update
            .iter()
            .map(|(user_id, &i)| (user_id.clone(), pending[i].at))
            .collect();
        let mut rendered = extended_users(tx, &wanted).await?;
        let mut rows: Vec<ReadyPush> = Vec::with_capacity(pending.len());
        for (i, push) in pending.into_iter().enumerate() {
            let payload = match push.payload {
                Some(payload) => payload,
                None => {
                    if last_update.get(push.user_id.as_str()) != Some(&i) {
                        continue;
                    }
                    let Some(user) = rendered.remove(&push.user_id) else {
                        continue;
                    };
                    json!({ "user": user })
                }
            };
            rows.push(ReadyPush {
                user_id: push.user_id,
                action: push.action,
                payload,
                at: push.at,
            });
        }
        Ok(rows)
    }
}

/// A push with its payload rendered, ready to be written.
#[derive(Debug, Clone)]
pub struct ReadyPush {
    pub user_id: String,
    pub action: String,
    pub payload: Value,
    pub at: DateTime<Utc>,
}

/// Writes `rows` in order, a multi-row INSERT per `ROWS_PER_INSERT`.
pub async fn write_pushes(tx: &mut DbTx, rows: &[ReadyPush]) -> Result<(), ProjectionError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, ${}, ${}, ${})",
                    4 * i + 1,
                    4 * i + 2,
                    4 * i + 3,
                    4 * i + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO feed (user_id, action, payload, created_at) VALUES {}",
            values.join(", ")
        );
        with_tx!(tx, conn => {
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(&row.user_id)
                    .bind(&row.action)
                    .bind(Json(&row.payload))
                    .bind(row.at);
            }
            query.execute(conn).await.map(|r| r.rows_affected())?
        });
    }
    Ok(())
}

/// Writes one push at once (a relayed call signal, outside any round).
pub(crate) async fn push(
    tx: &mut DbTx,
    user_id: &str,
    action: &str,
    payload: &Value,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let mut pushes = Pushes::default();
    pushes.add(user_id, action, payload, at);
    pushes.flush(tx).await
}

type RawRow = (i64, String, String, Json<Value>, DateTime<Utc>);

fn to_rows(raw: Vec<RawRow>) -> Vec<FeedRow> {
    raw.into_iter()
        .map(|(position, user_id, action, payload, created_at)| FeedRow {
            position,
            user_id,
            action,
            payload: payload.0,
            created_at,
        })
        .collect()
}

/// Rows of every user after `after` (the instance tailer).
pub async fn read_after(db: &Db, after: i64, limit: i64) -> Result<Vec<FeedRow>, sqlx::Error> {
    let sql = "SELECT position, user_id, action, payload, created_at FROM feed
                WHERE position > $1 ORDER BY position LIMIT $2";
    let raw: Vec<RawRow> = with_pool!(db, pool => {
        sqlx::query_as(sql).bind(after).bind(limit).fetch_all(pool).await?
    });
    Ok(to_rows(raw))
}

/// A feed row whose payload is kept as the JSON text it was stored as (the instance tailer
/// splices it into push frames without parsing it into a tree and printing it again).
#[derive(Debug)]
pub struct RawFeedRow {
    pub position: i64,
    pub user_id: String,
    pub action: String,
    pub payload: Box<serde_json::value::RawValue>,
}

/// Rows of every user after `after`, payloads as JSON text (the instance tailer).
pub async fn read_raw_after(
    db: &Db,
    after: i64,
    limit: i64,
) -> Result<Vec<RawFeedRow>, sqlx::Error> {
    let sql = "SELECT position, user_id, action, payload FROM feed
                WHERE position > $1 ORDER BY position LIMIT $2";
    type Raw = (i64, String, String, Json<Box<serde_json::value::RawValue>>);
    let raw: Vec<Raw> = with_pool!(db, pool => {
        sqlx::query_as(sql).bind(after).bind(limit).fetch_all(pool).await?
    });
    Ok(raw
        .into_iter()
        .map(|(position, user_id, action, payload)| RawFeedRow {
            position,
            user_id,
            action,
            payload: payload.0,
        })
        .collect())
}

/// Rows of every user after `after`, inside a transaction (the push dispatcher's claim).
pub async fn read_after_tx(
    tx: &mut DbTx,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    let sql = "SELECT position, user_id, action, payload, created_at FROM feed
                WHERE position > $1 ORDER BY position LIMIT $2";
    let raw: Vec<RawRow> = with_tx!(tx, conn => {
        sqlx::query_as(sql).bind(after).bind(limit).fetch_all(conn).await?
    });
    Ok(to_rows(raw))
}

/// Rows of one user after `after` (replay on reconnect with `since`).
pub async fn read_user_after(
    db: &Db,
    user_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    let sql = "SELECT position, user_id, action, payload, created_at FROM feed
                WHERE user_id = $1 AND position > $2 ORDER BY position LIMIT $3";
    let raw: Vec<RawRow> = with_pool!(db, pool => {
        sqlx::query_as(sql).bind(user_id).bind(after).bind(limit).fetch_all(pool).await?
    });
    Ok(to_rows(raw))
}

pub async fn last_position(db: &Db) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COALESCE(MAX(position), 0) FROM feed";
    with_pool!(db, pool => sqlx::query_scalar(sql).fetch_one(pool).await)
}

/// Deletes pushes older than the retention window.
pub async fn prune(db: &Db, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::days(RETENTION_DAYS);
    let sql = "DELETE FROM feed WHERE created_at < $1";
    with_pool!(db, pool => sqlx::query(sql).bind(cutoff).execute(pool).await.map(|r| r.rows_affected()))
}
