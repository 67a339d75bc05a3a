//! Push notifications (section 10): the dispatcher reads the push feed after its cursor and,
//! for the pushes worth a notification (a new message from someone else, an incoming call, a
//! schedule reminder, a new alert, a support reply), sends one to each device of a recipient
//! who has push enabled and no open socket on any instance. A token the provider calls dead
//! is dropped from the user's devices.
//!
//! Instances share one cursor (`push_cursor`): each round claims a batch of the feed by moving
//! the cursor in a short transaction, then sends. A crash between the two loses that batch's
//! notifications rather than sending them twice (notifications are best effort; the feed,
//! which the apps read on reconnect, is the record).

use std::time::Duration;

use actix_web::web;
use chrono::Utc;
use serde_json::{json, Value};
use talkamie_aggregates::devices::{DevicesCommand, PushDevices};
use talkamie_projections::feed::FeedRow;
use talkamie_projections::users::{self, UserRecord};
use talkamie_projections::{with_pool, with_tx, Db, DbTx};
use tokio::sync::watch;

use crate::providers::push::{Delivery, Device, PushMessage};
use crate::state::AppState;
use crate::store::system_metadata;

/// Feed rows one round claims at most.
const BATCH: i64 = 200;
/// Shortest time between two dispatch rounds.
const PACE: Duration = Duration::from_millis(100);
/// Fallback poll: picks up feed rows other instances wrote.
const POLL: Duration = Duration::from_millis(500);
/// Longest notification body, in characters (the rest is cut with `…`).
const BODY_CHARS: usize = 180;
/// A push older than this when claimed (after downtime or a backlog) is no news any more.
const STALE_AFTER: chrono::Duration = chrono::Duration::minutes(10);
/// An incoming call is news only while it may still ring.
const STALE_CALL_AFTER: chrono::Duration = chrono::Duration::seconds(60);

pub async fn run_dispatcher(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let started = tokio::time::Instant::now();
        match dispatch_round(&state).await {
            // A full batch: more may be waiting.
            Ok(claimed) if claimed as i64 >= BATCH => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "push dispatch failed; retrying"),
        }
        tokio::select! {
            _ = state.store.projector.push_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        // At most one round per `PACE` when busy: every projector round wakes the dispatcher,
        // and a notification to a phone gains nothing from a few milliseconds.
        tokio::select! {
            _ = tokio::time::sleep_until(started + PACE) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Claims the next batch of the feed and sends its notifications; returns the rows claimed.
async fn dispatch_round(state: &AppState) -> anyhow::Result<usize> {
    let rows = claim_batch(&state.store.db).await?;
    // Most recipients have no device: one query for the batch spares them two lookups a row.
    let recipients: Vec<String> = rows
        .iter()
        .filter(|row| NOTIFYING.contains(&row.action.as_str()))
        .map(|row| row.user_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let with_devices = users::with_push_devices(&state.store.db, &recipients).await?;
    for row in rows
        .iter()
        .filter(|row| with_devices.contains(&row.user_id))
    {
        if let Err(error) = notify(state, row).await {
            tracing::warn!(%error, position = row.position, "push notification not sent");
        }
    }
    Ok(rows.len())
}

/// Moves the shared cursor past the next batch and returns that batch.
async fn claim_batch(db: &Db) -> Result<Vec<FeedRow>, sqlx::Error> {
    // A plain read first: an idle feed never takes the write lock (SQLite has one writer).
    let (cursor, end): (i64, i64) = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT (SELECT position FROM push_cursor WHERE id = 1),
                    (SELECT COALESCE(MAX(position), 0) FROM feed)",
        )
        .fetch_one(pool)
        .await?
    });
    if end <= cursor {
        return Ok(vec![]);
    }
    let mut tx = db.begin_write().await?;
    let cursor_sql = match &tx {
        // SQLite's write transaction (BEGIN IMMEDIATE) already excludes other writers.
        DbTx::Sqlite(_) => "SELECT position FROM push_cursor WHERE id = 1",
        DbTx::Postgres(_) => "SELECT position FROM push_cursor WHERE id = 1 FOR UPDATE",
    };
    let cursor: i64 = with_tx!(&mut tx, conn => {
        sqlx::query_scalar(cursor_sql).fetch_one(conn).await?
    });
    let rows = talkamie_projections::feed::read_after_tx(&mut tx, cursor, BATCH).await?;
    if let Some(last) = rows.last() {
        with_tx!(&mut tx, conn => {
            sqlx::query("UPDATE push_cursor SET position = $1 WHERE id = 1")
                .bind(last.position)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
        });
    }
    tx.commit().await?;
    Ok(rows)
}

/// The pushes that may deserve a notification (`notification` decides for each recipient).
const NOTIFYING: [&str; 5] = [
    "chat.message.new",
    "call.incoming",
    "schedule.upcoming",
    "alert.new",
    "support.message.new",
];

