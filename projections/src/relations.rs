//! What connects a reader to the users they look at (the `viewer` part of a user shape, the
//! "connected" meta level, `matches` visibility) and a user's own counters
//! (`totalConnections`, `totalPendingRequests`, `totalUnreadChats`, `totalUnreadAlerts`).
//! Read from the chats and alerts read models when a user is rendered.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::db::{one_of, Source};
use crate::{with_source, with_source_by_store};

/// The reader's relation to one other user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relation {
    pub connected: bool,
    /// `{id, request?}` of the pair's chat, when it exists.
    pub chat: Option<Value>,
    /// The pair's latest connect request `{id, status, from{id}, to{id}}`.
    pub connect_request: Option<Value>,
    /// The other user's number of connections.
    pub total_connections: i64,
    /// The id of the reader's review of this user.
    pub review_id: Option<String>,
}

/// A user's own counters (the `extended_user` totals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub total_connections: i64,
    /// Connect and message requests waiting for this user's answer.
    pub total_pending_requests: i64,
    pub total_unread_chats: i64,
    pub total_unread_alerts: i64,
    /// The user's wallet balance (`ledger.coins.balance`).
    pub coins_balance: i64,
    /// Calls that connected since the start of the user's day (`dailyInfo.totalCalls`).
    pub total_calls_today: i64,
    /// The user's open support ticket (`support.ticket`).
    pub open_ticket: Option<String>,
}

pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One row of the relations queries: which part it answers (`kind`), the reader and the other
/// user, and that part's columns (unused ones are NULL).
pub(crate) type RelationRow = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// The relations of `reader` to each of `others` (users without any relation get the default).
/// One round trip: the five parts are one `UNION ALL` (this renders every user in every list and
/// push, so it sits on the projector's serial path).
pub async fn relations(
    source: Source<'_>,
    reader: &str,
    others: &[String],
) -> Result<HashMap<String, Relation>, sqlx::Error> {
    if others.is_empty() {
        return Ok(HashMap::new());
    }
    let list = one_of(source.is_postgres(), 2, others.len());
    // `ord` orders the connect requests oldest first (the latest one wins below).
    let sql = format!(
        "SELECT 'request' AS kind, $1 AS reader,
                CASE WHEN from_id = $1 THEN to_id ELSE from_id END AS other,
                id AS a, status AS b, from_id AS c, CAST(NULL AS BIGINT) AS n,
                created_at AS ord
           FROM connect_requests
          WHERE (from_id = $1 AND to_id {list}) OR (to_id = $1 AND from_id {list})
         UNION ALL
         SELECT 'chat', $1, m.other_id, c.id, c.request_id, c.request_status, NULL, NULL
           FROM chat_members m JOIN chats c ON c.id = m.chat_id
          WHERE m.user_id = $1 AND m.other_id {list}
         UNION ALL
         SELECT 'connected', $1, other_id, NULL, NULL, NULL, NULL, NULL
           FROM connections WHERE user_id = $1 AND other_id {list}
         UNION ALL
         SELECT 'connections', NULL, user_id, NULL, NULL, NULL, COUNT(*), NULL
           FROM connections WHERE user_id {list} GROUP BY user_id
         UNION ALL
         SELECT 'review', $1, ratee_id, id, NULL, NULL, NULL, NULL
           FROM reviews WHERE rater_id = $1 AND ratee_id {list}
         ORDER BY 1, 8, 4"
    );
    let rows: Vec<RelationRow> = with_source_by_store!(source, conn,
        postgres => {
            sqlx::query_as::<_, RelationRow>(&sql)
                .bind(reader)
                .bind(others)
                .fetch_all(conn)
                .await?
        },
        sqlite => {
            let mut query = sqlx::query_as::<_, RelationRow>(&sql).bind(reader);
            for id in others {
                query = query.bind(id);
            }
            query.fetch_all(conn).await?
        }
    );
    let pairs: Vec<(String, String)> = others
        .iter()
        .map(|other| (reader.to_string(), other.clone()))
        .collect();
    Ok(fold(&pairs, rows)
        .into_iter()
        .map(|((_, other), relation)| (other, relation))
        .collect())
}

