//! Read model `chats`: the pair relation as tables. `connect_requests`, `connections` (both
//! directions of each live connection), `chats` (one per pair), `chat_members` (one row per
//! member: list order, read positions, unread count) and `messages` (with delivery status).
//!
//! Unread counts come from read positions: a member's `unread_count` is the number of the other
//! member's messages after the member's `read_seq`, recomputed whenever the position moves.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::pair::{Pair, PairEvent};
use talkamie_aggregates::user::{User, UserEvent};

use crate::db::{one_of, placeholders, Source};
use crate::relations::iso;
use crate::{with_source, with_source_by_store, DbTx, ProjectionError, StoredEvent};

pub const TABLES: &[&str] = &[
    "connect_requests",
    "connections",
    "chats",
    "chat_members",
    "messages",
];

pub fn is_pair_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <Pair as cqrs_es::Aggregate>::TYPE
}

use crate::bind_all;
use crate::db::{exec, exec_together, Bind, Params, Statement};
use Bind::{Bool, Int, Text, Time};

async fn set_request_status(
    tx: &mut DbTx,
    request_id: &str,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    exec(
        tx,
        "UPDATE connect_requests SET status = $2, updated_at = $3 WHERE id = $1",
        &[Text(request_id), Text(status), Time(at)],
    )
    .await?;
    Ok(())
}

async fn set_message_request_status(
    tx: &mut DbTx,
    chat_id: &str,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    exec(
        tx,
        "UPDATE chats SET request_status = $2, updated_at = $3 WHERE id = $1",
        &[Text(chat_id), Text(status), Time(at)],
    )
    .await?;
    Ok(())
}

/// Creates the chat's member rows if missing and moves both to the top of their lists.
async fn touch_members(
    tx: &mut DbTx,
    chat_id: &str,
    members: [&str; 2],
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    for (user, other) in [(members[0], members[1]), (members[1], members[0])] {
        exec(
            tx,
            "INSERT INTO chat_members (chat_id, user_id, other_id, last_activity_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET last_activity_at = $4",
            &[Text(chat_id), Text(user), Text(other), Time(at)],
        )
        .await?;
    }
    Ok(())
}

/// A message as the chats read model stores it.
struct NewMessage<'a> {
    id: &'a str,
    sender: &'a str,
    text: &'a str,
    client_id: Option<&'a str>,
    seq: u64,
    is_request: bool,
    /// `(type, ref_id)` of a message that carries something (a schedule); plain text otherwise.
    attachment: Option<(&'a str, &'a str)>,
    at: DateTime<Utc>,
}

