//! Presence across instances: each instance records how many sockets each user has on it, and
//! refreshes its rows on a heartbeat; `online` is any fresh row with sockets. A crashed
//! instance's rows go stale and stop counting.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use talkamie_projections::{with_pool, Db};

pub const HEARTBEAT: Duration = Duration::from_secs(30);
pub use talkamie_projections::presence::STALE_AFTER_SECS;

/// Stores this instance's socket count for a user (0 removes the row).
pub async fn record(
    db: &Db,
    instance: &str,
    user_id: &str,
    sockets: usize,
) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        if sockets == 0 {
            sqlx::query("DELETE FROM presence WHERE instance_id = $1 AND user_id = $2")
                .bind(instance)
                .bind(user_id)
                .execute(pool)
                .await
                .map(|_| ())
        } else {
            sqlx::query(
                "INSERT INTO presence (instance_id, user_id, sockets, seen_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance_id, user_id) DO UPDATE SET sockets = excluded.sockets, seen_at = excluded.seen_at",
            )
            .bind(instance)
            .bind(user_id)
            .bind(sockets as i64)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())
        }
    })
}

/// Refreshes every row of this instance (the heartbeat).
pub async fn refresh(db: &Db, instance: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("UPDATE presence SET seen_at = $2 WHERE instance_id = $1")
            .bind(instance)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Removes this instance's rows (graceful shutdown).
pub async fn clear(db: &Db, instance: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM presence WHERE instance_id = $1")
            .bind(instance)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Which of `user_ids` have a socket on any live instance.
pub async fn online_among(db: &Db, user_ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    talkamie_projections::presence::online_among(db.into(), user_ids).await
}
