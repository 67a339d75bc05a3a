//! Reading the `presence` table (written by each instance's socket hub): whether users have an
//! open socket on any live instance. Shared by the service and the feed's chat rendering.

use std::collections::HashSet;

use chrono::Utc;

use crate::db::{one_of, Source};
use crate::with_source_by_store;

/// Rows older than this are ignored (three missed 30 s heartbeats).
pub const STALE_AFTER_SECS: i64 = 90;

/// Which of `user_ids` have a socket on any live instance.
pub async fn online_among(
    source: Source<'_>,
    user_ids: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT DISTINCT user_id FROM presence WHERE sockets > 0 AND seen_at > $1 AND user_id {}",
        one_of(source.is_postgres(), 2, user_ids.len())
    );
    let fresh = Utc::now() - chrono::Duration::seconds(STALE_AFTER_SECS);
    let rows: Vec<String> = with_source_by_store!(source, conn,
        postgres => sqlx::query_scalar(&sql).bind(fresh).bind(user_ids).fetch_all(conn).await?,
        sqlite => {
            let mut query = sqlx::query_scalar(&sql).bind(fresh);
            for id in user_ids {
                query = query.bind(id);
            }
            query.fetch_all(conn).await?
        }
    );
    Ok(rows.into_iter().collect())
}
