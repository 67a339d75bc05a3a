//! Appending a command's events to the log.
//!
//! postgres-es and sqlite-es read the log for us (`get_events`, `get_snapshot`, ...), but their
//! `persist` does three things this service cannot live with: one INSERT per event, no way to
//! learn where the events landed in the global order (the command bus waits for the read
//! models to reach that point, which cost one more query per command), and a snapshot update
//! whose version check runs after the COMMIT (a stale snapshot version stores the events and
//! still reports a conflict, so a retried command would be stored twice). [`Appender`] wraps
//! their repository and replaces `persist`: one multi-row INSERT that returns the positions,
//! the snapshot written and checked inside the same transaction, then COMMIT.

use std::sync::{Arc, Mutex};

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;
use talkamie_projections::{with_pool, with_tx, Checkpoint, Db, DbTx};

/// Where the last append of an [`Appender`] landed (shared with the command bus).
pub type Appended = Arc<Mutex<Option<Checkpoint>>>;

/// A repository whose reads are `R`'s and whose appends are ours.
pub struct Appender<R> {
    reads: R,
    db: Db,
    appended: Appended,
}

impl<R> Appender<R> {
    pub fn new(reads: R, db: Db, appended: Appended) -> Self {
        Appender {
            reads,
            db,
            appended,
        }
    }
}

impl<R: PersistedEventRepository> PersistedEventRepository for Appender<R> {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let at = append::<A>(&self.db, events, snapshot_update)
            .await
            .map_err(persistence_error)?;
        if let Ok(mut appended) = self.appended.lock() {
            *appended = at;
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}

/// Why an append did not happen.
#[derive(Debug)]
enum AppendError {
    /// Another writer got to the stream (or its snapshot) first.
    Conflict,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        let duplicate = error
            .as_database_error()
            .and_then(|e| e.code())
            // PostgreSQL unique violation; SQLite UNIQUE and PRIMARY KEY constraints.
            .is_some_and(|code| matches!(code.as_ref(), "23505" | "2067" | "1555"));
        if duplicate {
            AppendError::Conflict
        } else {
            AppendError::Database(error)
        }
    }
}

fn persistence_error(error: AppendError) -> PersistenceError {
    match error {
        AppendError::Conflict => PersistenceError::OptimisticLockError,
        AppendError::Database(
            e @ (sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed),
        ) => PersistenceError::ConnectionError(Box::new(e)),
        AppendError::Database(e) => PersistenceError::UnknownError(Box::new(e)),
    }
}

const INSERT_EVENTS: &str = "INSERT INTO events
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    VALUES ";

/// Appends `events` (of one stream) and the snapshot in one transaction; returns where the
/// last event sits in the global order.
async fn append<A: Aggregate>(
    db: &Db,
    events: &[SerializedEvent],
    snapshot_update: Option<(String, Value, usize)>,
) -> Result<Option<Checkpoint>, AppendError> {
    if events.is_empty() {
        return Ok(None);
    }
    let values: Vec<String> = (0..events.len())
        .map(|i| {
            let p: Vec<String> = (1..=7).map(|c| format!("${}", 7 * i + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    let returning = if db.is_postgres() {
        "RETURNING transaction_id::text::bigint, position"
    } else {
        "RETURNING 0, position"
    };
    // A single event (nearly every command) is inserted only if its place in the stream is
    // free: a stale writer then writes nothing, where a failed INSERT would leave a dead row
    // and dead index entries behind (two instances writing one chat hit this at most sends).
    // Several events keep the plain INSERT: skipping some of them would store the rest.
    let on_conflict = if events.len() == 1 {
        "ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING"
    } else {
        ""
    };
    let sql = format!(
        "{INSERT_EVENTS}{} {on_conflict} {returning}",
        values.join(", ")
    );
    // A macro, not a closure: the query's type depends on the store.
    macro_rules! insert {
        () => {{
            let mut query = sqlx::query_as::<_, (i64, i64)>(&sql);
            for event in events {
                query = query
                    .bind(A::TYPE)
                    .bind(event.aggregate_id.as_str())
                    .bind(event.sequence as i64)
                    .bind(&event.event_type)
                    .bind(&event.event_version)
                    .bind(&event.payload)
                    .bind(&event.metadata);
            }
            query
        }};
    }
    let rows: Vec<(i64, i64)> = match snapshot_update {
        // One statement is atomic by itself: no BEGIN and COMMIT round trips (most appends).
        None => with_pool!(db, pool => insert!().fetch_all(pool).await?),
        Some((aggregate_id, payload, version)) => {
            let mut tx = db.begin_write().await?;
            let rows = with_tx!(&mut tx, conn => insert!().fetch_all(conn).await?);
            if rows.len() < events.len() {
                // The event's place was taken: no snapshot either (dropped, not committed).
                return Err(AppendError::Conflict);
            }
            let last_sequence = events.last().map_or(0, |e| e.sequence) as i64;
            write_snapshot::<A>(
                &mut tx,
                &aggregate_id,
                last_sequence,
                version as i64,
                &payload,
            )
            .await?;
            tx.commit().await?;
            rows
        }
    };
    // Fewer rows than events: the single event's place was taken (`ON CONFLICT DO NOTHING`).
    if rows.len() < events.len() {
        return Err(AppendError::Conflict);
    }
    Ok(rows
        .into_iter()
        .map(|(xid, position)| Checkpoint { xid, position })
        .max())
}

/// The first snapshot of a stream, or the next version of it (checked: the one it replaces
/// must be the version the command was decided on).
async fn write_snapshot<A: Aggregate>(
    tx: &mut DbTx,
    aggregate_id: &str,
    last_sequence: i64,
    version: i64,
    payload: &Value,
) -> Result<(), AppendError> {
    let changed = with_tx!(tx, conn => {
        if version == 1 {
            sqlx::query(
                "INSERT INTO snapshots
                    (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(last_sequence)
            .bind(version)
            .bind(payload)
            .execute(conn)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE snapshots SET last_sequence = $3, payload = $5, current_snapshot = $4
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $6",
            )
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(last_sequence)
            .bind(version)
            .bind(payload)
            .bind(version - 1)
            .execute(conn)
            .await?
            .rows_affected()
        }
    });
    // Nothing replaced: another writer moved the snapshot on. The transaction is dropped
    // without a COMMIT, so the events go with it.
    if changed == 1 {
        Ok(())
    } else {
        Err(AppendError::Conflict)
    }
}