/// The message, its chat's last message and count, and its members' unread counts and
/// activity: three tables, one round trip on PostgreSQL.
async fn insert_message(
    tx: &mut DbTx,
    chat_id: &str,
    message: NewMessage<'_>,
) -> Result<(), ProjectionError> {
    let (kind, ref_id) = match message.attachment {
        Some((kind, ref_id)) => (kind, Some(ref_id)),
        None => ("text", None),
    };
    let at = message.at;
    exec_together(
        tx,
        &[
            Statement::new(
                "INSERT INTO messages (id, chat_id, seq, sender_id, client_id, type, text,
                                       is_request, ref_id, delivery_status, delivery_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'sent', $10, $10)",
                &[
                    Text(message.id),
                    Text(chat_id),
                    Int(message.seq as i64),
                    Text(message.sender),
                    Bind::OptText(message.client_id),
                    Text(kind),
                    Text(message.text),
                    Bool(message.is_request),
                    Bind::OptText(ref_id),
                    Time(at),
                ],
            ),
            Statement::new(
                "UPDATE chats SET last_message_id = $2, total_messages = total_messages + 1,
                                  updated_at = $3
                  WHERE id = $1",
                &[Text(chat_id), Text(message.id), Time(at)],
            ),
            // One statement for both members: the other's unread count, everyone's activity.
            Statement::new(
                "UPDATE chat_members
                    SET unread_count = unread_count + CASE WHEN user_id <> $2 THEN 1 ELSE 0 END,
                        last_activity_at = $3
                  WHERE chat_id = $1",
                &[Text(chat_id), Text(message.sender), Time(at)],
            ),
        ],
    )
    .await
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if event.aggregate_type == <User as cqrs_es::Aggregate>::TYPE {
        if let UserEvent::UserDeleted { at } = event.decode::<UserEvent>()? {
            forget_user(tx, &event.aggregate_id, at).await?;
        }
        return Ok(());
    }
    if !is_pair_event(event) {
        return Ok(());
    }
    let chat_id = event.aggregate_id.as_str();
    match event.decode::<PairEvent>()? {
        PairEvent::ConnectionRequested {
            request_id,
            from,
            to,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO connect_requests (id, chat_id, from_id, to_id, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5, $5)",
                &[Text(&request_id), Text(chat_id), Text(&from), Text(&to), Time(at)],
            )
            .await?;
        }
        PairEvent::ConnectionRequestCanceled { request_id, at } => {
            set_request_status(tx, &request_id, "canceled", at).await?
        }
        PairEvent::ConnectionRequestRejected { request_id, at } => {
            set_request_status(tx, &request_id, "rejected", at).await?
        }
        PairEvent::ConnectionAccepted { request_id, at } => {
            set_request_status(tx, &request_id, "accepted", at).await?;
            exec(
                tx,
                "INSERT INTO connections (user_id, other_id, chat_id, since)
                 SELECT from_id, to_id, chat_id, $2 FROM connect_requests WHERE id = $1
                 UNION ALL
                 SELECT to_id, from_id, chat_id, $2 FROM connect_requests WHERE id = $1
                 ON CONFLICT (user_id, other_id) DO NOTHING",
                &[Text(&request_id), Time(at)],
            )
            .await?;
        }
        PairEvent::ChatOpened {
            chat_type,
            members,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO chats (id, type, is_open, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (id) DO UPDATE SET type = $2, is_open = $3, updated_at = $4",
                &[
                    Text(chat_id),
                    Text(chat_type.as_str()),
                    Bool(true),
                    Time(at),
                ],
            )
            .await?;
            if let [a, b] = members.as_slice() {
                touch_members(tx, chat_id, [a, b], at).await?;
            }
        }
        PairEvent::Disconnected { at, .. } => {
            exec(
                tx,
                "UPDATE chats SET is_open = $2, updated_at = $3 WHERE id = $1",
                &[Text(chat_id), Bool(false), Time(at)],
            )
            .await?;
            exec(
                tx,
                "DELETE FROM connections WHERE chat_id = $1",
                &[Text(chat_id)],
            )
            .await?;
        }
        PairEvent::MessageRequested {
            request_id,
            message_id,
            from,
            to,
            text,
            seq,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO chats (id, type, is_open, request_id, request_text, request_status,
                                    request_sender, request_at, created_at, updated_at)
                 VALUES ($1, 'message', $2, $3, $4, 'pending', $5, $6, $6, $6)
                 ON CONFLICT (id) DO UPDATE SET type = 'message', is_open = $2, request_id = $3,
                     request_text = $4, request_status = 'pending', request_sender = $5,
                     request_at = $6, updated_at = $6",
                &[
                    Text(chat_id),
                    Bool(false),
                    Text(&request_id),
                    Text(&text),
                    Text(&from),
                    Time(at),
                ],
            )
            .await?;
            touch_members(tx, chat_id, [&from, &to], at).await?;
            let request = NewMessage {
                id: &message_id,
                sender: &from,
                text: &text,
                client_id: None,
                seq,
                is_request: true,
                attachment: None,
                at,
            };
            insert_message(tx, chat_id, request).await?;
        }
        PairEvent::MessageRequestCanceled { at, .. } => {
            set_message_request_status(tx, chat_id, "canceled", at).await?
        }
        PairEvent::MessageRequestRejected { at, .. } => {
            set_message_request_status(tx, chat_id, "rejected", at).await?
        }
        PairEvent::MessageRequestAccepted { at, .. } => {
            set_message_request_status(tx, chat_id, "accepted", at).await?
        }
        PairEvent::MessageSent {
            message_id,
            sender,
            text,
            client_id,
            attachment,
            seq,
            at,
        } => {
            let message = NewMessage {
                id: &message_id,
                sender: &sender,
                text: &text,
                client_id: client_id.as_deref(),
                seq,
                is_request: false,
                attachment: attachment.as_ref().map(|a| a.parts()),
                at,
            };
            insert_message(tx, chat_id, message).await?;
        }
        PairEvent::MessagesDelivered { member, upto, at } => {
            exec(
                tx,
                "UPDATE chat_members SET delivered_seq = $3 WHERE chat_id = $1 AND user_id = $2",
                &[Text(chat_id), Text(&member), Int(upto as i64)],
            )
            .await?;
            exec(
                tx,
                "UPDATE messages SET delivery_status = 'delivered', delivery_at = $4,
                        receipt_position = $5
                  WHERE chat_id = $1 AND sender_id <> $2 AND seq <= $3 AND delivery_status = 'sent'",
                &[
                    Text(chat_id),
                    Text(&member),
                    Int(upto as i64),
                    Time(at),
                    Int(event.position),
                ],
            )
            .await?;
        }
        PairEvent::MessagesRead { member, upto, at } => {
            exec(
                tx,
                "UPDATE chat_members
                    SET read_seq = $3,
                        delivered_seq = CASE WHEN delivered_seq > $3 THEN delivered_seq ELSE $3 END,
                        unread_count = (SELECT COUNT(*) FROM messages m
                                         WHERE m.chat_id = $1 AND m.sender_id <> $2 AND m.seq > $3)
                  WHERE chat_id = $1 AND user_id = $2",
                &[Text(chat_id), Text(&member), Int(upto as i64)],
            )
            .await?;
            exec(
                tx,
                "UPDATE messages SET delivery_status = 'read', delivery_at = $4,
                        receipt_position = $5
                  WHERE chat_id = $1 AND sender_id <> $2 AND seq <= $3 AND delivery_status <> 'read'",
                &[
                    Text(chat_id),
                    Text(&member),
                    Int(upto as i64),
                    Time(at),
                    Int(event.position),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// A deleted user has no connections and no live requests any more (their chats stay, hidden
/// from lists, so the other member's history is not rewritten).
async fn forget_user(
    tx: &mut DbTx,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    exec(
        tx,
        "DELETE FROM connections WHERE user_id = $1 OR other_id = $1",
        &[Text(user_id)],
    )
    .await?;
    exec(
        tx,
        "UPDATE connect_requests SET status = 'canceled', updated_at = $2
          WHERE (from_id = $1 OR to_id = $1) AND status = 'pending'",
        &[Text(user_id), Time(at)],
    )
    .await?;
    exec(
        tx,
        "UPDATE chats SET request_status = 'canceled', is_open = $3, updated_at = $2
          WHERE request_status = 'pending'
            AND id IN (SELECT chat_id FROM chat_members WHERE user_id = $1)",
        &[Text(user_id), Time(at), Bool(false)],
    )
    .await?;
    exec(
        tx,
        "UPDATE chats SET is_open = $3, updated_at = $2
          WHERE id IN (SELECT chat_id FROM chat_members WHERE user_id = $1)",
        &[Text(user_id), Time(at), Bool(false)],
    )
    .await?;
    Ok(())
}

/// A chat as one member sees it (a `chats` row joined with the member's row).
#[derive(Debug, Clone, FromRow)]
pub struct ChatView {
    pub id: String,
    #[sqlx(rename = "type")]
    pub chat_type: String,
    pub is_open: bool,
    pub request_id: Option<String>,
    pub request_text: Option<String>,
    pub request_status: Option<String>,
    pub request_sender: Option<String>,
    pub request_at: Option<DateTime<Utc>>,
    pub last_message_id: Option<String>,
    pub total_messages: i64,
    pub created_at: DateTime<Utc>,
    pub user_id: String,
    pub other_id: String,
    pub last_activity_at: DateTime<Utc>,
    pub read_seq: i64,
    pub unread_count: i64,
}

pub const CHAT_VIEW_COLUMNS: &str = "c.id, c.type, c.is_open, c.request_id, c.request_text,
    c.request_status, c.request_sender, c.request_at, c.last_message_id, c.total_messages,
    c.created_at, m.user_id, m.other_id, m.last_activity_at, m.read_seq, m.unread_count";

impl ChatView {
    /// `request?: {id, text, timestamp, status, sender{id}}` (the message request).
    pub fn request_json(&self) -> Value {
        match (&self.request_id, &self.request_status) {
            (Some(id), Some(status)) => json!({
                "id": id,
                "text": self.request_text,
                "timestamp": self.request_at.map(iso),
                "status": status,
                "sender": {"id": self.request_sender},
            }),
            _ => Value::Null,
        }
    }
}

/// The chat `chat_id` as member `user_id` sees it; `None` when it does not exist or the user
/// is not a member (both answer 404).
pub async fn find_for_member(
    source: Source<'_>,
    chat_id: &str,
    user_id: &str,
) -> Result<Option<ChatView>, sqlx::Error> {
    let sql = format!(
        "SELECT {CHAT_VIEW_COLUMNS} FROM chats c JOIN chat_members m ON m.chat_id = c.id
          WHERE c.id = $1 AND m.user_id = $2"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ChatView>(&sql).bind(chat_id).bind(user_id).fetch_optional(conn).await
    })
}

/// `find_for_member`, but `None` also when the other member's account is gone (one round
/// trip: every message sent checks it).
pub async fn find_for_member_with_other(
    source: Source<'_>,
    chat_id: &str,
    user_id: &str,
) -> Result<Option<ChatView>, sqlx::Error> {
    Ok(find_for_sender(source, chat_id, user_id)
        .await?
        .map(|sendable| sendable.view))
}

/// A chat a member may send into, and that member's name (for the answer).
#[derive(Debug, Clone, FromRow)]
pub struct Sendable {
    #[sqlx(flatten)]
    pub view: ChatView,
    pub member_name: Option<String>,
}

/// `find_for_member_with_other`, with the member's name.
pub async fn find_for_sender(
    source: Source<'_>,
    chat_id: &str,
    user_id: &str,
) -> Result<Option<Sendable>, sqlx::Error> {
    let sql = format!(
        "SELECT {CHAT_VIEW_COLUMNS}, (SELECT name FROM users me WHERE me.id = m.user_id) AS member_name
           FROM chats c JOIN chat_members m ON m.chat_id = c.id
          WHERE c.id = $1 AND m.user_id = $2
            AND EXISTS (SELECT 1 FROM users u WHERE u.id = m.other_id AND u.deleted_at IS NULL)"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, Sendable>(&sql).bind(chat_id).bind(user_id).fetch_optional(conn).await
    })
}

/// The chat as each of its members sees it, ordered by member id.
pub async fn views_of_chat(
    source: Source<'_>,
    chat_id: &str,
) -> Result<Vec<ChatView>, sqlx::Error> {
    let sql = format!(
        "SELECT {CHAT_VIEW_COLUMNS} FROM chats c JOIN chat_members m ON m.chat_id = c.id
          WHERE c.id = $1 ORDER BY m.user_id"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ChatView>(&sql).bind(chat_id).fetch_all(conn).await
    })
}

