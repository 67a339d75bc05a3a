//! Read model `calls`: one row per call (`basic_call`, `full_call`, the call history), from the
//! Call streams. The call timers read it for calls still ringing or running, and the billing
//! sweep for ended calls not settled yet.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::call::{Call, CallEvent, EndReason};

use crate::bind_all;
use crate::db::{exec, Bind, Params, Source};
use crate::relations::iso;
use crate::{with_source, DbTx, ProjectionError, StoredEvent};
use Bind::{Int, Text, Time};

pub const TABLES: &[&str] = &["calls"];

pub fn is_call_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <Call as cqrs_es::Aggregate>::TYPE
}

/// `at + seconds`, unless that is beyond any real call (a free call has no limit).
fn after(at: DateTime<Utc>, seconds: i64) -> Option<DateTime<Utc>> {
    const TEN_YEARS: i64 = 10 * 366 * 24 * 3600;
    if seconds > TEN_YEARS {
        return None;
    }
    at.checked_add_signed(Duration::try_seconds(seconds)?)
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if !is_call_event(event) {
        return Ok(());
    }
    let id = event.aggregate_id.as_str();
    match event.decode::<CallEvent>()? {
        CallEvent::Started {
            chat_id,
            caller,
            callee,
            kind,
            schedule_id,
            coins_per_minute,
            limit_secs,
            at,
        } => {
            let limit = after(at, limit_secs).map(|_| limit_secs);
            exec(
                tx,
                "INSERT INTO calls (id, chat_id, caller_id, callee_id, type, status, schedule_id,
                                    coins_per_minute, limit_secs, started_at)
                 VALUES ($1, $2, $3, $4, $5, 'ringing', $6, $7, $8, $9)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    Text(id),
                    Text(&chat_id),
                    Text(&caller),
                    Text(&callee),
                    Text(kind.as_str()),
                    Bind::OptText(schedule_id.as_deref()),
                    Int(coins_per_minute),
                    Bind::OptInt(limit),
                    Time(at),
                ],
            )
            .await?;
        }
        CallEvent::Accepted { at } => {
            let limit: Option<i64> = match find(tx.into(), id).await? {
                Some(row) => row.limit_secs,
                None => None,
            };
            let limit_at = limit.and_then(|secs| after(at, secs));
            exec(
                tx,
                "UPDATE calls SET status = 'accepted', accepted_at = $2, limit_at = $3
                  WHERE id = $1",
                &[Text(id), Time(at), Bind::OptTime(limit_at)],
            )
            .await?;
        }
        CallEvent::Rejected { at } => finish(tx, id, "rejected", at).await?,
        CallEvent::Missed { at } => finish(tx, id, "missed", at).await?,
        CallEvent::Ended {
            by,
            reason,
            duration_secs,
            price_coins,
            at,
        } => {
            let reason = match reason {
                EndReason::HungUp => "hung-up",
                EndReason::LimitReached => "limit-reached",
                EndReason::ConnectionLost => "connection-lost",
            };
            exec(
                tx,
                "UPDATE calls SET status = 'ended', finished_at = $2, ended_by = $3,
                                  end_reason = $4, duration_secs = $5, price_coins = $6
                  WHERE id = $1",
                &[
                    Text(id),
                    Time(at),
                    Bind::OptText(by.as_deref()),
                    Text(reason),
                    Int(duration_secs),
                    Int(price_coins),
                ],
            )
            .await?;
        }
        CallEvent::Billed {
            charged_coins,
            earned_coins,
            at,
            ..
        } => {
            exec(
                tx,
                "UPDATE calls SET charged_coins = $2, earned_coins = $3, billed_at = $4
                  WHERE id = $1",
                &[Text(id), Int(charged_coins), Int(earned_coins), Time(at)],
            )
            .await?;
        }
    }
    Ok(())
}

