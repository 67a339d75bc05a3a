//! Read models `support_tickets` (`full_support_ticket`) and `support_messages`
//! (`basic_support_message`), from the SupportDesk streams.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::support::{Side, SupportDesk, SupportEvent};

use crate::bind_all;
use crate::db::{exec, placeholders, Bind, Source};
use crate::relations::iso;
use crate::{with_source, DbTx, ProjectionError, StoredEvent};
use Bind::{Int, OptText, Text, Time};

pub const TABLES: &[&str] = &["support_messages", "support_tickets"];

pub fn is_support_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <SupportDesk as cqrs_es::Aggregate>::TYPE
}

/// Marks the other side's messages up to `upto` with `status`, recording the event position.
async fn receipt(
    tx: &mut DbTx,
    event: &StoredEvent,
    (ticket_id, side, upto): (&str, Side, u64),
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let before = if status == "read" {
        "delivery_status IN ('sent', 'delivered')"
    } else {
        "delivery_status = 'sent'"
    };
    let sql = format!(
        "UPDATE support_messages SET delivery_status = $4, delivery_at = $5, receipt_position = $6
          WHERE ticket_id = $1 AND side = $2 AND seq <= $3 AND {before}"
    );
    exec(
        tx,
        &sql,
        &[
            Text(ticket_id),
            Text(side.other().as_str()),
            Int(upto as i64),
            Text(status),
            Time(at),
            Int(event.position),
        ],
    )
    .await?;
    Ok(())
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if !is_support_event(event) {
        return Ok(());
    }
    match event.decode::<SupportEvent>()? {
        SupportEvent::TicketOpened {
            ticket_id,
            user_id,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO support_tickets (id, user_id, status, opened_at, last_activity_at)
                 VALUES ($1, $2, 'open', $3, $3) ON CONFLICT (id) DO NOTHING",
                &[Text(&ticket_id), Text(&user_id), Time(at)],
            )
            .await?;
        }
        SupportEvent::SupportMessagePosted {
            ticket_id,
            message_id,
            sender,
            side,
            text,
            client_id,
            seq,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO support_messages (id, ticket_id, seq, sender_id, side, text, client_id,
                                               created_at, delivery_status, delivery_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'sent', $8) ON CONFLICT (id) DO NOTHING",
                &[
                    Text(&message_id),
                    Text(&ticket_id),
                    Int(seq as i64),
                    Text(&sender),
                    Text(side.as_str()),
                    Text(&text),
                    OptText(client_id.as_deref()),
                    Time(at),
                ],
            )
            .await?;
            exec(
                tx,
                "UPDATE support_tickets SET last_message_id = $2, last_activity_at = $3 WHERE id = $1",
                &[Text(&ticket_id), Text(&message_id), Time(at)],
            )
            .await?;
        }
        SupportEvent::SupportMessagesDelivered {
            ticket_id,
            side,
            upto,
            at,
        } => receipt(tx, event, (&ticket_id, side, upto), "delivered", at).await?,
        SupportEvent::SupportMessagesRead {
            ticket_id,
            side,
            upto,
            at,
        } => receipt(tx, event, (&ticket_id, side, upto), "read", at).await?,
        SupportEvent::TicketClosed { ticket_id, by, at } => {
            exec(
                tx,
                "UPDATE support_tickets SET status = 'closed', closed_at = $2, closed_by = $3,
                                            last_activity_at = $2
                  WHERE id = $1",
                &[Text(&ticket_id), Time(at), Text(&by)],
            )
            .await?;
        }
    }
    Ok(())
}

/// One row of `support_messages`, with the sender's name (`None` once deleted).
#[derive(Debug, Clone, FromRow)]
pub struct SupportMessageRow {
    pub id: String,
    pub ticket_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub side: String,
    pub text: String,
    pub client_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivery_status: String,
    pub delivery_at: DateTime<Utc>,
    pub sender_name: Option<String>,
}

const MESSAGE_COLUMNS: &str = "m.id, m.ticket_id, m.seq, m.sender_id, m.side, m.text, m.client_id,
    m.created_at, m.delivery_status, m.delivery_at,
    CASE WHEN u.deleted_at IS NULL THEN u.name ELSE 'Deleted user' END AS sender_name";
const MESSAGE_FROM: &str = "support_messages m LEFT JOIN users u ON u.id = m.sender_id";

impl SupportMessageRow {
    /// `basic_support_message`: `{id, clientId?, ticket{id}, text, timestamp,
    /// sender{id,name,role: user|staff}, delivery{status, at}}`.
    pub fn to_json(&self) -> Value {
        let mut message = json!({
            "id": self.id,
            "ticket": {"id": self.ticket_id},
            "text": self.text,
            "timestamp": iso(self.created_at),
            "sender": {"id": self.sender_id, "name": self.sender_name, "role": self.side},
            "delivery": {"status": self.delivery_status, "at": iso(self.delivery_at)},
        });
        if let Some(client_id) = &self.client_id {
            message["clientId"] = json!(client_id);
        }
        message
    }
}