/// Every member's view of each of `chat_ids`, ordered by chat and member id.
pub async fn views_of_chats(
    source: Source<'_>,
    chat_ids: &[String],
) -> Result<Vec<ChatView>, sqlx::Error> {
    if chat_ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT {CHAT_VIEW_COLUMNS} FROM chats c JOIN chat_members m ON m.chat_id = c.id
          WHERE c.id {} ORDER BY c.id, m.user_id",
        one_of(source.is_postgres(), 1, chat_ids.len())
    );
    with_source_by_store!(source, conn,
        postgres => sqlx::query_as::<_, ChatView>(&sql).bind(chat_ids).fetch_all(conn).await,
        sqlite => {
            let mut query = sqlx::query_as::<_, ChatView>(&sql);
            for id in chat_ids {
                query = query.bind(id);
            }
            query.fetch_all(conn).await
        }
    )
}

/// Which chats a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatList {
    All,
    Unread,
    Pending,
    /// Ranked by messages in the last 30 days.
    Frequent,
}

/// One page of `user_id`'s chats, most recent activity first (frequent: most messages first);
/// `after` is the previous page's last `(rank, activity, id)`.
pub async fn list(
    source: Source<'_>,
    user_id: &str,
    which: ChatList,
    keyword: Option<&str>,
    after: Option<(i64, DateTime<Utc>, String)>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<ChatView>, i64), sqlx::Error> {
    let mut params = Params::default();
    let user = params.add(Text(user_id));
    let mut filters = vec![
        format!("m.user_id = {user}"),
        "u.deleted_at IS NULL".to_string(),
    ];
    match which {
        ChatList::All | ChatList::Frequent => {}
        ChatList::Unread => filters.push("m.unread_count > 0".into()),
        ChatList::Pending => filters.push("c.request_status = 'pending'".into()),
    }
    let pattern = keyword.map(crate::directory::like);
    if let Some(pattern) = &pattern {
        let pattern = params.add(Text(pattern));
        filters.push(format!(
            "(LOWER(COALESCE(u.name, '')) LIKE {pattern} ESCAPE '\\'
              OR LOWER(COALESCE(c.request_text, '')) LIKE {pattern} ESCAPE '\\')"
        ));
    }
    // rank: messages in the last 30 days for `frequent`, else 0 (plain recency order).
    let rank = if which == ChatList::Frequent {
        let cutoff = params.add(Time(now - chrono::Duration::days(30)));
        format!(
            "(SELECT COUNT(*) FROM messages x WHERE x.chat_id = c.id AND x.created_at > {cutoff})"
        )
    } else {
        "0".to_string()
    };
    let listed = format!(
        "WITH listed AS (
            SELECT {CHAT_VIEW_COLUMNS}, {rank} AS rank
              FROM chat_members m JOIN chats c ON c.id = m.chat_id
              LEFT JOIN users u ON u.id = m.other_id
             WHERE {})",
        filters.join(" AND ")
    );
    let ranked_only = if which == ChatList::Frequent {
        "rank > 0"
    } else {
        "1 = 1"
    };
    let count_sql = format!("{listed} SELECT COUNT(*) FROM listed WHERE {ranked_only}");
    let count_params = params.clone();
    let keyset = match &after {
        Some((rank, at, id)) => {
            let (rank, at, id) = (
                params.add(Int(*rank)),
                params.add(Time(*at)),
                params.add(Text(id)),
            );
            format!(
                "AND (rank < {rank} OR (rank = {rank} AND (last_activity_at < {at}
                  OR (last_activity_at = {at} AND id < {id}))))"
            )
        }
        None => String::new(),
    };
    let page_sql = format!(
        "{listed} SELECT id, type, is_open, request_id, request_text, request_status, request_sender,
                request_at, last_message_id, total_messages, created_at, user_id, other_id,
                last_activity_at, read_seq, unread_count
           FROM listed WHERE {ranked_only} {keyset}
          ORDER BY rank DESC, last_activity_at DESC, id DESC LIMIT {limit}"
    );
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_scalar(&count_sql), count_params.binds).fetch_one(conn).await?
    });
    let rows = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_as::<_, ChatView>(&page_sql), params.binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