/// Sends `row`'s notification, if it deserves one and its recipient is away.
async fn notify(state: &AppState, row: &FeedRow) -> anyhow::Result<()> {
    // Most pushes (user.update, chats.update, receipts, ...) are never news: no lookups.
    if !NOTIFYING.contains(&row.action.as_str()) {
        return Ok(());
    }
    let Some(user) = users::find_by_id(&state.store.db, &row.user_id).await? else {
        return Ok(());
    };
    if user.is_deleted() || !user.push_enabled {
        return Ok(());
    }
    let age = Utc::now() - row.created_at;
    let limit = if row.action == "call.incoming" {
        STALE_CALL_AFTER
    } else {
        STALE_AFTER
    };
    if age > limit {
        return Ok(());
    }
    let Some(message) = notification(&user, row) else {
        return Ok(());
    };
    let online = state
        .hub
        .online_checked(&state.store.db, std::slice::from_ref(&user.id))
        .await?;
    if online.contains(&user.id) {
        return Ok(());
    }
    for (token_hash, token, platform) in users::push_devices(&state.store.db, &user.id).await? {
        let device = Device { token, platform };
        match state.push.send(&user.id, &device, &message).await {
            Ok(Delivery::Sent) => {}
            Ok(Delivery::InvalidToken) => drop_device(state, &user.id, token_hash).await,
            Err(error) => tracing::warn!(%error, user_id = %user.id, "push provider failed"),
        }
    }
    Ok(())
}

async fn drop_device(state: &AppState, user_id: &str, token_hash: String) {
    let command = DevicesCommand::Drop {
        token_hash,
        at: Utc::now(),
    };
    let result = state
        .store
        .execute::<PushDevices>(user_id, command, system_metadata("push"))
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, user_id, "could not drop a dead push token");
    }
}

fn cut(text: &str) -> String {
    if text.chars().count() <= BODY_CHARS {
        return text.to_string();
    }
    let mut out: String = text.chars().take(BODY_CHARS - 1).collect();
    out.push('…');
    out
}

fn name_at(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("Someone")
        .to_string()
}

/// The notification a push deserves for `user`, if any: `{action, title, body, data}`.
pub fn notification(user: &UserRecord, row: &FeedRow) -> Option<PushMessage> {
    let p = &row.payload;
    let (title, body, data) = match row.action.as_str() {
        "chat.message.new" => {
            // My own sends reach my other sockets too; they are no news to me. A message
            // request comes with its `message-request` alert, which says it once.
            if p.pointer("/message/sender/id").and_then(Value::as_str) == Some(user.id.as_str())
                || p.pointer("/message/isRequest") == Some(&Value::Bool(true))
            {
                return None;
            }
            let text = p.pointer("/message/text").and_then(Value::as_str)?;
            (
                name_at(p, "/message/sender/name"),
                cut(text),
                json!({ "chatId": p.pointer("/chat/id"), "messageId": p.pointer("/message/id") }),
            )
        }
        "call.incoming" => {
            let kind = p
                .pointer("/call/type")
                .and_then(Value::as_str)
                .unwrap_or("audio");
            (
                format!("Incoming {kind} call"),
                format!("{} is calling you", name_at(p, "/call/user/name")),
                json!({ "callId": p.pointer("/call/id"), "chatId": p.pointer("/chat/id") }),
            )
        }
        "schedule.upcoming" => {
            let minutes = (p["startsInSeconds"].as_i64().unwrap_or(0) + 59) / 60;
            let title = if minutes > 0 {
                format!("Your call starts in {minutes} min")
            } else {
                "Your call is starting".to_string()
            };
            let what = p
                .pointer("/schedule/title")
                .and_then(Value::as_str)
                .unwrap_or("Call");
            let with = name_at(p, "/schedule/attendee/name");
            (
                title,
                cut(&format!("{what} with {with}")),
                json!({ "scheduleId": p.pointer("/schedule/id") }),
            )
        }
        "alert.new" => {
            let alert = &p["alert"];
            let (title, body) = alert_text(alert);
            (
                title,
                cut(&body),
                json!({ "alertId": alert["id"], "type": alert["type"] }),
            )
        }
        "support.message.new" => {
            // Only the ticket's user hears of replies; admins work from the console.
            if user.user_type == "admin"
                || p.pointer("/message/sender/id").and_then(Value::as_str) == Some(&user.id)
            {
                return None;
            }
            let text = p.pointer("/message/text").and_then(Value::as_str)?;
            (
                "Talkamie support replied".to_string(),
                cut(text),
                json!({ "ticketId": p.pointer("/ticket/id"), "messageId": p.pointer("/message/id") }),
            )
        }
        _ => return None,
    };
    Some(PushMessage {
        action: row.action.clone(),
        title,
        body,
        data,
    })
}

