//! The command bus: load the aggregate, let it decide, append its events with optimistic
//! concurrency (cqrs-es `EventStore`), retry a bounded number of times on a conflict, then wait
//! until the read models include the write (read-your-writes).
//!
//! It drives cqrs-es's `EventStore` directly rather than `CqrsFramework::execute` because the
//! caller needs the committed events (e.g. "this refresh ended the session") and their global
//! position; `CqrsFramework` returns `()`. No cqrs-es `Query` is used (not durable).

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlite_es::SqliteEventRepository;
use talkamie_projections::{with_pool, Checkpoint, Db};

use super::append::{Appended, Appender};
use super::cache::Cached;
use super::Store;

/// Who asked and in which request; stored with every event.
pub type Metadata = HashMap<String, String>;

/// Metadata of a command the server issues itself (`actor`: which part of it).
pub fn system_metadata(actor: &str) -> Metadata {
    Metadata::from([("actor".to_string(), actor.to_string())])
}

/// Attempts of one command when another writer of the same aggregate got there first
/// (a busy wallet: a top-up, a withdrawal and a payout landing at once).
const MAX_ATTEMPTS: u32 = 10;
/// Aggregates snapshot every so many events, so long streams load quickly.
const SNAPSHOT_EVERY: usize = 100;
/// How long a command waits for the read models before answering 503.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command (a rule was broken).
    #[error(transparent)]
    Rejected(E),
    /// Still conflicting after `MAX_ATTEMPTS` tries.
    #[error("the resource was changed concurrently; try again")]
    Conflict,
    /// The database did not answer.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Written, but the read models did not catch up in time.
    #[error("the write was stored but the read models are lagging")]
    Lagging,
    /// As many commands as the instance takes at once are in flight (load shedding).
    #[error("the server is at capacity; try again in a moment")]
    Overloaded,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Whether a command's caller waits for the read models to include its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Projected {
    /// Answers read from the read models (every command a client sees the end of).
    Wait,
    /// A saga's step whose next step decides on aggregates alone: the saga's last step waits,
    /// and its events come after this one's in the log.
    DontWait,
}

impl Store {
    /// Executes `command` on aggregate `id`; returns the events it appended (maybe none) once
    /// the read models include them.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: Clone + Send,
    {
        self.execute_and::<A>(id, command, metadata, Projected::Wait)
            .await
    }

    /// `execute` for a saga step that is not the saga's last: it does not wait for the read
    /// models (the last step's wait covers it), so a booking waits for the projector once.
    pub async fn execute_step<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: Clone + Send,
    {
        self.execute_and::<A>(id, command, metadata, Projected::DontWait)
            .await
    }

    async fn execute_and<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
        projected: Projected,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: Clone + Send,
    {
        let started = std::time::Instant::now();
        let result = self
            .execute_within_capacity::<A>(id, command, metadata, projected)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict) => "conflict",
            Err(CommandError::Overloaded) => "overloaded",
            Err(CommandError::Unavailable(_) | CommandError::Lagging) => "unavailable",
            Err(CommandError::Internal(_)) => "error",
        };
        metrics::counter!(crate::metrics::COMMANDS, "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(crate::metrics::COMMAND_DURATION, "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_within_capacity<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
        projected: Projected,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: Clone + Send,
    {
        // Beyond capacity a command is refused now rather than queued: queued commands only
        // grow everyone's latency (each waits for the projector behind all the others).
        let Ok(_in_flight) = self.commands_in_flight.try_acquire() else {
            return Err(CommandError::Overloaded);
        };
        let mut attempt = 0;
        let appended = Appended::default();
        let (committed, decided_on) = loop {
            attempt += 1;
            let result = match &self.db {
                Db::Sqlite(pool) => {
                    let reads = SqliteEventRepository::new(pool.clone());
                    let repo = Appender::new(reads, self.db.clone(), appended.clone());
                    let store =
                        PersistedEventStore::<_, A>::new_snapshot_store(repo, SNAPSHOT_EVERY);
                    self.decide_and_append(&store, id, &command, &metadata, attempt)
                        .await
                }
                Db::Postgres(pool) => {
                    let reads = PostgresEventRepository::new(pool.clone());
                    let repo = Appender::new(reads, self.db.clone(), appended.clone());
                    let store =
                        PersistedEventStore::<_, A>::new_snapshot_store(repo, SNAPSHOT_EVERY);
                    self.decide_and_append(&store, id, &command, &metadata, attempt)
                        .await
                }
            };
            match result {
                Ok(decided) => break decided,
                Err(AggregateError::UserError(error)) => return Err(CommandError::Rejected(error)),
                Err(error) if is_conflict(&error) => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(CommandError::Conflict);
                    }
                    // Growing, jittered pauses so racing writers do not collide again in
                    // lockstep (at most ~0.5 s in all before giving up).
                    let ceiling = (2u64 << attempt.min(6)).min(100);
                    let pause = rand::thread_rng().gen_range(1..=ceiling);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(error) => return Err(classify(error)),
            }
        };
        // Read-your-writes also for a command that changed nothing: it was decided on the
        // aggregate's last event, which a concurrent writer may have appended and the read
        // models may not show yet (two sockets marking the same message read: the second one
        // answered "sent" when the first one's receipt was stored but not projected).
        if projected == Projected::DontWait {
            return Ok(committed.into_iter().map(|e| e.payload).collect());
        }
        let sequence = committed.last().map_or(decided_on, |last| last.sequence);
        let landed = appended.lock().ok().and_then(|at| *at);
        if sequence > 0 {
            let target = match landed.filter(|_| !committed.is_empty()) {
                Some(target) => Ok(target),
                None => self.position_of(A::TYPE, id, sequence).await,
            };
            let target = match target {
                Ok(target) => target,
                // A no-op on an aggregate whose last event is gone (tampered with): nothing
                // to wait for; the audit reports the tampering.
                Err(sqlx::Error::RowNotFound) if committed.is_empty() => {
                    return Ok(vec![]);
                }
                Err(e) => return Err(classify_sqlx(&e)),
            };
            if !self
                .projector
                .wait_for(target, READ_YOUR_WRITES_TIMEOUT)
                .await
            {
                return Err(CommandError::Lagging);
            }
        }
        Ok(committed.into_iter().map(|e| e.payload).collect())
    }

    /// Where an appended event sits in the global order.
    async fn position_of(
        &self,
        aggregate_type: &str,
        id: &str,
        sequence: usize,
    ) -> Result<Checkpoint, sqlx::Error> {
        let sql = match self.db {
            Db::Postgres(_) => {
                "SELECT transaction_id::text::bigint, position FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
            }
            Db::Sqlite(_) => {
                "SELECT 0, position FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
            }
        };
        let (xid, position): (i64, i64) = with_pool!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(aggregate_type)
                .bind(id)
                .bind(sequence as i64)
                .fetch_one(pool)
                .await?
        });
        Ok(Checkpoint { xid, position })
    }
}