/// A message row with its sender's name.
#[derive(Debug, Clone, FromRow)]
pub struct MessageRow {
    pub id: String,
    pub chat_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub sender_name: Option<String>,
    pub client_id: Option<String>,
    #[sqlx(rename = "type")]
    pub message_type: String,
    pub text: String,
    pub is_request: bool,
    pub delivery_status: String,
    pub delivery_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The schedule or call a `schedule`/`call` message links.
    pub ref_id: Option<String>,
    pub schedule_title: Option<String>,
    pub schedule_type: Option<String>,
    pub schedule_recurrence: Option<String>,
    pub schedule_from: Option<DateTime<Utc>>,
    pub schedule_to: Option<DateTime<Utc>>,
}

const MESSAGE_COLUMNS: &str = "x.id, x.chat_id, x.seq, x.sender_id, u.name AS sender_name,
    x.client_id, x.type, x.text, x.is_request, x.delivery_status, x.delivery_at, x.created_at,
    x.ref_id, s.title AS schedule_title, s.type AS schedule_type,
    s.recurrence AS schedule_recurrence, s.starts_at AS schedule_from, s.ends_at AS schedule_to";

impl MessageRow {
    /// A text message as the projector stores it when it is sent: nobody has received it yet.
    #[allow(clippy::too_many_arguments)]
    pub fn sent_text(
        chat_id: &str,
        message_id: &str,
        seq: i64,
        sender: &str,
        sender_name: Option<String>,
        text: &str,
        client_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> MessageRow {
        MessageRow {
            id: message_id.to_string(),
            chat_id: chat_id.to_string(),
            seq,
            sender_id: sender.to_string(),
            sender_name,
            client_id: client_id.map(str::to_string),
            message_type: "text".to_string(),
            text: text.to_string(),
            is_request: false,
            delivery_status: "sent".to_string(),
            delivery_at: at,
            created_at: at,
            ref_id: None,
            schedule_title: None,
            schedule_type: None,
            schedule_recurrence: None,
            schedule_from: None,
            schedule_to: None,
        }
    }

    /// `basic_chat_message`.
    pub fn to_json(&self) -> Value {
        let mut message = json!({
            "id": self.id,
            "type": self.message_type,
            "text": self.text,
            "timestamp": iso(self.created_at),
            "sender": {"id": self.sender_id, "name": self.sender_name},
            "delivery": {"status": self.delivery_status, "at": iso(self.delivery_at)},
            "isRequest": self.is_request,
        });
        if let Some(client_id) = &self.client_id {
            message["clientId"] = json!(client_id);
        }
        match (self.message_type.as_str(), &self.ref_id) {
            ("schedule", Some(id)) => {
                message["schedule"] = json!({
                    "id": id,
                    "title": self.schedule_title,
                    "type": self.schedule_type,
                    "recurrence": self.schedule_recurrence,
                    "timeslot": {"from": self.schedule_from.map(iso), "to": self.schedule_to.map(iso)},
                });
            }
            ("call", Some(id)) => message["call"] = json!({ "id": id }),
            _ => {}
        }
        message
    }
}

async fn messages_where(
    source: Source<'_>,
    condition: &str,
    binds: &[Bind<'_>],
    tail: &str,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages x LEFT JOIN users u ON u.id = x.sender_id
           LEFT JOIN schedules s ON s.id = x.ref_id
          WHERE {condition} {tail}"
    );
    with_source!(source, conn => {
        bind_all!(sqlx::query_as::<_, MessageRow>(&sql), binds).fetch_all(conn).await
    })
}

pub async fn message(source: Source<'_>, id: &str) -> Result<Option<MessageRow>, sqlx::Error> {
    Ok(messages_where(source, "x.id = $1", &[Text(id)], "")
        .await?
        .into_iter()
        .next())
}

/// The messages of `chat_id` among `ids`, in chat order.
pub async fn messages_by_ids(
    source: Source<'_>,
    chat_id: &str,
    ids: &[String],
) -> Result<Vec<MessageRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let condition = format!(
        "x.chat_id = $1 AND x.id IN ({})",
        placeholders(2, ids.len())
    );
    let mut binds = vec![Text(chat_id)];
    binds.extend(ids.iter().map(|id| Text(id)));
    messages_where(source, &condition, &binds, "ORDER BY x.seq").await
}