/// Title and body of a `basic_alert`.
fn alert_text(alert: &Value) -> (String, String) {
    let who = name_at(alert, "/user/name");
    match alert["type"].as_str().unwrap_or("") {
        "connect-request" => match alert
            .pointer("/connectRequest/status")
            .and_then(Value::as_str)
        {
            Some("accepted") => (
                "Connection accepted".into(),
                format!("{who} accepted your connect request"),
            ),
            _ => (
                "New connect request".into(),
                format!("{who} wants to connect with you"),
            ),
        },
        "message-request" => match alert
            .pointer("/chat/request/status")
            .and_then(Value::as_str)
        {
            Some("accepted") => (
                "Message request accepted".into(),
                format!("{who} accepted your message request"),
            ),
            _ => (
                "New message request".into(),
                format!("{who} sent you a message request"),
            ),
        },
        "schedule" => {
            let title = alert
                .pointer("/schedule/title")
                .and_then(Value::as_str)
                .unwrap_or("A call");
            let status = alert
                .pointer("/schedule/status")
                .and_then(Value::as_str)
                .unwrap_or("scheduled");
            (
                format!("Call {status}"),
                format!("{title} with {who} was {status}"),
            )
        }
        "review" => {
            let rate = alert
                .pointer("/review/rate")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            (
                "New review".into(),
                format!("{who} rated your call {rate} of 5"),
            )
        }
        "transaction" => {
            let kind = alert
                .pointer("/transaction/type")
                .and_then(Value::as_str)
                .unwrap_or("transaction");
            let status = alert
                .pointer("/transaction/status")
                .and_then(Value::as_str)
                .unwrap_or("updated");
            let coins = alert
                .pointer("/transaction/coins/amount")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            (
                format!("Coins: {kind} {status}"),
                format!("{coins} coins, {kind} {status}"),
            )
        }
        other => ("Talkamie".into(), format!("You have a new {other} alert")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, payload: Value) -> FeedRow {
        FeedRow {
            position: 1,
            user_id: "me".into(),
            action: action.into(),
            payload,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(BODY_CHARS + 10);
        let out = cut(&long);
        assert_eq!(out.chars().count(), BODY_CHARS);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn alerts_read_as_sentences() {
        let alert = json!({"type": "review", "user": {"name": "Ann"}, "review": {"rate": 4}});
        assert_eq!(
            alert_text(&alert),
            (
                "New review".to_string(),
                "Ann rated your call 4 of 5".to_string()
            )
        );
        let alert = json!({"type": "connect-request", "user": {"name": "Bo"},
                           "connectRequest": {"status": "pending"}});
        assert_eq!(alert_text(&alert).0, "New connect request");
    }

    #[test]
    fn only_news_gets_a_notification() {
        let user = test_user("me", "senior");
        let mine = row(
            "chat.message.new",
            json!({"chat": {"id": "c"}, "message": {"id": "m", "text": "hi", "sender": {"id": "me", "name": "Me"}}}),
        );
        assert!(notification(&user, &mine).is_none());
        let theirs = row(
            "chat.message.new",
            json!({"chat": {"id": "c"}, "message": {"id": "m", "text": "hi", "sender": {"id": "you", "name": "Ann"}}}),
        );
        let message = notification(&user, &theirs).expect("a notification");
        assert_eq!(message.action, "chat.message.new");
        assert_eq!(message.title, "Ann");
        assert_eq!(message.body, "hi");
        assert_eq!(message.data, json!({"chatId": "c", "messageId": "m"}));
        assert!(notification(&user, &row("chats.update", json!({}))).is_none());
        assert!(notification(&user, &row("user.update", json!({}))).is_none());
        let admin = test_user("admin", "admin");
        let reply = row(
            "support.message.new",
            json!({"ticket": {"id": "t"}, "message": {"id": "m", "text": "hello", "sender": {"id": "x", "role": "staff"}}}),
        );
        assert!(notification(&admin, &reply).is_none());
        assert_eq!(
            notification(&user, &reply).map(|m| m.title),
            Some("Talkamie support replied".to_string())
        );
    }

    fn test_user(id: &str, user_type: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            email: None,
            email_verified: true,
            user_type: user_type.into(),
            name: None,
            gender: None,
            bio: None,
            dob: None,
            city: None,
            state: None,
            country: None,
            license_id: None,
            paypal_email: None,
            language: None,
            visibility: "public".into(),
            timezone_offset: None,
            timezone: None,
            specialization: None,
            interests: None,
            certificate_state: None,
            picture_file: None,
            video_file: None,
            certificate_file: None,
            max_call_duration: None,
            max_call_count: None,
            push_enabled: true,
            metas: None,
            verification_admin: "pending".into(),
            verification_background: "pending".into(),
            insert_date: Utc::now(),
            last_login_date: None,
            deleted_at: None,
            total_reviews: 0,
            rate_sum: 0,
        }
    }
}