impl Store {
    /// Decides on the cached copy of the aggregate (or a fresh load) and appends: the appended
    /// events and the sequence of the last event the decision was based on.
    ///
    /// Only an append is decided on a cached copy, because only an append checks that the copy
    /// is not behind the stream (another instance, or the CLI, may have appended since): a
    /// conflict sends the command round again on a fresh load. A refusal or a no-op is decided
    /// on a fresh load, and so is an append across a snapshot boundary (cqrs-es checks the
    /// snapshot version, which must come from the database).
    /// Decides `command` and appends its events. On a cached copy when it can (see the
    /// module's cache notes); a copy that another instance's appends made stale conflicts, and
    /// if it was marked contended it is caught up with just the newer events and decided once
    /// more, instead of a fresh load after a pause (two members of a chat on two instances
    /// make each instance's copy stale at almost every message).
    async fn decide_and_append<A, ES>(
        &self,
        store: &ES,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        attempt: u32,
    ) -> Result<(Vec<EventEnvelope<A>>, usize), AggregateError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        A::Command: Clone,
        ES: EventStore<A, AC = EventStoreAggregateContext<A>>,
    {
        // A retry after a conflict: this aggregate has another writer.
        let contended = attempt > 1;
        if let Some(cached) = self.aggregates.take::<A>(A::TYPE, id) {
            // Deciding changes the copy in place: keep the state before it when a conflict
            // is likely, to catch up from.
            let mut before = cached
                .contended
                .then(|| (cached.aggregate.clone(), cached.sequence, cached.snapshot));
            let mut context = EventStoreAggregateContext {
                aggregate_id: id.to_string(),
                aggregate: cached.aggregate,
                current_sequence: cached.sequence,
                current_snapshot: cached.snapshot,
            };
            // At most twice: as cached, then caught up once.
            loop {
                let decided_on = context.current_sequence;
                let sink = EventSink::default();
                let decision = context
                    .aggregate()
                    .handle(command.clone(), &(), &sink)
                    .await;
                let events = sink.collect().await;
                if decision.is_err()
                    || events.is_empty()
                    || snapshot_due(context.current_sequence, events.len())
                {
                    break;
                }
                let result = self
                    .commit(
                        store,
                        id,
                        events,
                        context,
                        metadata.clone(),
                        cached.contended,
                    )
                    .await
                    .map(|committed| (committed, decided_on));
                match (result, before.take()) {
                    (Err(error), Some((aggregate, sequence, snapshot))) if is_conflict(&error) => {
                        match catch_up::<A>(&self.db, id, aggregate, sequence).await {
                            // The snapshot version is only known from a fresh load.
                            Ok((aggregate, caught_up))
                                if caught_up / SNAPSHOT_EVERY == sequence / SNAPSHOT_EVERY =>
                            {
                                metrics::counter!(crate::metrics::COMMAND_COPY_CATCH_UPS,
                                    "aggregate" => A::TYPE)
                                .increment(1);
                                context = EventStoreAggregateContext {
                                    aggregate_id: id.to_string(),
                                    aggregate,
                                    current_sequence: caught_up,
                                    current_snapshot: snapshot,
                                };
                            }
                            _ => return Err(AggregateError::AggregateConflict),
                        }
                    }
                    (result, _) => return result,
                }
            }
        }
        let mut context = store.load_aggregate(id).await?;
        let decided_on = context.current_sequence;
        let sink = EventSink::default();
        let decision = context
            .aggregate()
            .handle(command.clone(), &(), &sink)
            .await;
        let events = sink.collect().await;
        if let Err(error) = decision {
            // Every aggregate decides before it writes: refused, the copy is as loaded.
            if events.is_empty() {
                self.keep(id, context, contended);
            }
            return Err(AggregateError::UserError(error));
        }
        if events.is_empty() {
            self.keep(id, context, contended);
            return Ok((vec![], decided_on));
        }
        self.commit(store, id, events, context, metadata.clone(), contended)
            .await
            .map(|committed| (committed, decided_on))
    }

