//! The projector's hot path: a run of consecutive sent text messages, applied as a set.
//!
//! One at a time, a sent message costs about a dozen statements on the projector's serial path:
//! insert it, bump its chat and both members, then read back the message, the members' views,
//! their unread totals, the other member's row, their relation and presence to render the
//! pushes. A run reads what it needs once, replays its messages in memory in log order (so
//! every push shows exactly the counts it would have shown one at a time), and writes the
//! messages, the chats and the members with one statement each: a handful of statements for
//! the whole run. Messages with an attachment (schedule, call) take the per-event path.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use talkamie_aggregates::pair::{Pair, PairEvent};

use crate::chat_views::render_basic_chat;
use crate::chats::{self, ChatView, MessageRow};
use crate::db::{exec, Bind};
use crate::feed::Pushes;
use crate::relations::{self, Relation};
use crate::users::{self, UserRecord};
use crate::{presence, DbTx, ProjectionError, StoredEvent};

/// Rows per statement of a run (7 parameters each: well under both stores' limits).
pub const MAX_RUN: usize = 500;

/// A sent text message, as the run needs it.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub chat_id: String,
    pub message_id: String,
    pub sender: String,
    pub text: String,
    pub client_id: Option<String>,
    pub seq: i64,
    pub at: DateTime<Utc>,
}

impl SentMessage {
    /// The event as a plain sent message (text, no attachment), if it is one. An event that
    /// cannot be decoded is left to the per-event path, which reports it.
    pub fn from_event(event: &StoredEvent) -> Option<SentMessage> {
        if event.event_type != "MessageSent"
            || event.aggregate_type != <Pair as cqrs_es::Aggregate>::TYPE
        {
            return None;
        }
        match event.decode::<PairEvent>().ok()? {
            PairEvent::MessageSent {
                message_id,
                sender,
                text,
                client_id,
                attachment: None,
                seq,
                at,
            } => Some(SentMessage {
                chat_id: event.aggregate_id.clone(),
                message_id,
                sender,
                text,
                client_id,
                seq: i64::try_from(seq).ok()?,
                at,
            }),
            _ => None,
        }
    }
}

/// Applies `run` to the chats read model (when `write_chats`) and renders its pushes into
/// `pushes` (when given), as applying the messages one at a time would.
pub async fn apply(
    tx: &mut DbTx,
    run: &[SentMessage],
    write_chats: bool,
    pushes: Option<&mut Pushes>,
) -> Result<(), ProjectionError> {
    if run.is_empty() || (!write_chats && pushes.is_none()) {
        return Ok(());
    }
    let mut chat_ids: Vec<String> = Vec::new();
    for message in run {
        if !chat_ids.contains(&message.chat_id) {
            chat_ids.push(message.chat_id.clone());
        }
    }
    let mut views = chats::views_of_chats(tx.into(), &chat_ids).await?;
    let mut members_of: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, view) in views.iter().enumerate() {
        members_of.entry(view.id.clone()).or_default().push(i);
    }
    let mut renderer = match pushes {
        Some(out) => Some((Renderer::load(tx, &views, run).await?, out)),
        None => None,
    };
    let no_members = Vec::new();
    for message in run {
        let members = members_of.get(&message.chat_id).unwrap_or(&no_members);
        for &i in members {
            let view = &mut views[i];
            view.last_activity_at = message.at;
            view.last_message_id = Some(message.message_id.clone());
            view.total_messages += 1;
            if view.user_id != message.sender {
                if view.unread_count == 0 {
                    if let Some((renderer, _)) = renderer.as_mut() {
                        *renderer
                            .unread_chats
                            .entry(view.user_id.clone())
                            .or_default() += 1;
                    }
                }
                view.unread_count += 1;
            }
        }
        if let Some((renderer, out)) = renderer.as_mut() {
            let members: Vec<&ChatView> = members.iter().map(|&i| &views[i]).collect();
            renderer.render(message, &members, out);
        }
    }
    if write_chats {
        if let DbTx::Postgres(pg) = tx {
            write_run_postgres(pg, run, &views).await?;
        } else {
            insert_messages(tx, run).await?;
            bump_chats(tx, run).await?;
            store_members(tx, &views).await?;
        }
    }
    Ok(())
}