async fn finish(
    tx: &mut DbTx,
    id: &str,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    exec(
        tx,
        "UPDATE calls SET status = $2, finished_at = $3 WHERE id = $1",
        &[Text(id), Text(status), Time(at)],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct CallRow {
    pub id: String,
    pub chat_id: String,
    pub caller_id: String,
    pub callee_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub status: String,
    pub schedule_id: Option<String>,
    pub coins_per_minute: i64,
    pub limit_secs: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub limit_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
    pub duration_secs: i64,
    pub price_coins: i64,
    pub charged_coins: Option<i64>,
    pub earned_coins: Option<i64>,
    pub billed_at: Option<DateTime<Utc>>,
}

const CALL_COLUMNS: &str = "c.id, c.chat_id, c.caller_id, c.callee_id, c.type, c.status,
    c.schedule_id, c.coins_per_minute, c.limit_secs, c.started_at, c.accepted_at, c.limit_at,
    c.finished_at, c.ended_by, c.end_reason, c.duration_secs, c.price_coins, c.charged_coins,
    c.earned_coins, c.billed_at";

impl CallRow {
    pub fn is_member(&self, user_id: &str) -> bool {
        user_id == self.caller_id || user_id == self.callee_id
    }

    pub fn other_side(&self, viewer: &str) -> &str {
        if viewer == self.caller_id {
            &self.callee_id
        } else {
            &self.caller_id
        }
    }

    /// Still ringing or running.
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "ringing" | "accepted")
    }

    /// `basic_call` as `viewer` sees it, with `user` (the other side, already rendered).
    pub fn to_json(&self, viewer: &str, user: Value) -> Value {
        let direction = if viewer == self.caller_id {
            "outgoing"
        } else {
            "incoming"
        };
        let mut call = json!({
            "id": self.id,
            "type": self.kind,
            "status": self.status,
            "direction": direction,
            "duration": self.duration_secs,
            "user": user,
            "timestamp": iso(self.started_at),
            "chat": {"id": self.chat_id},
        });
        if let Some(schedule) = &self.schedule_id {
            call["schedule"] = json!({ "id": schedule });
        }
        if let (Some(charged), Some(earned)) = (self.charged_coins, self.earned_coins) {
            call["coins"] = json!({ "charged": charged, "earned": earned });
        }
        call
    }

    /// `full_call`: the basic shape plus both sides, the times, the limit and the price.
    pub fn to_full_json(&self, viewer: &str, user: Value) -> Value {
        let mut call = self.to_json(viewer, user);
        let extra = json!({
            "caller": {"id": self.caller_id},
            "callee": {"id": self.callee_id},
            "startedAt": iso(self.started_at),
            "acceptedAt": self.accepted_at.map(iso),
            "endedAt": self.finished_at.map(iso),
            "endedBy": self.ended_by.as_ref().map(|id| json!({"id": id})),
            "endReason": self.end_reason,
            "coinsPerMinute": self.coins_per_minute,
            "maxDuration": self.limit_secs.map_or(json!("unlimited"), |s| json!(s)),
            "price": self.price_coins,
        });
        crate::profiles::merge(&mut call, extra);
        call
    }
}

pub async fn find(source: Source<'_>, id: &str) -> Result<Option<CallRow>, sqlx::Error> {
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls c WHERE c.id = $1");
    with_source!(source, conn => {
        sqlx::query_as::<_, CallRow>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// Whether `a` and `b` talked: a call between them was answered and has ended.
pub async fn ended_between(source: Source<'_>, a: &str, b: &str) -> Result<bool, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM calls
                WHERE status = 'ended' AND accepted_at IS NOT NULL
                  AND ((caller_id = $1 AND callee_id = $2) OR (caller_id = $2 AND callee_id = $1))";
    let n: i64 = with_source!(source, conn => {
        sqlx::query_scalar(sql).bind(a).bind(b).fetch_one(conn).await?
    });
    Ok(n > 0)
}

/// Which calls of a user a query looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// Ringing or running.
    Open,
    /// Ringing, running, or ended and not billed yet.
    OpenOrUnbilled,
}

/// The user's calls (either side) that are still open (or, as asked, not billed yet).
pub async fn unfinished_of(
    source: Source<'_>,
    user_id: &str,
    which: Unfinished,
) -> Result<Vec<CallRow>, sqlx::Error> {
    let unbilled = match which {
        Unfinished::Open => "",
        Unfinished::OpenOrUnbilled => " OR (c.status = 'ended' AND c.billed_at IS NULL)",
    };
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM calls c
          WHERE (c.status IN ('ringing', 'accepted'){unbilled})
            AND (c.caller_id = $1 OR c.callee_id = $1)
          ORDER BY c.started_at"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, CallRow>(&sql).bind(user_id).fetch_all(conn).await
    })
}