pub async fn message(
    source: Source<'_>,
    id: &str,
) -> Result<Option<SupportMessageRow>, sqlx::Error> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE m.id = $1");
    with_source!(source, conn => {
        sqlx::query_as::<_, SupportMessageRow>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// The message `sender` sent on `ticket_id` with `client_id` (a retried send).
pub async fn message_by_client_id(
    source: Source<'_>,
    ticket_id: &str,
    sender: &str,
    client_id: &str,
) -> Result<Option<SupportMessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
          WHERE m.ticket_id = $1 AND m.sender_id = $2 AND m.client_id = $3"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, SupportMessageRow>(&sql)
            .bind(ticket_id).bind(sender).bind(client_id)
            .fetch_optional(conn).await
    })
}

/// Those of `ids` that are messages of `ticket_id` written by `side`.
pub async fn messages_of_side(
    source: Source<'_>,
    ticket_id: &str,
    side: Side,
    ids: &[String],
) -> Result<Vec<SupportMessageRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
          WHERE m.ticket_id = $1 AND m.side = $2 AND m.id IN ({}) ORDER BY m.seq",
        placeholders(3, ids.len())
    );
    with_source!(source, conn => {
        let mut query = sqlx::query_as::<_, SupportMessageRow>(&sql)
            .bind(ticket_id)
            .bind(side.as_str());
        for id in ids {
            query = query.bind(id);
        }
        query.fetch_all(conn).await
    })
}

/// Messages whose delivery status the event at `position` changed.
pub async fn receipts_at(
    source: Source<'_>,
    ticket_id: &str,
    position: i64,
) -> Result<Vec<SupportMessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
          WHERE m.ticket_id = $1 AND m.receipt_position = $2 ORDER BY m.seq"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, SupportMessageRow>(&sql).bind(ticket_id).bind(position).fetch_all(conn).await
    })
}

/// One page of a ticket's messages, newest first, before sequence `before`.
pub async fn messages_page(
    source: Source<'_>,
    ticket_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<SupportMessageRow>, i64), sqlx::Error> {
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM support_messages WHERE ticket_id = $1")
            .bind(ticket_id)
            .fetch_one(conn)
            .await?
    });
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
          WHERE m.ticket_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT {limit}"
    );
    let rows = with_source!(source, conn => {
        sqlx::query_as::<_, SupportMessageRow>(&sql)
            .bind(ticket_id)
            .bind(before.unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await?
    });
    Ok((rows, total))
}

/// One row of `support_tickets`.
#[derive(Debug, Clone, FromRow)]
pub struct TicketRow {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub last_message_id: Option<String>,
    pub last_activity_at: DateTime<Utc>,
}

const TICKET_COLUMNS: &str =
    "id, user_id, status, opened_at, closed_at, last_message_id, last_activity_at";

impl TicketRow {
    /// `full_support_ticket`: `{id, user, status, lastMessage, openedAt, closedAt?}`.
    pub fn to_json(&self, user: Value, last_message: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "user": user,
            "status": self.status,
            "lastMessage": last_message,
            "openedAt": iso(self.opened_at),
            "closedAt": self.closed_at.map(iso),
            "timestamp": iso(self.last_activity_at),
        })
    }
}

pub async fn ticket(source: Source<'_>, id: &str) -> Result<Option<TicketRow>, sqlx::Error> {
    let sql = format!("SELECT {TICKET_COLUMNS} FROM support_tickets WHERE id = $1");
    with_source!(source, conn => sqlx::query_as::<_, TicketRow>(&sql).bind(id).fetch_optional(conn).await)
}

/// The user's open ticket.
pub async fn open_ticket_of(
    source: Source<'_>,
    user_id: &str,
) -> Result<Option<TicketRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {TICKET_COLUMNS} FROM support_tickets WHERE user_id = $1 AND status = 'open'"
    );
    with_source!(source, conn => sqlx::query_as::<_, TicketRow>(&sql).bind(user_id).fetch_optional(conn).await)
}

/// One page of every ticket (the admins' queue), latest activity first, filtered by status.
pub async fn tickets_page(
    source: Source<'_>,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<TicketRow>, i64), sqlx::Error> {
    let mut source = source;
    let status = status.unwrap_or("");
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM support_tickets WHERE ($1 = '' OR status = $1)")
            .bind(status)
            .fetch_one(conn)
            .await?
    });
    let (keyset, binds) = match &after {
        Some((at, id)) => (
            "AND (last_activity_at < $2 OR (last_activity_at = $2 AND id < $3))",
            vec![Text(status), Time(*at), Text(id)],
        ),
        None => ("", vec![Text(status)]),
    };
    let sql = format!(
        "SELECT {TICKET_COLUMNS} FROM support_tickets WHERE ($1 = '' OR status = $1) {keyset}
          ORDER BY last_activity_at DESC, id DESC LIMIT {limit}"
    );
    let rows = with_source!(source, conn => {
        bind_all!(sqlx::query_as::<_, TicketRow>(&sql), binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

/// The ids of every admin able to answer tickets (support pushes go to all of them).
pub async fn staff(source: Source<'_>) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT id FROM users WHERE type = 'admin' AND deleted_at IS NULL ORDER BY id";
    with_source!(source, conn => sqlx::query_scalar(sql).fetch_all(conn).await)
}