/// The message `sender` already sent into `chat_id` with `client_id` (idempotent retries).
pub async fn message_by_client_id(
    source: Source<'_>,
    chat_id: &str,
    sender: &str,
    client_id: &str,
) -> Result<Option<MessageRow>, sqlx::Error> {
    let condition = "x.chat_id = $1 AND x.sender_id = $2 AND x.client_id = $3";
    Ok(messages_where(
        source,
        condition,
        &[Text(chat_id), Text(sender), Text(client_id)],
        "ORDER BY x.seq LIMIT 1",
    )
    .await?
    .into_iter()
    .next())
}

/// A page of a chat's messages, newest first, before `before_seq`.
pub async fn messages_page(
    source: Source<'_>,
    chat_id: &str,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    messages_where(
        source,
        "x.chat_id = $1 AND x.seq < $2",
        &[Text(chat_id), Int(before_seq.unwrap_or(i64::MAX))],
        &format!("ORDER BY x.seq DESC LIMIT {limit}"),
    )
    .await
}

/// The messages whose delivery status the event at `position` changed.
pub async fn receipts_at(
    source: Source<'_>,
    chat_id: &str,
    position: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    messages_where(
        source,
        // `> 0` names the partial index's condition (a generic plan cannot see it in `$2`).
        "x.chat_id = $1 AND x.receipt_position = $2 AND x.receipt_position > 0",
        &[Text(chat_id), Int(position)],
        "ORDER BY x.seq LIMIT 1000",
    )
    .await
}

