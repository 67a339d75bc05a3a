//! Read model `alerts`: the notices a user sees in the app (`basic_alert`), derived from the
//! events of other streams. An alert's id is derived from the event that created it, so a
//! rebuild gives every alert the same id and the read marks of the AlertInbox stream still
//! apply. Later changes of the alert's subject (a request accepted, ...) update its body.
//!
//! `created_position` and `changed_position` record which event created and last changed an
//! alert: the feed uses them to push `alert.new` and `alert.update` for exactly those alerts.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::FromRow;
use talkamie_aggregates::alert_inbox::{AlertInbox, AlertInboxEvent};
use talkamie_aggregates::calendar::CalendarEvent;
use talkamie_aggregates::pair::PairEvent;
use talkamie_aggregates::review::ReviewEvent;
use uuid::Uuid;

use crate::chats::is_pair_event;
use crate::db::{last_state_by_id, placeholders, Source};
use crate::ledger::TransactionRow;
use crate::relations::iso;
use crate::{ledger, reviews, schedules, with_source, with_tx, DbTx, ProjectionError, StoredEvent};

pub const TABLES: &[&str] = &["alerts"];

/// Namespace of alert ids (UUID v5 of the creating event and the recipient).
const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x7a1c_4e2b_9d3f_4c11_8a6e_5b0d_2f9c_1e01);

pub fn alert_id(event: &StoredEvent, user_id: &str) -> String {
    let key = format!(
        "{}:{}:{}:{user_id}",
        event.aggregate_type, event.aggregate_id, event.sequence
    );
    Uuid::new_v5(&ALERT_NAMESPACE, key.as_bytes()).to_string()
}

/// Where one event's alerts go: the projector's transaction, and the rows written so far (the
/// feed renders `alert.new` / `alert.update` from them instead of reading them back).
struct Written<'t> {
    tx: &'t mut DbTx,
    rows: Vec<AlertRow>,
}

impl Written<'_> {
    fn source(&mut self) -> Source<'_> {
        Source::Tx(self.tx)
    }
}

/// The short profile an alert shows of the other person.
async fn user_brief(tx: &mut DbTx, user_id: &str) -> Result<Value, ProjectionError> {
    let row: Option<(Option<String>, Option<Json<Value>>)> = with_tx!(tx, conn => {
        sqlx::query_as("SELECT name, picture_file FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?
    });
    Ok(brief(user_id, row))
}

/// [`user_brief`] from the user's name and picture (`None`: no such user).
fn brief(user_id: &str, found: Option<(Option<String>, Option<Json<Value>>)>) -> Value {
    match found {
        Some((name, picture)) => json!({
            "id": user_id,
            "name": name,
            "picture": crate::profiles::file_json(user_id, &picture),
        }),
        None => json!({ "id": user_id }),
    }
}

async fn insert(
    out: &mut Written<'_>,
    event: &StoredEvent,
    user_id: &str,
    (alert_type, subject_id): (&str, &str),
    body: Value,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let id = alert_id(event, user_id);
    insert_with_id(
        out,
        event,
        (&id, user_id),
        (alert_type, subject_id),
        body,
        at,
    )
    .await
}

/// Inserts alert `id` for `user_id` (once: the id comes from the event) and notes the row it
/// wrote.
async fn insert_with_id(
    out: &mut Written<'_>,
    event: &StoredEvent,
    (id, user_id): (&str, &str),
    (alert_type, subject_id): (&str, &str),
    body: Value,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let sql = format!(
        "INSERT INTO alerts (id, user_id, type, status, subject_id, body, created_position,
                             changed_position, created_at, updated_at)
         VALUES ($1, $2, $3, 'unread', $4, $5, $6, $6, $7, $7)
         ON CONFLICT (id) DO NOTHING
         RETURNING {ALERT_COLUMNS}"
    );
    let row: Option<AlertRow> = with_tx!(out.tx, conn => {
        sqlx::query_as(&sql)
            .bind(id)
            .bind(user_id)
            .bind(alert_type)
            .bind(subject_id)
            .bind(Json(&body))
            .bind(event.position)
            .bind(at)
            .fetch_optional(conn)
            .await?
    });
    out.rows.extend(row);
    Ok(())
}