/// One page of `user_id`'s calls, latest first; `after` is the previous page's last
/// `(started_at, id)`. `keyword` matches the other person's name.
pub async fn page(
    mut source: Source<'_>,
    user_id: &str,
    keyword: Option<&str>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<CallRow>, i64), sqlx::Error> {
    let mut params = Params::default();
    let user = params.add(Text(user_id));
    let mut filters = vec![format!("(c.caller_id = {user} OR c.callee_id = {user})")];
    let pattern = keyword.map(crate::directory::like);
    if let Some(pattern) = &pattern {
        let pattern = params.add(Text(pattern));
        filters.push(format!(
            "LOWER(COALESCE(u.name, '')) LIKE {pattern} ESCAPE '\\'"
        ));
    }
    let from = format!(
        "FROM calls c LEFT JOIN users u
           ON u.id = CASE WHEN c.caller_id = {user} THEN c.callee_id ELSE c.caller_id END"
    );
    let count_sql = format!("SELECT COUNT(*) {from} WHERE {}", filters.join(" AND "));
    let count_binds = params.binds.clone();
    let total: i64 = with_source!(source.reborrow(), conn => {
        bind_all!(sqlx::query_scalar(&count_sql), count_binds).fetch_one(conn).await?
    });
    if let Some((at, id)) = &after {
        let (at, id) = (params.add(Time(*at)), params.add(Text(id)));
        filters.push(format!(
            "(c.started_at < {at} OR (c.started_at = {at} AND c.id < {id}))"
        ));
    }
    let sql = format!(
        "SELECT {CALL_COLUMNS} {from} WHERE {}
          ORDER BY c.started_at DESC, c.id DESC LIMIT {limit}",
        filters.join(" AND ")
    );
    let rows = with_source!(source, conn => {
        bind_all!(sqlx::query_as::<_, CallRow>(&sql), params.binds).fetch_all(conn).await?
    });
    Ok((rows, total))
}

/// What a call timer has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Rang without an answer since before the ring timeout.
    Miss(String),
    /// Running past its limit.
    End(String),
}

/// Calls ringing since before `rang_before`, and running calls whose limit is at or before
/// `now`.
pub async fn due(
    source: Source<'_>,
    rang_before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    let rows: Vec<(String, String)> = with_source!(source, conn => {
        sqlx::query_as(
            "SELECT id, status FROM calls
              WHERE (status = 'ringing' AND started_at <= $1)
                 OR (status = 'accepted' AND limit_at <= $2)
              ORDER BY started_at LIMIT $3",
        )
        .bind(rang_before)
        .bind(now)
        .bind(limit)
        .fetch_all(conn)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(id, status)| match status.as_str() {
            "ringing" => Due::Miss(id),
            _ => Due::End(id),
        })
        .collect())
}

/// Every running call: `(id, caller, callee)`.
pub async fn running(source: Source<'_>) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_as(
            "SELECT id, caller_id, callee_id FROM calls WHERE status = 'accepted'
              ORDER BY started_at",
        )
        .fetch_all(conn)
        .await
    })
}

/// Ended calls that ended before `before` and are not settled yet (billing sagas that
/// stopped half-way).
pub async fn unbilled(
    source: Source<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_scalar(
            "SELECT id FROM calls WHERE status = 'ended' AND billed_at IS NULL AND finished_at < $1
              ORDER BY finished_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(conn)
        .await
    })
}

/// The SQL counting the calls of the user in `user` (an SQL expression) that connected since
/// `since` (`dailyInfo.totalCalls`).
pub fn calls_since_sql(user: &str, since: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM calls WHERE (caller_id = {user} OR callee_id = {user})
             AND accepted_at >= {since})"
    )
}