    /// Appends `events` decided on `context`, and caches the aggregate as they leave it.
    async fn commit<A, ES>(
        &self,
        store: &ES,
        id: &str,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: Metadata,
        contended: bool,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone + 'static,
        ES: EventStore<A, AC = EventStoreAggregateContext<A>>,
    {
        // `EventSink::write` applied the events to the aggregate as it decided: `after` is the
        // state they leave.
        let after = context.aggregate.clone();
        let snapshot = if snapshot_due(context.current_sequence, events.len()) {
            Some(context.current_snapshot.map_or(1, |v| v + 1))
        } else {
            context.current_snapshot
        };
        let committed = store.commit(events, context, metadata).await?;
        let Some(last) = committed.last().map(|e| e.sequence) else {
            return Ok(committed);
        };
        self.aggregates.put(
            A::TYPE,
            id,
            Cached {
                aggregate: after,
                sequence: last,
                snapshot,
                contended,
            },
        );
        Ok(committed)
    }

    /// Puts back a copy that a command did not change.
    fn keep<A: Aggregate + 'static>(
        &self,
        id: &str,
        context: EventStoreAggregateContext<A>,
        contended: bool,
    ) {
        self.aggregates.put(
            A::TYPE,
            id,
            Cached {
                aggregate: context.aggregate,
                sequence: context.current_sequence,
                snapshot: context.current_snapshot,
                contended,
            },
        );
    }
}

/// Applies the events stored after `sequence` to `aggregate`; returns it and its new sequence.
/// The repository is made here, not per command: only a conflict on a contended copy needs it.
async fn catch_up<A: Aggregate>(
    db: &Db,
    id: &str,
    mut aggregate: A,
    sequence: usize,
) -> Result<(A, usize), AggregateError<A::Error>> {
    let newer = match db {
        Db::Postgres(pool) => {
            PostgresEventRepository::new(pool.clone())
                .get_last_events::<A>(id, sequence)
                .await?
        }
        Db::Sqlite(pool) => {
            SqliteEventRepository::new(pool.clone())
                .get_last_events::<A>(id, sequence)
                .await?
        }
    };
    let mut reached = sequence;
    for serialized in newer {
        let envelope = EventEnvelope::<A>::try_from(serialized)?;
        reached = envelope.sequence;
        aggregate.apply(envelope.payload);
    }
    Ok((aggregate, reached))
}

/// Whether appending `new_events` after `sequence` makes cqrs-es write a snapshot (its
/// `SourceOfTruth::Snapshot` rule: the stream crosses a multiple of `SNAPSHOT_EVERY`).
fn snapshot_due(sequence: usize, new_events: usize) -> bool {
    new_events >= SNAPSHOT_EVERY - (sequence % SNAPSHOT_EVERY)
}

/// postgres-es reports a duplicate (aggregate, sequence) as `AggregateConflict`; sqlite-es only
/// recognises primary-key violations, and our SQLite log keeps the sequence in a UNIQUE index
/// (the primary key is the global position), so that case arrives as an unexpected error.
fn is_conflict<E: std::error::Error>(error: &AggregateError<E>) -> bool {
    match error {
        AggregateError::AggregateConflict => true,
        AggregateError::UnexpectedError(inner) => inner
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|e| e.code())
            .is_some_and(|code| matches!(code.as_ref(), "2067" | "1555" | "23505")),
        _ => false,
    }
}

fn classify<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e.to_string()),
        AggregateError::UnexpectedError(e) => match e.downcast_ref::<sqlx::Error>() {
            Some(sqlx_error) => classify_sqlx(sqlx_error),
            None => CommandError::Internal(e.to_string()),
        },
        other => CommandError::Internal(other.to_string()),
    }
}

fn classify_sqlx<E: std::error::Error>(error: &sqlx::Error) -> CommandError<E> {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            CommandError::Unavailable(error.to_string())
        }
        other => CommandError::Internal(other.to_string()),
    }
}