/// `(id, seq)` of the given messages of `chat_id` that `reader` received (sent by the other
/// member); ids of other chats, unknown ids and the reader's own messages are left out.
pub async fn received_seqs(
    source: Source<'_>,
    chat_id: &str,
    reader: &str,
    ids: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let list = placeholders(3, ids.len());
    let sql = format!(
        "SELECT id, seq FROM messages WHERE chat_id = $1 AND sender_id <> $2 AND id IN ({list})"
    );
    with_source!(source, conn => {
        let mut query = sqlx::query_as(&sql).bind(chat_id).bind(reader);
        for id in ids {
            query = query.bind(id);
        }
        query.fetch_all(conn).await
    })
}

/// Total unread chats of a user.
pub async fn total_unread_chats(source: Source<'_>, user_id: &str) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM chat_members WHERE user_id = $1 AND unread_count > 0";
    with_source!(source, conn => sqlx::query_scalar(sql).bind(user_id).fetch_one(conn).await)
}

/// `total_unread_chats` of each of `user_ids` in one round trip (absent users have none).
pub async fn total_unread_chats_of(
    source: Source<'_>,
    user_ids: &[String],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT user_id, COUNT(*) FROM chat_members
          WHERE user_id {} AND unread_count > 0 GROUP BY user_id",
        one_of(source.is_postgres(), 1, user_ids.len())
    );
    let rows: Vec<(String, i64)> = with_source_by_store!(source, conn,
        postgres => sqlx::query_as(&sql).bind(user_ids).fetch_all(conn).await?,
        sqlite => {
            let mut query = sqlx::query_as(&sql);
            for id in user_ids {
                query = query.bind(id);
            }
            query.fetch_all(conn).await?
        }
    );
    Ok(rows.into_iter().collect())
}

