//! The catch-up projector: global log -> read models, checkpointed.
//!
//! One round = one transaction: take the projector lock, read the checkpoints, read the next
//! batch of events after the lowest one, apply each event to every projection that has not
//! seen it yet, store the new checkpoints, commit. At-least-once reading, exactly-once effect.
//! Instances sharing a database serialise on the lock (PostgreSQL advisory lock; SQLite's
//! single writer), so a batch is applied by exactly one of them.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::feed::{Pushes, ReadyPush};
use crate::log::{read_after, Checkpoint, StoredEvent};
use crate::message_runs::{self, SentMessage};
use crate::{
    alerts, calls, chats, feed, ledger, reviews, schedules, support, users, with_tx, Db, DbTx,
    ProjectionError,
};
use sqlx::types::Json;

const BATCH_SIZE: i64 = 500;
/// Fallback poll: picks up writes of other instances when no wake-up arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Channel that other instances LISTEN on; one NOTIFY per batch that wrote push rows.
pub const FEED_CHANNEL: &str = "talkamie_feed";

/// Every read model, in the order they are applied to each event (alerts read the chats and
/// ledger tables, and the feed renders from all the others, so it comes last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Projection {
    Users,
    Chats,
    Ledger,
    Schedules,
    Calls,
    Reviews,
    Support,
    Alerts,
    Feed,
}

impl Projection {
    pub const ALL: [Projection; 9] = [
        Projection::Users,
        Projection::Chats,
        Projection::Ledger,
        Projection::Schedules,
        Projection::Calls,
        Projection::Reviews,
        Projection::Support,
        Projection::Alerts,
        Projection::Feed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Users => "users",
            Projection::Chats => "chats",
            Projection::Ledger => "ledger",
            Projection::Schedules => "schedules",
            Projection::Calls => "calls",
            Projection::Reviews => "reviews",
            Projection::Support => "support",
            Projection::Alerts => "alerts",
            Projection::Feed => "feed",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, ProjectionError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_string()))
    }

    /// The tables this projection owns (rebuild empties them).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Users => users::TABLES,
            Projection::Chats => chats::TABLES,
            Projection::Ledger => ledger::TABLES,
            Projection::Schedules => schedules::TABLES,
            Projection::Calls => calls::TABLES,
            Projection::Reviews => reviews::TABLES,
            Projection::Support => support::TABLES,
            Projection::Alerts => alerts::TABLES,
            Projection::Feed => feed::TABLES,
        }
    }

    /// The read models this one renders from at each event (the other person's name, the
    /// transaction a posting changed, the schedule a cancellation ends). Rebuilt alone, it
    /// would see their state as of now instead of as of each event (`alerts` alone lost the
    /// alert of every transaction changed again since), so a rebuild of it rebuilds them too.
    pub fn renders_from(self) -> &'static [Projection] {
        match self {
            Projection::Alerts => &[
                Projection::Users,
                Projection::Chats,
                Projection::Ledger,
                Projection::Schedules,
            ],
            _ => &[],
        }
    }

    /// The feed is a delivery log whose positions are cursors held by clients: replaying it
    /// would hand out new positions for old pushes, so it is never rebuilt.
    pub fn rebuildable(self) -> bool {
        !matches!(self, Projection::Feed)
    }

    async fn apply(
        self,
        tx: &mut DbTx,
        event: &StoredEvent,
        pushes: &mut Pushes,
    ) -> Result<(), ProjectionError> {
        match self {
            Projection::Users => users::apply(tx, event).await,
            Projection::Chats => chats::apply(tx, event).await,
            Projection::Ledger => {
                let changed = ledger::apply(tx, event).await?;
                pushes.note_transactions(event.position, changed);
                Ok(())
            }
            Projection::Schedules => schedules::apply(tx, event).await,
            Projection::Calls => calls::apply(tx, event).await,
            Projection::Reviews => reviews::apply(tx, event).await,
            Projection::Support => support::apply(tx, event).await,
            Projection::Alerts => {
                let transactions = pushes.noted_transactions(event.position);
                let written = alerts::apply(tx, event, transactions).await?;
                pushes.note_alerts(event.position, written);
                Ok(())
            }
            Projection::Feed => feed::apply(tx, pushes, event).await.map(|_| ()),
        }
    }
}

/// What a committed batch did, for wake-ups.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchEffects {
    pub events: usize,
    pub feed_rows: usize,
}