/// The parts of the relations query over the pairs `p (reader, other)`, ordered by `1, 8, 4`
/// (the message runs add parts of their own to it).
pub(crate) const BETWEEN_PARTS: &str = "
         SELECT 'request' AS kind, p.reader, p.other, r.id AS a, r.status AS b, r.from_id AS c,
                CAST(NULL AS BIGINT) AS n, r.created_at AS ord
           FROM p JOIN connect_requests r
             ON (r.from_id = p.reader AND r.to_id = p.other)
             OR (r.to_id = p.reader AND r.from_id = p.other)
         UNION ALL
         SELECT 'chat', p.reader, p.other, c.id, c.request_id, c.request_status, NULL, NULL
           FROM p JOIN chat_members m ON m.user_id = p.reader AND m.other_id = p.other
           JOIN chats c ON c.id = m.chat_id
         UNION ALL
         SELECT 'connected', p.reader, p.other, NULL, NULL, NULL, NULL, NULL
           FROM p JOIN connections k ON k.user_id = p.reader AND k.other_id = p.other
         UNION ALL
         SELECT 'connections', NULL, user_id, NULL, NULL, NULL, COUNT(*), NULL
           FROM connections WHERE user_id IN (SELECT other FROM p) GROUP BY user_id
         UNION ALL
         SELECT 'review', p.reader, p.other, v.id, NULL, NULL, NULL, NULL
           FROM p JOIN reviews v ON v.rater_id = p.reader AND v.ratee_id = p.other";

/// The relations of each `(reader, other)` pair, in one round trip (a projector round renders
/// the chats of many readers at once).
pub async fn between(
    source: Source<'_>,
    pairs: &[(String, String)],
) -> Result<HashMap<(String, String), Relation>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let pair_rows = pair_rows(source.is_postgres(), pairs.len(), "text");
    let sql = format!("WITH p (reader, other) AS ({pair_rows}) {BETWEEN_PARTS} ORDER BY 1, 8, 4");
    let rows: Vec<RelationRow> = with_source_by_store!(source, conn,
        postgres => {
            let (readers, others): (Vec<&str>, Vec<&str>) =
                pairs.iter().map(|(r, o)| (r.as_str(), o.as_str())).unzip();
            sqlx::query_as::<_, RelationRow>(&sql)
                .bind(readers)
                .bind(others)
                .fetch_all(conn)
                .await?
        },
        sqlite => {
            let mut query = sqlx::query_as::<_, RelationRow>(&sql);
            for (reader, other) in pairs {
                query = query.bind(reader).bind(other);
            }
            query.fetch_all(conn).await?
        }
    );
    Ok(fold(pairs, rows))
}

/// `n` pairs bound from `$1` as the rows of a two-column `WITH` (the second column of SQL type
/// `second`): on PostgreSQL two arrays, unnested (one statement text for any number of pairs;
/// see `one_of`); on SQLite, which binds no arrays, a `VALUES` list.
fn pair_rows(postgres: bool, n: usize, second: &str) -> String {
    if postgres {
        format!("SELECT * FROM UNNEST($1::text[], $2::{second}[])")
    } else {
        let values: Vec<String> = (0..n)
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        format!("VALUES {}", values.join(", "))
    }
}

/// Folds the rows of a relations query into one `Relation` per pair.
pub(crate) fn fold(
    pairs: &[(String, String)],
    rows: Vec<RelationRow>,
) -> HashMap<(String, String), Relation> {
    let mut out: HashMap<(String, String), Relation> = pairs
        .iter()
        .map(|pair| (pair.clone(), Relation::default()))
        .collect();
    for (kind, reader, other, a, b, c, n) in rows {
        let Some(reader) = reader else {
            // A count of the other user's connections: the same for every reader.
            for ((_, o), relation) in out.iter_mut() {
                if *o == other {
                    relation.total_connections = n.unwrap_or(0);
                }
            }
            continue;
        };
        let Some(relation) = out.get_mut(&(reader.clone(), other.clone())) else {
            continue;
        };
        match (kind.as_str(), a) {
            ("request", Some(id)) => {
                let from = c.unwrap_or_default();
                let to = if from == reader {
                    other.clone()
                } else {
                    reader.clone()
                };
                relation.connect_request =
                    Some(json!({ "id": id, "status": b, "from": {"id": from}, "to": {"id": to} }));
            }
            ("chat", Some(chat_id)) => {
                let mut chat = json!({ "id": chat_id });
                if let (Some(id), Some(status)) = (b, c) {
                    chat["request"] = json!({ "id": id, "status": status });
                }
                relation.chat = Some(chat);
            }
            ("connected", _) => relation.connected = true,
            ("review", Some(review_id)) => relation.review_id = Some(review_id),
            _ => {}
        }
    }
    out
}