/// Members of a chat.
pub async fn members(source: Source<'_>, chat_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT user_id FROM chat_members WHERE chat_id = $1 ORDER BY user_id";
    with_source!(source, conn => sqlx::query_scalar(sql).bind(chat_id).fetch_all(conn).await)
}

/// A connect request row.
#[derive(Debug, Clone, FromRow)]
pub struct ConnectRequestRow {
    pub id: String,
    pub chat_id: String,
    pub from_id: String,
    pub to_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConnectRequestRow {
    /// `connectRequest` without `user`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "from": {"id": self.from_id},
            "to": {"id": self.to_id},
            "timestamp": iso(self.created_at),
        })
    }
}

const REQUEST_COLUMNS: &str = "id, chat_id, from_id, to_id, status, created_at, updated_at";

pub async fn connect_request(
    source: Source<'_>,
    id: &str,
) -> Result<Option<ConnectRequestRow>, sqlx::Error> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM connect_requests WHERE id = $1");
    with_source!(source, conn => {
        sqlx::query_as::<_, ConnectRequestRow>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// The latest connect request of a chat (pair).
pub async fn latest_connect_request(
    source: Source<'_>,
    chat_id: &str,
) -> Result<Option<ConnectRequestRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM connect_requests WHERE chat_id = $1
          ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, ConnectRequestRow>(&sql).bind(chat_id).fetch_optional(conn).await
    })
}