/// Sets the status at `pointer` (a JSON pointer into the body, e.g. `/connectRequest/status`)
/// in every alert about `subject_id`.
async fn update_subject_status(
    out: &mut Written<'_>,
    event: &StoredEvent,
    subject_id: &str,
    pointer: &str,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    update_subject(out, event, subject_id, &[(pointer, json!(status))], at).await
}

/// Sets each `(pointer, value)` (a JSON pointer into the body; a missing last key is added) in
/// every alert about `subject_id`.
async fn update_subject(
    out: &mut Written<'_>,
    event: &StoredEvent,
    subject_id: &str,
    changes: &[(&str, Value)],
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let rows: Vec<(String, Json<Value>)> = with_tx!(out.tx, conn => {
        sqlx::query_as("SELECT id, body FROM alerts WHERE subject_id = $1")
            .bind(subject_id)
            .fetch_all(conn)
            .await?
    });
    let sql = format!(
        "UPDATE alerts SET body = $2, changed_position = $3, updated_at = $4 WHERE id = $1
         RETURNING {ALERT_COLUMNS}"
    );
    for (id, Json(mut body)) in rows {
        for (pointer, value) in changes {
            let Some((parent, key)) = pointer.rsplit_once('/') else {
                continue;
            };
            if let Some(Value::Object(parent)) = body.pointer_mut(parent) {
                parent.insert(key.to_string(), value.clone());
            }
        }
        let row: Option<AlertRow> = with_tx!(out.tx, conn => {
            sqlx::query_as(&sql)
                .bind(&id)
                .bind(Json(&body))
                .bind(event.position)
                .bind(at)
                .fetch_optional(conn)
                .await?
        });
        out.rows.extend(row);
    }
    Ok(())
}

/// Where a connect request's status sits in an alert body.
const CONNECT_STATUS: &str = "/connectRequest/status";
/// Where a message request's status sits in an alert body.
const MESSAGE_REQUEST_STATUS: &str = "/chat/request/status";

fn connect_request(id: &str, status: &str, from: &str, to: &str) -> Value {
    json!({ "id": id, "status": status, "from": {"id": from}, "to": {"id": to} })
}

/// `schedule` alerts from the volunteer's calendar (the commit point of every schedule change):
/// the volunteer hears of a new or changed booking, the other side of a cancellation.
///
/// A booking carries its schedule, so its alert reads only the senior's name and picture; a
/// cancellation reads the schedule and the canceller's name and picture in one statement.
async fn schedule_alerts(
    out: &mut Written<'_>,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let notice = match event.decode::<CalendarEvent>()? {
        CalendarEvent::Booked {
            schedule,
            occurrences,
            host: true,
            update,
            at,
        } => {
            let slot = schedules::slot_at(schedule.first, &occurrences, at);
            let body = json!({
                "id": schedule.id, "title": schedule.title, "type": schedule.kind.as_str(),
                "recurrence": schedule.recurrence.as_str(),
                "timeslot": {"from": iso(slot.from), "to": iso(slot.to)},
                "status": if update { "updated" } else { "scheduled" },
            });
            ScheduleNotice {
                actor: user_brief(out.tx, &schedule.senior_id).await?,
                recipient: schedule.volunteer_id,
                schedule_id: schedule.id,
                chat_id: schedule.chat_id,
                schedule: body,
                at,
            }
        }
        CalendarEvent::Released {
            schedule_id,
            host: true,
            by,
            at,
        } => {
            let found = schedules::find_with_user(out.source(), &schedule_id, at, &by).await?;
            let Some(found) = found else {
                return Ok(());
            };
            let row = found.schedule;
            let body = json!({
                "id": row.id, "title": row.title, "type": row.kind, "recurrence": row.recurrence,
                "timeslot": {"from": iso(row.slot_from), "to": iso(row.slot_to)},
                "status": "canceled",
            });
            let user = found
                .user_found
                .map(|_| (found.user_name, found.user_picture));
            ScheduleNotice {
                actor: brief(&by, user),
                recipient: row.other_side(&by).to_string(),
                schedule_id: row.id,
                chat_id: row.chat_id,
                schedule: body,
                at,
            }
        }
        _ => return Ok(()),
    };
    let body = json!({
        "schedule": notice.schedule, "chat": {"id": notice.chat_id}, "user": notice.actor,
    });
    let subject = ("schedule", notice.schedule_id.as_str());
    insert(out, event, &notice.recipient, subject, body, notice.at).await
}

