//! What connects a reader to the users they look at (the `viewer` part of a user shape, the
//! "connected" meta level, `matches` visibility) and a user's own counters
//! (`totalConnections`, `totalPendingRequests`, `totalUnreadChats`, `totalUnreadAlerts`).
//! Read from the chats and alerts read models when a user is rendered.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::db::{placeholders, Source};
use crate::with_source;

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

/// One row of the relations query: which part it answers (`kind`), the other user, and that
/// part's columns (unused ones are NULL).
type RelationRow = (
    String,
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
    let mut out: HashMap<String, Relation> = others
        .iter()
        .map(|id| (id.clone(), Relation::default()))
        .collect();
    if others.is_empty() {
        return Ok(out);
    }
    let list = placeholders(2, others.len());
    // `ord` orders the connect requests oldest first (the latest one wins below).
    let sql = format!(
        "SELECT 'request' AS kind, CASE WHEN from_id = $1 THEN to_id ELSE from_id END AS other,
                id AS a, status AS b, from_id AS c, CAST(NULL AS BIGINT) AS n,
                created_at AS ord
           FROM connect_requests
          WHERE (from_id = $1 AND to_id IN ({list})) OR (to_id = $1 AND from_id IN ({list}))
         UNION ALL
         SELECT 'chat', m.other_id, c.id, c.request_id, c.request_status, NULL, NULL
           FROM chat_members m JOIN chats c ON c.id = m.chat_id
          WHERE m.user_id = $1 AND m.other_id IN ({list})
         UNION ALL
         SELECT 'connected', other_id, NULL, NULL, NULL, NULL, NULL
           FROM connections WHERE user_id = $1 AND other_id IN ({list})
         UNION ALL
         SELECT 'connections', user_id, NULL, NULL, NULL, COUNT(*), NULL
           FROM connections WHERE user_id IN ({list}) GROUP BY user_id
         UNION ALL
         SELECT 'review', ratee_id, id, NULL, NULL, NULL, NULL
           FROM reviews WHERE rater_id = $1 AND ratee_id IN ({list})
         ORDER BY 1, 7, 3"
    );
    let rows: Vec<RelationRow> = with_source!(source, conn => {
        let mut query = sqlx::query_as::<_, RelationRow>(&sql).bind(reader);
        for id in others {
            query = query.bind(id);
        }
        query.fetch_all(conn).await?
    });
    for (kind, other, a, b, c, n) in rows {
        let Some(relation) = out.get_mut(&other) else {
            continue;
        };
        match (kind.as_str(), a) {
            ("request", Some(id)) => {
                let from = c.unwrap_or_default();
                let to = if from == reader {
                    other.clone()
                } else {
                    reader.to_string()
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
            ("connections", _) => relation.total_connections = n.unwrap_or(0),
            ("review", Some(review_id)) => relation.review_id = Some(review_id),
            _ => {}
        }
    }
    Ok(out)
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
    let sql = format!(
        "SELECT
        (SELECT COUNT(*) FROM connections WHERE user_id = $1),
        (SELECT COUNT(*) FROM connect_requests WHERE to_id = $1 AND status = 'pending')
          + (SELECT COUNT(*) FROM chats c JOIN chat_members m ON m.chat_id = c.id
              WHERE m.user_id = $1 AND c.request_status = 'pending' AND c.request_sender <> $1),
        (SELECT COUNT(*) FROM chat_members WHERE user_id = $1 AND unread_count > 0),
        (SELECT COUNT(*) FROM alerts WHERE user_id = $1 AND status = 'unread'),
        COALESCE((SELECT balance FROM ledger_accounts WHERE account = 'user:' || $1), 0),
        {},
        (SELECT MIN(id) FROM support_tickets WHERE user_id = $1 AND status = 'open')",
        crate::calls::CALLS_SINCE_SQL
    );
    type Row = (i64, i64, i64, i64, i64, i64, Option<String>);
    let (
        total_connections,
        total_pending_requests,
        total_unread_chats,
        total_unread_alerts,
        coins_balance,
        total_calls_today,
        open_ticket,
    ): Row = with_source!(source, conn => {
        sqlx::query_as(&sql).bind(user_id).bind(day_start).fetch_one(conn).await?
    });
    Ok(Counters {
        total_connections,
        total_pending_requests,
        total_unread_chats,
        total_unread_alerts,
        coins_balance,
        total_calls_today,
        open_ticket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(placeholders(1, 1), "$1");
    }
}