/// What the projector has done since it started (read by `/metrics`).
#[derive(Debug, Default)]
pub struct ProjectorStats {
    /// Rounds that applied at least one event.
    pub rounds: AtomicU64,
    /// Events applied one at a time.
    pub single_events: AtomicU64,
    /// Runs of sent messages applied as a set, and the messages in them.
    pub message_runs: AtomicU64,
    pub run_events: AtomicU64,
}

pub struct Projector {
    db: Db,
    /// Names this instance in its feed `NOTIFY`s, so its own listener can ignore them (the
    /// local tailer is woken in-process already).
    origin: String,
    pub stats: ProjectorStats,
    /// The lowest checkpoint over all projections that this instance has seen committed.
    applied: watch::Sender<Checkpoint>,
    wake: Notify,
    /// Fired after every batch that wrote push rows (the local feed tailer listens).
    pub feed_written: Notify,
    /// The same, for the push-notification dispatcher (a `Notify` wakes one listener).
    pub push_wake: Notify,
}

impl Projector {
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Projector {
            db,
            origin: uuid::Uuid::new_v4().to_string(),
            stats: ProjectorStats::default(),
            applied: watch::channel(Checkpoint::default()).0,
            wake: Notify::new(),
            feed_written: Notify::new(),
            push_wake: Notify::new(),
        })
    }

    /// The payload of this instance's feed `NOTIFY`s.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Asks the running loop for a round now (after a local write).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    pub fn applied(&self) -> Checkpoint {
        *self.applied.borrow()
    }

    /// Waits until every read model includes `target` (read-your-writes).
    pub async fn wait_for(&self, target: Checkpoint, timeout: Duration) -> bool {
        self.nudge();
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Runs rounds until no event is left; returns the checkpoint reached.
    pub async fn catch_up(&self) -> Result<Checkpoint, ProjectionError> {
        loop {
            let (effects, reached) = self.round().await?;
            self.applied.send_replace(reached);
            if effects.feed_rows > 0 {
                self.feed_written.notify_one();
                self.push_wake.notify_one();
            }
            if effects.events == 0 {
                return Ok(reached);
            }
        }
    }

    /// The background loop: catch up, then sleep until nudged or the poll interval passes.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.catch_up().await {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::error!(%error, "projector round failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One batch in one transaction.
    async fn round(&self) -> Result<(BatchEffects, Checkpoint), ProjectionError> {
        let mut tx = begin_locked(&self.db).await?;
        let mut checkpoints = load_checkpoints(&mut tx).await?;
        let loaded = checkpoints.clone();
        let lowest = checkpoints.values().copied().min().unwrap_or_default();
        let events = read_after(&mut tx, lowest, BATCH_SIZE).await?;
        let mut pushes = Pushes::default();
        let messages: Vec<Option<SentMessage>> =
            events.iter().map(SentMessage::from_event).collect();
        let mut next = 0;
        while next < events.len() {
            let run_end = (next..events.len().min(next + message_runs::MAX_RUN))
                .find(|&i| messages[i].is_none())
                .unwrap_or_else(|| events.len().min(next + message_runs::MAX_RUN));
            if run_end > next {
                let (first, last) = (events[next].checkpoint(), events[run_end - 1].checkpoint());
                if let Some(plan) = RunPlan::of(&checkpoints, first, last) {
                    let run: Vec<SentMessage> =
                        messages[next..run_end].iter().flatten().cloned().collect();
                    let out = plan.feed.then_some(&mut pushes);
                    message_runs::apply(&mut tx, &run, plan.chats, out).await?;
                    self.stats.message_runs.fetch_add(1, Relaxed);
                    self.stats.run_events.fetch_add(run.len() as u64, Relaxed);
                    for seen in checkpoints.values_mut() {
                        *seen = (*seen).max(last);
                    }
                    next = run_end;
                    continue;
                }
            }
            let event = &events[next];
            let at = event.checkpoint();
            for projection in Projection::ALL {
                let seen = checkpoints.entry(projection).or_default();
                if *seen < at {
                    projection.apply(&mut tx, event, &mut pushes).await?;
                    *seen = at;
                }
            }
            self.stats.single_events.fetch_add(1, Relaxed);
            next += 1;
        }
        let ready = pushes.render(&mut tx).await?;
        let effects = BatchEffects {
            events: events.len(),
            feed_rows: ready.len(),
        };
        let moved = moved_checkpoints(&loaded, &checkpoints);
        if let DbTx::Postgres(pg) = &mut tx {
            if !ready.is_empty() || !moved.is_empty() {
                finish_round_postgres(pg, &ready, &moved, &self.origin).await?;
            }
        } else {
            feed::write_pushes(&mut tx, &ready).await?;
            store_checkpoints(&mut tx, &moved).await?;
        }
        tx.commit().await?;
        if effects.events > 0 {
            self.stats.rounds.fetch_add(1, Relaxed);
        }
        let reached = checkpoints.values().copied().min().unwrap_or_default();
        Ok((effects, reached))
    }

    /// Writes a push that no event causes (a relayed call signal) into the feed, in the feed's
    /// order (under the projector lock), and wakes the tailers here and on other instances.
    pub async fn relay(
        &self,
        user_id: &str,
        action: &str,
        payload: &serde_json::Value,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ProjectionError> {
        let mut tx = begin_locked(&self.db).await?;
        feed::push(&mut tx, user_id, action, payload, at).await?;
        notify_feed(&mut tx, &self.origin).await?;
        tx.commit().await?;
        self.feed_written.notify_one();
        Ok(())
    }

    /// Empties the given projections (all rebuildable ones when `None`) and replays the log
    /// into them from the start (with those it renders from: [`Projection::renders_from`]).
    /// The others keep their checkpoints and are not touched.
    pub async fn rebuild(
        &self,
        only: Option<Projection>,
    ) -> Result<Vec<Projection>, ProjectionError> {
        let chosen: Vec<Projection> = match only {
            Some(p) => Projection::ALL
                .into_iter()
                .filter(|q| *q == p || p.renders_from().contains(q))
                .collect(),
            None => Projection::ALL
                .into_iter()
                .filter(|p| p.rebuildable())
                .collect(),
        };
        // Under the projector lock: a projector round of a running server cannot be half-way
        // through these tables while they are emptied (TRUNCATE would deadlock with it).
        let mut tx = begin_locked(&self.db).await?;
        let tables: Vec<&str> = chosen.iter().flat_map(|p| p.tables()).copied().collect();
        if let DbTx::Postgres(_) = tx {
            // TRUNCATE, not DELETE: no dead rows left behind for vacuum (a rebuild after a
            // rebuild replayed at half the speed over the dead rows of the first).
            let sql = format!("TRUNCATE {}", tables.join(", "));
            with_tx!(&mut tx, conn => sqlx::query(&sql).execute(conn).await
                .map(|r| r.rows_affected())?);
        }
        for projection in &chosen {
            if let DbTx::Sqlite(_) = tx {
                // SQLite empties a table on a DELETE without WHERE.
                for table in projection.tables() {
                    let sql = format!("DELETE FROM {table}");
                    with_tx!(&mut tx, conn => sqlx::query(&sql).execute(conn).await
                        .map(|r| r.rows_affected())?);
                }
            }
            with_tx!(&mut tx, conn => {
                sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
                    .bind(projection.name())
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
        }
        tx.commit().await?;
        self.catch_up().await?;
        Ok(chosen)
    }
}

/// Which read models a run of sent messages goes to. A run is taken as a set only when every
/// projection has seen all of it or none of it, and the feed never renders from chats that are
/// already past the run; otherwise its events go one at a time.
struct RunPlan {
    chats: bool,
    feed: bool,
}

impl RunPlan {
    fn of(
        checkpoints: &BTreeMap<Projection, Checkpoint>,
        first: Checkpoint,
        last: Checkpoint,
    ) -> Option<RunPlan> {
        let mut needs = BTreeMap::new();
        for projection in Projection::ALL {
            let seen = checkpoints.get(&projection).copied().unwrap_or_default();
            if seen < first {
                needs.insert(projection, true);
            } else if seen >= last {
                needs.insert(projection, false);
            } else {
                return None;
            }
        }
        let plan = RunPlan {
            chats: needs[&Projection::Chats],
            feed: needs[&Projection::Feed],
        };
        (plan.chats || !plan.feed).then_some(plan)
    }
}

/// Opens the projector's write transaction holding the projector lock. Instances sharing a
/// PostgreSQL database write read models and feed rows one at a time (SQLite has a single writer
/// anyway), so feed positions become visible in order. `BEGIN` and the lock go in one round trip
/// (a simple query of two statements): every round pays for it.
async fn begin_locked(db: &Db) -> Result<DbTx, ProjectionError> {
    Ok(match db {
        Db::Postgres(pool) => DbTx::Postgres(
            pool.begin_with("BEGIN; SELECT pg_advisory_xact_lock(hashtext('talkamie_projector'))")
                .await?,
        ),
        Db::Sqlite(_) => db.begin_write().await?,
    })
}

/// Wakes the feed tailers of the other instances (PostgreSQL `NOTIFY`, sent at commit).
async fn notify_feed(tx: &mut DbTx, origin: &str) -> Result<(), ProjectionError> {
    if let DbTx::Postgres(_) = tx {
        with_tx!(tx, conn => {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(FEED_CHANNEL)
                .bind(origin)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
        });
    }
    Ok(())
}

async fn load_checkpoints(
    tx: &mut DbTx,
) -> Result<BTreeMap<Projection, Checkpoint>, ProjectionError> {
    let rows: Vec<(String, i64, i64)> = with_tx!(tx, conn => {
        sqlx::query_as("SELECT name, last_xid, last_position FROM projection_checkpoints")
            .fetch_all(conn)
            .await?
    });
    let mut map: BTreeMap<Projection, Checkpoint> = Projection::ALL
        .into_iter()
        .map(|p| (p, Checkpoint::default()))
        .collect();
    for (name, xid, position) in rows {
        if let Ok(projection) = Projection::from_name(&name) {
            map.insert(projection, Checkpoint { xid, position });
        }
    }
    Ok(map)
}

/// The projections whose checkpoint this round moved, and where to.
fn moved_checkpoints(
    loaded: &BTreeMap<Projection, Checkpoint>,
    checkpoints: &BTreeMap<Projection, Checkpoint>,
) -> Vec<(Projection, Checkpoint)> {
    checkpoints
        .iter()
        .filter(|(p, at)| loaded.get(p) != Some(at))
        .map(|(p, at)| (*p, *at))
        .collect()
}

/// SQLite: the moved checkpoints in one upsert (a round runs often: one row per projection and
/// statement would be most of an idle-ish round's cost).
async fn store_checkpoints(
    tx: &mut DbTx,
    moved: &[(Projection, Checkpoint)],
) -> Result<(), ProjectionError> {
    if moved.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..moved.len())
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    let sql = format!(
        "INSERT INTO projection_checkpoints (name, last_xid, last_position) VALUES {}
         ON CONFLICT (name) DO UPDATE
            SET last_xid = excluded.last_xid, last_position = excluded.last_position",
        values.join(", ")
    );
    with_tx!(tx, conn => {
        let mut query = sqlx::query(&sql);
        for (projection, at) in moved {
            query = query.bind(projection.name()).bind(at.xid).bind(at.position);
        }
        query.execute(conn).await.map(|r| r.rows_affected())?
    });
    Ok(())
}

/// PostgreSQL: the end of a round in one statement, one round trip on the projector's serial
/// path instead of three: the round's pushes (in order: `WITH ORDINALITY`, so feed positions
/// follow the log), the moved checkpoints, and the feed `NOTIFY` when there were pushes (one
/// per round, never one per command: a NOTIFY serialises commits).
async fn finish_round_postgres(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    pushes: &[ReadyPush],
    moved: &[(Projection, Checkpoint)],
    origin: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "WITH pushed AS (
             INSERT INTO feed (user_id, action, payload, created_at)
             SELECT user_id, action, payload, at
               FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
                    WITH ORDINALITY AS p (user_id, action, payload, at, n)
              ORDER BY n
         ), marked AS (
             INSERT INTO projection_checkpoints (name, last_xid, last_position)
             SELECT * FROM UNNEST($5::text[], $6::int8[], $7::int8[])
             ON CONFLICT (name) DO UPDATE
                SET last_xid = excluded.last_xid, last_position = excluded.last_position
         )
         SELECT pg_notify($8, $9) WHERE $10",
    )
    .bind(
        pushes
            .iter()
            .map(|p| p.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(pushes.iter().map(|p| p.action.as_str()).collect::<Vec<_>>())
    .bind(pushes.iter().map(|p| Json(&p.payload)).collect::<Vec<_>>())
    .bind(pushes.iter().map(|p| p.at).collect::<Vec<_>>())
    .bind(moved.iter().map(|(p, _)| p.name()).collect::<Vec<_>>())
    .bind(moved.iter().map(|(_, at)| at.xid).collect::<Vec<_>>())
    .bind(moved.iter().map(|(_, at)| at.position).collect::<Vec<_>>())
    .bind(FEED_CHANNEL)
    .bind(origin)
    .bind(!pushes.is_empty())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