/// Who a schedule alert goes to, and what it says.
struct ScheduleNotice {
    recipient: String,
    schedule_id: String,
    chat_id: String,
    /// The alert's `schedule` part.
    schedule: Value,
    /// The other person's brief (`user`).
    actor: Value,
    at: DateTime<Utc>,
}

/// A `transaction` alert for every transaction the event created or changed (one event may
/// change two: a failed payout and its refund).
async fn transaction_alerts(
    out: &mut Written<'_>,
    event: &StoredEvent,
    changed: Vec<TransactionRow>,
) -> Result<(), ProjectionError> {
    for row in changed {
        // A forfeit happens as the owner's account is deleted: nobody is left to tell.
        if row.kind == "forfeit" {
            continue;
        }
        let id = alert_id(event, &format!("{}:{}", row.user_id, row.id));
        let body = json!({ "transaction": row.to_json() });
        let subject = ("transaction", row.id.as_str());
        insert_with_id(
            out,
            event,
            (&id, &row.user_id),
            subject,
            body,
            event.recorded_at,
        )
        .await?;
    }
    Ok(())
}

/// `review` alerts: the ratee hears of a new review; a change or a delete updates that alert.
async fn review_alerts(out: &mut Written<'_>, event: &StoredEvent) -> Result<(), ProjectionError> {
    match event.decode::<ReviewEvent>()? {
        ReviewEvent::Written {
            review_id,
            rater,
            ratee,
            rate,
            text,
            at,
        } => {
            // From the event alone, so a rebuild keeps the alert of a review deleted since.
            let user = user_brief(out.tx, &rater).await?;
            let review = json!({
                "id": review_id, "rate": rate, "text": text,
                "rater": {"id": rater, "name": user["name"]}, "timestamp": iso(at),
            });
            let body = json!({ "review": review, "user": user });
            insert(out, event, &ratee, ("review", &review_id), body, at).await
        }
        ReviewEvent::Updated {
            review_id,
            rate,
            text,
            at,
        } => {
            let changes = [("/review/rate", json!(rate)), ("/review/text", json!(text))];
            update_subject(out, event, &review_id, &changes, at).await
        }
        ReviewEvent::Deleted { review_id, at } => {
            let changes = [("/review/deleted", json!(true))];
            update_subject(out, event, &review_id, &changes, at).await
        }
    }
}

/// Whether a Pair event creates or changes alerts: requests and their answers do, chat
/// traffic (messages, receipts) never does, so the feed need not look for alerts after it.
pub fn pair_event_writes_alerts(event: &PairEvent) -> bool {
    matches!(
        event,
        PairEvent::ConnectionRequested { .. }
            | PairEvent::ConnectionRequestCanceled { .. }
            | PairEvent::ConnectionRequestRejected { .. }
            | PairEvent::ConnectionAccepted { .. }
            | PairEvent::MessageRequested { .. }
            | PairEvent::MessageRequestCanceled { .. }
            | PairEvent::MessageRequestRejected { .. }
            | PairEvent::MessageRequestAccepted { .. }
    )
}

/// Applies `event`; returns the alerts it created or changed, as [`changed_at`] would read them
/// back (the feed renders its `alert.new` / `alert.update` pushes from them).
///
/// `transactions`: what the ledger projection changed for this event, when it applied it in
/// this round (read back otherwise).
pub async fn apply(
    tx: &mut DbTx,
    event: &StoredEvent,
    transactions: Option<Vec<TransactionRow>>,
) -> Result<Vec<AlertRow>, ProjectionError> {
    let mut out = Written {
        tx,
        rows: Vec::new(),
    };
    apply_into(&mut out, event, transactions).await?;
    // As `changed_at` reads them back.
    Ok(last_state_by_id(out.rows, |row| &row.id))
}