/// PostgreSQL: the run's messages, its chats' bumps and its members' counts in one statement
/// (data-modifying `WITH`: three tables, none read by another part), so the projector's
/// serial path pays one round trip for them, not three. Every column is an array
/// (`UNNEST`): the statement's text is the same for any run, so it is prepared once per
/// connection, and a rebuild's run of 500 messages is 7 arrays, not 3,500 parameters.
async fn write_run_postgres(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    run: &[SentMessage],
    views: &[ChatView],
) -> Result<(), ProjectionError> {
    let mut messages = MessageColumns::with_capacity(run.len());
    for m in run {
        messages.push(m);
    }
    let bumps = chat_bumps(run);
    let member_views = views.iter();
    sqlx::query(
        "WITH new_messages AS (
             INSERT INTO messages (id, chat_id, seq, sender_id, client_id, type, text, is_request,
                                   delivery_status, delivery_at, created_at)
             SELECT id, chat_id, seq, sender_id, client_id, 'text', text, FALSE, 'sent', at, at
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                           $6::text[], $7::timestamptz[])
                    AS m (id, chat_id, seq, sender_id, client_id, text, at)
         ), bumped_chats AS (
             UPDATE chats SET last_message_id = b.last_message_id,
                              total_messages = total_messages + b.sent, updated_at = b.at
               FROM UNNEST($8::text[], $9::text[], $10::int8[], $11::timestamptz[])
                    AS b (id, last_message_id, sent, at)
              WHERE chats.id = b.id
         )
         UPDATE chat_members SET unread_count = v.unread_count, last_activity_at = v.at
           FROM UNNEST($12::text[], $13::text[], $14::int8[], $15::timestamptz[])
                AS v (chat_id, user_id, unread_count, at)
          WHERE chat_members.chat_id = v.chat_id AND chat_members.user_id = v.user_id",
    )
    .bind(messages.ids)
    .bind(messages.chat_ids)
    .bind(messages.seqs)
    .bind(messages.senders)
    .bind(messages.client_ids)
    .bind(messages.texts)
    .bind(messages.ats)
    .bind(bumps.iter().map(|b| b.chat_id).collect::<Vec<_>>())
    .bind(bumps.iter().map(|b| b.last_message_id).collect::<Vec<_>>())
    .bind(bumps.iter().map(|b| b.sent).collect::<Vec<_>>())
    .bind(bumps.iter().map(|b| b.at).collect::<Vec<_>>())
    .bind(
        member_views
            .clone()
            .map(|v| v.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        member_views
            .clone()
            .map(|v| v.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        member_views
            .clone()
            .map(|v| v.unread_count)
            .collect::<Vec<_>>(),
    )
    .bind(member_views.map(|v| v.last_activity_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// PostgreSQL: the unread totals of `members`, which of `people` are online and the relations
/// of `pairs` in one round trip (the projector's serial path; they were three statements), as
/// extra parts of the relations query (`n` carries the unread count). The users are read on
/// their own: their rows do not fit its columns.
async fn load_postgres(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    members: &[String],
    people: &[String],
    pairs: &[(String, String)],
) -> Result<Renderer, ProjectionError> {
    let sql = format!(
        "WITH p (reader, other) AS (SELECT * FROM UNNEST($1::text[], $2::text[]))
         {parts}
         UNION ALL
         SELECT 'unread', NULL, user_id, NULL, NULL, NULL, COUNT(*), NULL
           FROM chat_members WHERE user_id = ANY($3) AND unread_count > 0 GROUP BY user_id
         UNION ALL
         SELECT 'online', NULL, user_id, NULL, NULL, NULL, NULL, NULL
           FROM presence WHERE sockets > 0 AND seen_at > $5 AND user_id = ANY($4)
          GROUP BY user_id
         ORDER BY 1, 8, 4",
        parts = relations::BETWEEN_PARTS
    );
    let (readers, others): (Vec<&str>, Vec<&str>) =
        pairs.iter().map(|(r, o)| (r.as_str(), o.as_str())).unzip();
    let fresh = Utc::now() - chrono::Duration::seconds(presence::STALE_AFTER_SECS);
    let rows: Vec<relations::RelationRow> = sqlx::query_as(&sql)
        .bind(readers)
        .bind(others)
        .bind(members)
        .bind(people)
        .bind(fresh)
        .fetch_all(&mut **tx)
        .await?;
    let mut unread_chats = HashMap::new();
    let mut online = HashSet::new();
    let mut relation_rows = Vec::with_capacity(rows.len());
    for row in rows {
        match row.0.as_str() {
            "unread" => {
                unread_chats.insert(row.2, row.6.unwrap_or(0));
            }
            "online" => {
                online.insert(row.2);
            }
            _ => relation_rows.push(row),
        }
    }
    Ok(Renderer {
        unread_chats,
        users: HashMap::new(),
        online,
        relations: relations::fold(pairs, relation_rows),
    })
}

/// What the pushes of a run are rendered from, read once at its start. Messages change none of
/// it but the unread totals, which the run keeps up to date itself.
struct Renderer {
    unread_chats: HashMap<String, i64>,
    users: HashMap<String, UserRecord>,
    online: HashSet<String>,
    relations: HashMap<(String, String), Relation>,
}

impl Renderer {
    async fn load(
        tx: &mut DbTx,
        views: &[ChatView],
        run: &[SentMessage],
    ) -> Result<Renderer, ProjectionError> {
        let mut members: Vec<String> = views.iter().map(|v| v.user_id.clone()).collect();
        members.sort();
        members.dedup();
        let mut people = members.clone();
        people.extend(run.iter().map(|m| m.sender.clone()));
        people.extend(views.iter().map(|v| v.other_id.clone()));
        people.sort();
        people.dedup();
        let pairs: Vec<(String, String)> = views
            .iter()
            .map(|v| (v.user_id.clone(), v.other_id.clone()))
            .collect();
        let users = users::find_many(tx.into(), &people).await?;
        if let DbTx::Postgres(pg) = tx {
            return Ok(Renderer {
                users,
                ..load_postgres(pg, &members, &people, &pairs).await?
            });
        }
        Ok(Renderer {
            unread_chats: chats::total_unread_chats_of(tx.into(), &members).await?,
            users,
            online: presence::online_among(tx.into(), &people).await?,
            relations: relations::between(tx.into(), &pairs).await?,
        })
    }

    /// The pushes of one message: `chat.message.new` to every member (the recipient, and the
    /// sender's other sockets) and `chats.update` to the recipients (as `feed` renders them).
    fn render(&self, message: &SentMessage, members: &[&ChatView], out: &mut Pushes) {
        let row = MessageRow::sent_text(
            &message.chat_id,
            &message.message_id,
            message.seq,
            &message.sender,
            self.users.get(&message.sender).and_then(|u| u.name.clone()),
            &message.text,
            message.client_id.as_deref(),
            message.at,
        );
        let rendered = row.to_json();
        for view in members {
            let viewer = json!({
                "id": view.user_id,
                "totalUnreadChats": self.unread_chats.get(&view.user_id).copied().unwrap_or(0),
            });
            let payload = json!({
                "chat": {"id": message.chat_id, "totalUnreadMessages": view.unread_count},
                "message": rendered,
                "viewer": viewer,
            });
            out.add(&view.user_id, "chat.message.new", &payload, message.at);
            if view.user_id != message.sender {
                let key = (view.user_id.clone(), view.other_id.clone());
                let relation = self.relations.get(&key).cloned().unwrap_or_default();
                let chat = render_basic_chat(
                    view,
                    self.users.get(&view.other_id),
                    HashMap::from([(view.other_id.clone(), relation)]),
                    self.online.contains(&view.other_id),
                    Some(rendered.clone()),
                );
                let payload = json!({ "chatsMap": { &message.chat_id: chat }, "viewer": viewer });
                out.add(&view.user_id, "chats.update", &payload, message.at);
            }
        }
    }
}

/// `(` `$n, ...` `)` groups for `rows` rows of `width` parameters each.
fn value_groups(rows: usize, width: usize, template: impl Fn(&[String]) -> String) -> String {
    (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=width)
                .map(|col| format!("${}", row * width + col))
                .collect();
            template(&params)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQLite: the run's messages in one multi-row INSERT.
async fn insert_messages(tx: &mut DbTx, run: &[SentMessage]) -> Result<(), ProjectionError> {
    let values = value_groups(run.len(), 7, |p| {
        format!(
            "({}, {}, {}, {}, {}, 'text', {}, FALSE, 'sent', {}, {})",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[6]
        )
    });
    let sql = format!(
        "INSERT INTO messages (id, chat_id, seq, sender_id, client_id, type, text, is_request,
                               delivery_status, delivery_at, created_at)
         VALUES {values}"
    );
    let mut binds = Vec::with_capacity(run.len() * 7);
    for m in run {
        binds.extend([
            Bind::Text(&m.message_id),
            Bind::Text(&m.chat_id),
            Bind::Int(m.seq),
            Bind::Text(&m.sender),
            Bind::OptText(m.client_id.as_deref()),
            Bind::Text(&m.text),
            Bind::Time(m.at),
        ]);
    }
    exec(tx, &sql, &binds).await?;
    Ok(())
}

/// A chat's change by a run: its last message, how many were sent, when.
struct ChatBump<'a> {
    chat_id: &'a str,
    last_message_id: &'a str,
    sent: i64,
    at: DateTime<Utc>,
}

/// One bump per chat of the run, in the order the chats first appear.
fn chat_bumps(run: &[SentMessage]) -> Vec<ChatBump<'_>> {
    let mut bumps: Vec<ChatBump> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for m in run {
        let i = *index.entry(&m.chat_id).or_insert_with(|| {
            bumps.push(ChatBump {
                chat_id: &m.chat_id,
                last_message_id: &m.message_id,
                sent: 0,
                at: m.at,
            });
            bumps.len() - 1
        });
        let bump = &mut bumps[i];
        bump.last_message_id = &m.message_id;
        bump.sent += 1;
        bump.at = m.at;
    }
    bumps
}

/// SQLite: each chat's last message, message count and update time, one row per chat.
async fn bump_chats(tx: &mut DbTx, run: &[SentMessage]) -> Result<(), ProjectionError> {
    let bumps = chat_bumps(run);
    let values = value_groups(bumps.len(), 4, |p| format!("({})", p.join(", ")));
    let sql = format!(
        "WITH v (id, last_message_id, sent, at) AS (VALUES {values})
         UPDATE chats SET last_message_id = v.last_message_id,
                          total_messages = total_messages + v.sent, updated_at = v.at
           FROM v WHERE chats.id = v.id"
    );
    let mut binds = Vec::with_capacity(bumps.len() * 4);
    for bump in &bumps {
        binds.extend([
            Bind::Text(bump.chat_id),
            Bind::Text(bump.last_message_id),
            Bind::Int(bump.sent),
            Bind::Time(bump.at),
        ]);
    }
    exec(tx, &sql, &binds).await?;
    Ok(())
}

/// SQLite: the members' unread counts and activity as the run left them (read under the
/// projector's lock at the run's start, so absolute values are safe).
async fn store_members(tx: &mut DbTx, views: &[ChatView]) -> Result<(), ProjectionError> {
    if views.is_empty() {
        return Ok(());
    }
    let values = value_groups(views.len(), 4, |p| format!("({})", p.join(", ")));
    let sql = format!(
        "WITH v (chat_id, user_id, unread_count, at) AS (VALUES {values})
         UPDATE chat_members SET unread_count = v.unread_count, last_activity_at = v.at
           FROM v WHERE chat_members.chat_id = v.chat_id AND chat_members.user_id = v.user_id"
    );
    let mut binds = Vec::with_capacity(views.len() * 4);
    for view in views {
        binds.extend([
            Bind::Text(&view.id),
            Bind::Text(&view.user_id),
            Bind::Int(view.unread_count),
            Bind::Time(view.last_activity_at),
        ]);
    }
    exec(tx, &sql, &binds).await?;
    Ok(())
}

/// A run's messages column by column (PostgreSQL's `UNNEST`).
struct MessageColumns<'a> {
    ids: Vec<&'a str>,
    chat_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    senders: Vec<&'a str>,
    client_ids: Vec<Option<&'a str>>,
    texts: Vec<&'a str>,
    ats: Vec<DateTime<Utc>>,
}

impl<'a> MessageColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        MessageColumns {
            ids: Vec::with_capacity(n),
            chat_ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            senders: Vec::with_capacity(n),
            client_ids: Vec::with_capacity(n),
            texts: Vec::with_capacity(n),
            ats: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, m: &'a SentMessage) {
        self.ids.push(&m.message_id);
        self.chat_ids.push(&m.chat_id);
        self.seqs.push(m.seq);
        self.senders.push(&m.sender);
        self.client_ids.push(m.client_id.as_deref());
        self.texts.push(&m.text);
        self.ats.push(m.at);
    }
}
