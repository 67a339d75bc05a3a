//! Reading the global event log in commit-safe order.
//!
//! PostgreSQL: positions come from a sequence, and a transaction that took a lower position can
//! commit after one that took a higher position. Reading `position > checkpoint` would skip it.
//! So the order is `(transaction_id, position)` and only events of transactions older than
//! `pg_snapshot_xmin(pg_current_snapshot())` are read: every such transaction has ended, and
//! every transaction still to commit has a larger id, so nothing can appear behind a checkpoint.
//! SQLite has a single writer, so position order is commit order (transaction id is always 0).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use crate::{with_tx, DbTx, ProjectionError};

/// A point in the global order: `(transaction id, position)`, compared in that order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    pub xid: i64,
    pub position: i64,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: i64,
    pub xid: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            xid: self.xid,
            position: self.position,
        }
    }

    /// Decodes the payload as the event type of one aggregate.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, ProjectionError> {
        serde_json::from_value(self.payload.clone()).map_err(|source| ProjectionError::BadEvent {
            position: self.position,
            event_type: self.event_type.clone(),
            source,
        })
    }
}

const PG_READ_AFTER: &str = "
SELECT position, transaction_id::text::bigint AS xid, aggregate_type, aggregate_id, sequence,
       event_type, payload, metadata, recorded_at
  FROM events
 WHERE (transaction_id, position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, position
 LIMIT $3";

const SQLITE_READ_AFTER: &str = "
SELECT position, 0 AS xid, aggregate_type, aggregate_id, sequence,
       event_type, payload, metadata, recorded_at
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

/// Reads up to `limit` events after `after`, in the global order, inside `tx`.
pub async fn read_after(
    tx: &mut DbTx,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<StoredEvent>, ProjectionError> {
    let rows = match tx {
        DbTx::Postgres(_) => with_tx!(tx, conn => {
            sqlx::query(PG_READ_AFTER)
                .bind(after.xid.to_string())
                .bind(after.position)
                .bind(limit)
                .fetch_all(conn)
                .await?
                .iter()
                .map(row_to_event)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        }),
        DbTx::Sqlite(_) => with_tx!(tx, conn => {
            sqlx::query(SQLITE_READ_AFTER)
                .bind(after.position)
                .bind(limit)
                .fetch_all(conn)
                .await?
                .iter()
                .map(row_to_event)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        }),
    };
    Ok(rows)
}

fn row_to_event<R: Row>(row: &R) -> Result<StoredEvent, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Json<Value>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    Ok(StoredEvent {
        position: row.try_get("position")?,
        xid: row.try_get("xid")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get::<Json<Value>, _>("payload")?.0,
        metadata: row.try_get::<Json<Value>, _>("metadata")?.0,
        recorded_at: row.try_get("recorded_at")?,
    })
}