async fn apply_into(
    out: &mut Written<'_>,
    event: &StoredEvent,
    transactions: Option<Vec<TransactionRow>>,
) -> Result<(), ProjectionError> {
    if ledger::is_wallet_event(event) {
        let changed = match transactions {
            Some(rows) => rows,
            None => ledger::changed_at(out.source(), event.position).await?,
        };
        return transaction_alerts(out, event, changed).await;
    }
    if reviews::is_review_event(event) {
        return review_alerts(out, event).await;
    }
    if event.aggregate_type == <AlertInbox as cqrs_es::Aggregate>::TYPE {
        let AlertInboxEvent::AlertsRead { alert_ids, at } = event.decode()?;
        for id in alert_ids {
            with_tx!(out.tx, conn => {
                sqlx::query(
                    "UPDATE alerts SET status = 'read', updated_at = $3
                      WHERE id = $1 AND user_id = $2 AND status = 'unread'",
                )
                .bind(&id)
                .bind(&event.aggregate_id)
                .bind(at)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
            });
        }
        return Ok(());
    }
    if schedules::is_calendar_event(event) {
        return schedule_alerts(out, event).await;
    }
    if !is_pair_event(event) {
        return Ok(());
    }
    let chat_id = event.aggregate_id.as_str();
    let decoded = event.decode::<PairEvent>()?;
    if !pair_event_writes_alerts(&decoded) {
        return Ok(());
    }
    match decoded {
        PairEvent::ConnectionRequested {
            request_id,
            from,
            to,
            at,
        } => {
            let body = json!({
                "connectRequest": connect_request(&request_id, "pending", &from, &to),
                "user": user_brief(out.tx, &from).await?,
            });
            insert(out, event, &to, ("connect-request", &request_id), body, at).await?;
        }
        PairEvent::ConnectionRequestCanceled { request_id, at } => {
            update_subject_status(out, event, &request_id, CONNECT_STATUS, "canceled", at).await?
        }
        PairEvent::ConnectionRequestRejected { request_id, at } => {
            update_subject_status(out, event, &request_id, CONNECT_STATUS, "rejected", at).await?
        }
        PairEvent::ConnectionAccepted { request_id, at } => {
            update_subject_status(out, event, &request_id, CONNECT_STATUS, "accepted", at).await?;
            // The sender learns that their request was accepted.
            let parties: Option<(String, String)> = with_tx!(out.tx, conn => {
                sqlx::query_as("SELECT from_id, to_id FROM connect_requests WHERE id = $1")
                    .bind(&request_id)
                    .fetch_optional(conn)
                    .await?
            });
            if let Some((from, to)) = parties {
                let body = json!({
                    "connectRequest": connect_request(&request_id, "accepted", &from, &to),
                    "chat": {"id": chat_id},
                    "user": user_brief(out.tx, &to).await?,
                });
                insert(
                    out,
                    event,
                    &from,
                    ("connect-request", &request_id),
                    body,
                    at,
                )
                .await?;
            }
        }
        PairEvent::MessageRequested {
            request_id,
            message_id,
            from,
            to,
            text,
            at,
            ..
        } => {
            let body = json!({
                "chat": {"id": chat_id, "request": {"id": request_id, "status": "pending"}},
                "message": {"id": message_id, "text": text},
                "user": user_brief(out.tx, &from).await?,
            });
            insert(out, event, &to, ("message-request", &request_id), body, at).await?;
        }
        PairEvent::MessageRequestCanceled { request_id, at } => {
            update_subject_status(
                out,
                event,
                &request_id,
                MESSAGE_REQUEST_STATUS,
                "canceled",
                at,
            )
            .await?
        }
        PairEvent::MessageRequestRejected { request_id, at } => {
            update_subject_status(
                out,
                event,
                &request_id,
                MESSAGE_REQUEST_STATUS,
                "rejected",
                at,
            )
            .await?
        }
        PairEvent::MessageRequestAccepted { request_id, at } => {
            update_subject_status(
                out,
                event,
                &request_id,
                MESSAGE_REQUEST_STATUS,
                "accepted",
                at,
            )
            .await?;
            let parties: Option<(Option<String>, String)> = with_tx!(out.tx, conn => {
                sqlx::query_as(
                    "SELECT c.request_sender, m.user_id FROM chats c
                       JOIN chat_members m ON m.chat_id = c.id AND m.user_id <> c.request_sender
                      WHERE c.id = $1",
                )
                .bind(chat_id)
                .fetch_optional(conn)
                .await?
            });
            if let Some((Some(from), to)) = parties {
                let body = json!({
                    "chat": {"id": chat_id, "request": {"id": request_id, "status": "accepted"}},
                    "user": user_brief(out.tx, &to).await?,
                });
                insert(
                    out,
                    event,
                    &from,
                    ("message-request", &request_id),
                    body,
                    at,
                )
                .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One row of `alerts`.
#[derive(Debug, Clone, FromRow)]
pub struct AlertRow {
    pub id: String,
    pub user_id: String,
    #[sqlx(rename = "type")]
    pub alert_type: String,
    pub status: String,
    pub body: Json<Value>,
    pub created_position: i64,
    pub created_at: DateTime<Utc>,
}

const ALERT_COLUMNS: &str = "id, user_id, type, status, body, created_position, created_at";

impl AlertRow {
    /// `basic_alert`: `{id, type, timestamp, status}` plus the type's fields.
    pub fn to_json(&self) -> Value {
        let mut alert = json!({
            "id": self.id,
            "type": self.alert_type,
            "timestamp": iso(self.created_at),
            "status": self.status,
        });
        if let (Value::Object(alert), Value::Object(body)) = (&mut alert, &self.body.0) {
            for (k, v) in body {
                alert.insert(k.clone(), v.clone());
            }
        }
        alert
    }
}

/// Alerts created or changed by the event at `position`.
pub async fn changed_at(source: Source<'_>, position: i64) -> Result<Vec<AlertRow>, sqlx::Error> {
    let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE changed_position = $1 ORDER BY id");
    with_source!(source, conn => {
        sqlx::query_as::<_, AlertRow>(&sql).bind(position).fetch_all(conn).await
    })
}

/// One page of a user's alerts, newest first, after the keyset `(created_at, id)`.
pub async fn page(
    source: Source<'_>,
    user_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<AlertRow>, i64), sqlx::Error> {
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(conn)
            .await?
    });
    let rows = match after {
        Some((at, id)) => {
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE user_id = $1
                    AND (created_at < $2 OR (created_at = $2 AND id < $3))
                  ORDER BY created_at DESC, id DESC LIMIT {limit}"
            );
            with_source!(source, conn => {
                sqlx::query_as::<_, AlertRow>(&sql).bind(user_id).bind(at).bind(id).fetch_all(conn).await?
            })
        }
        None => {
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE user_id = $1
                  ORDER BY created_at DESC, id DESC LIMIT {limit}"
            );
            with_source!(source, conn => {
                sqlx::query_as::<_, AlertRow>(&sql).bind(user_id).fetch_all(conn).await?
            })
        }
    };
    Ok((rows, total))
}

/// `(id, status)` of those of `ids` that are alerts of `user_id`.
pub async fn statuses(
    source: Source<'_>,
    user_id: &str,
    ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let list = placeholders(2, ids.len());
    let sql =
        format!("SELECT id, status FROM alerts WHERE user_id = $1 AND id IN ({list}) ORDER BY id");
    with_source!(source, conn => {
        let mut query = sqlx::query_as(&sql).bind(user_id);
        for id in ids {
            query = query.bind(id);
        }
        query.fetch_all(conn).await
    })
}

/// Which of `ids` are unread alerts of `user_id`.
pub async fn unread_of(
    source: Source<'_>,
    user_id: &str,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    Ok(statuses(source, user_id, ids)
        .await?
        .into_iter()
        .filter(|(_, status)| status == "unread")
        .map(|(id, _)| id)
        .collect())
}

/// A user's unread alert count.
pub async fn total_unread(source: Source<'_>, user_id: &str) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM alerts WHERE user_id = $1 AND status = 'unread'";
    with_source!(source, conn => sqlx::query_scalar(sql).bind(user_id).fetch_one(conn).await)
}