/// Whether two users are connected now.
pub async fn connected(source: Source<'_>, a: &str, b: &str) -> Result<bool, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM connections WHERE user_id = $1 AND other_id = $2";
    let n: i64 = with_source!(source, conn => {
        sqlx::query_scalar(sql).bind(a).bind(b).fetch_one(conn).await?
    });
    Ok(n > 0)
}

/// The counters of `user_id`, in one round trip; `day_start` is midnight in the user's zone.
pub async fn counters(
    source: Source<'_>,
    user_id: &str,
    day_start: DateTime<Utc>,
) -> Result<Counters, sqlx::Error> {
    let sql = format!("SELECT {}", counters_columns("$1", "$2"));
    let row: CountersRow = with_source!(source, conn => {
        sqlx::query_as(&sql).bind(user_id).bind(day_start).fetch_one(conn).await?
    });
    Ok(Counters::from(row))
}

/// The counters of several users at once (a projector round's `user.update` pushes), each
/// `(user, start of their day)`: one statement for any number of them.
pub async fn counters_of_many(
    source: Source<'_>,
    users: &[(String, DateTime<Utc>)],
) -> Result<HashMap<String, Counters>, sqlx::Error> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = pair_rows(source.is_postgres(), users.len(), "timestamptz");
    let sql = format!(
        "WITH u (id, day_start) AS ({rows}) SELECT u.id, {} FROM u",
        counters_columns("u.id", "u.day_start")
    );
    type Row = (String, i64, i64, i64, i64, i64, i64, Option<String>);
    let found: Vec<Row> = with_source_by_store!(source, conn,
        postgres => {
            let (ids, days): (Vec<&str>, Vec<DateTime<Utc>>) =
                users.iter().map(|(id, day)| (id.as_str(), *day)).unzip();
            sqlx::query_as(&sql).bind(ids).bind(days).fetch_all(conn).await?
        },
        sqlite => {
            let mut query = sqlx::query_as(&sql);
            for (id, day) in users {
                query = query.bind(id).bind(day);
            }
            query.fetch_all(conn).await?
        }
    );
    Ok(found
        .into_iter()
        .map(|(id, a, b, c, d, e, f, g)| (id, Counters::from((a, b, c, d, e, f, g))))
        .collect())
}

type CountersRow = (i64, i64, i64, i64, i64, i64, Option<String>);

impl From<CountersRow> for Counters {
    fn from(row: CountersRow) -> Self {
        Counters {
            total_connections: row.0,
            total_pending_requests: row.1,
            total_unread_chats: row.2,
            total_unread_alerts: row.3,
            coins_balance: row.4,
            total_calls_today: row.5,
            open_ticket: row.6,
        }
    }
}

/// The counters' select list for the user in `user` and the start of their day in `day_start`
/// (SQL expressions: placeholders, or the columns of a list of users).
fn counters_columns(user: &str, day_start: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM connections WHERE user_id = {user}),
        (SELECT COUNT(*) FROM connect_requests WHERE to_id = {user} AND status = 'pending')
          + (SELECT COUNT(*) FROM chats c JOIN chat_members m ON m.chat_id = c.id
              WHERE m.user_id = {user} AND c.request_status = 'pending'
                AND c.request_sender <> {user}),
        (SELECT COUNT(*) FROM chat_members WHERE user_id = {user} AND unread_count > 0),
        (SELECT COUNT(*) FROM alerts WHERE user_id = {user} AND status = 'unread'),
        COALESCE((SELECT balance FROM ledger_accounts WHERE account = 'user:' || {user}), 0),
        {},
        (SELECT MIN(id) FROM support_tickets WHERE user_id = {user} AND status = 'open')",
        crate::calls::calls_since_sql(user, day_start)
    )
}
