//! Read model `feed`: the WebSocket push feed. One ordered row per recipient and push
//! (`position`, `user_id`, `action`, `payload`). Every instance tails it and delivers rows to
//! its local sockets; a client that reconnects with `since` gets the rows it missed.
//! Rows are kept 7 days (`prune`).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use talkamie_aggregates::user::{User, UserEvent};

use crate::{users, with_pool, with_tx, Db, DbTx, ProjectionError, StoredEvent};

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
}

/// Writes the pushes an event causes; returns how many rows it wrote.
pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<usize, ProjectionError> {
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
            push(tx, user_id, SESSION_ENDED, &payload, event.recorded_at).await?;
            return Ok(1);
        }
        _ => return Ok(0),
    }
    let Some(user) = users::find_by_id_tx(tx, user_id).await? else {
        return Ok(0);
    };
    // Pushes go to a connected socket of the user, so `online` is true from their side.
    let payload = json!({ "user": user.extended(true) });
    push(tx, user_id, "user.update", &payload, event.recorded_at).await?;
    Ok(1)
}

async fn push(
    tx: &mut DbTx,
    user_id: &str,
    action: &str,
    payload: &Value,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    with_tx!(tx, conn => {
        sqlx::query("INSERT INTO feed (user_id, action, payload, created_at) VALUES ($1, $2, $3, $4)")
            .bind(user_id)
            .bind(action)
            .bind(Json(payload))
            .bind(at)
            .execute(conn)
            .await
                    .map(|r| r.rows_affected())?
    });
    Ok(())
}

type RawRow = (i64, String, String, Json<Value>);

fn to_rows(raw: Vec<RawRow>) -> Vec<FeedRow> {
    raw.into_iter()
        .map(|(position, user_id, action, payload)| FeedRow {
            position,
            user_id,
            action,
            payload: payload.0,
        })
        .collect()
}

/// Rows of every user after `after` (the instance tailer).
pub async fn read_after(db: &Db, after: i64, limit: i64) -> Result<Vec<FeedRow>, sqlx::Error> {
    let sql = "SELECT position, user_id, action, payload FROM feed
                WHERE position > $1 ORDER BY position LIMIT $2";
    let raw: Vec<RawRow> = with_pool!(db, pool => {
        sqlx::query_as(sql).bind(after).bind(limit).fetch_all(pool).await?
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
    let sql = "SELECT position, user_id, action, payload FROM feed
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