/// Pending connect requests to (`received`) or from `user_id`, newest first, after the keyset.
pub async fn pending_requests(
    source: Source<'_>,
    user_id: &str,
    received: bool,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<ConnectRequestRow>, i64), sqlx::Error> {
    let side = if received { "r.to_id" } else { "r.from_id" };
    let other = if received { "r.from_id" } else { "r.to_id" };
    let base = format!(
        "FROM connect_requests r LEFT JOIN users u ON u.id = {other}
          WHERE {side} = $1 AND r.status = 'pending' AND u.deleted_at IS NULL"
    );
    let mut params = Params::default();
    params.add(Text(user_id));
    let keyset = match &after {
        Some((at, id)) => {
            let (at, id) = (params.add(Time(*at)), params.add(Text(id)));
            format!("AND (r.created_at < {at} OR (r.created_at = {at} AND r.id < {id}))")
        }
        None => String::new(),
    };
    let count_sql = format!("SELECT COUNT(*) {base}");
    let page_sql = format!(
        "SELECT r.id, r.chat_id, r.from_id, r.to_id, r.status, r.created_at, r.updated_at
           {base} {keyset} ORDER BY r.created_at DESC, r.id DESC LIMIT {limit}"
    );
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar(&count_sql).bind(user_id).fetch_one(conn).await?
    });
    let rows = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_as::<_, ConnectRequestRow>(&page_sql), params.binds)
            .fetch_all(conn)
            .await?
    });
    Ok((rows, total))
}

/// `(other user id, since)` of `user_id`'s connections, newest first, after the keyset.
pub async fn connections_page(
    source: Source<'_>,
    user_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<(String, DateTime<Utc>)>, i64), sqlx::Error> {
    let base = "FROM connections c LEFT JOIN users u ON u.id = c.other_id
                 WHERE c.user_id = $1 AND u.deleted_at IS NULL";
    let mut params = Params::default();
    params.add(Text(user_id));
    let keyset = match &after {
        Some((at, id)) => {
            let (at, id) = (params.add(Time(*at)), params.add(Text(id)));
            format!("AND (c.since < {at} OR (c.since = {at} AND c.other_id < {id}))")
        }
        None => String::new(),
    };
    let count_sql = format!("SELECT COUNT(*) {base}");
    let page_sql = format!(
        "SELECT c.other_id, c.since {base} {keyset} ORDER BY c.since DESC, c.other_id DESC LIMIT {limit}"
    );
    let mut source = source;
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar(&count_sql).bind(user_id).fetch_one(conn).await?
    });
    let rows = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_as(&page_sql), params.binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

/// Messages of a chat since `cutoff` (the rank of the `frequent` list).
pub async fn recent_activity(
    source: Source<'_>,
    chat_id: &str,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM messages WHERE chat_id = $1 AND created_at > $2";
    with_source!(source, conn => {
        sqlx::query_scalar(sql).bind(chat_id).bind(cutoff).fetch_one(conn).await
    })
}
