//! Event store wiring: SQLite (embedded default) or PostgreSQL, migrations, and the command
//! bus that appends to the log through cqrs-es and answers after the read models caught up.

mod append;
mod bus;
mod cache;
mod secrets;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use talkamie_projections::{Db, Projector};

pub use bus::{system_metadata, CommandError, Metadata};
pub use secrets::secret;

use crate::config::Settings;

/// Connections of the pool that requests use.
const REQUEST_CONNECTIONS: u32 = 16;
/// Connections kept for the projector and the feed tailer. Requests never take them: under
/// overload, requests queue for the request pool, and the work they wait for (projecting
/// their events, delivering pushes) would otherwise queue behind them (goodput fell to zero).
const BACKGROUND_CONNECTIONS: u32 = 3;

/// The database and the projector that keeps its read models up to date.
#[derive(Clone)]
pub struct Store {
    pub db: Db,
    /// The same database through the connections kept for background work.
    pub background: Db,
    pub projector: Arc<Projector>,
    /// Permits for commands in flight (load shedding: beyond capacity a command is refused
    /// at once with 503 instead of queueing without bound).
    pub commands_in_flight: Arc<tokio::sync::Semaphore>,
    /// Aggregates as the last command on them left them (skips loading them again).
    aggregates: Arc<cache::AggregateCache>,
}

impl Store {
    /// Connects (creating the SQLite file when needed) and applies the migrations.
    pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
        let db = connect(settings).await?;
        migrate(&db).await?;
        let background = connect_pool(settings, BACKGROUND_CONNECTIONS).await?;
        let projector = Projector::new(background.clone());
        let permits = settings.max_commands_in_flight as usize;
        Ok(Store {
            db,
            background,
            projector,
            commands_in_flight: Arc::new(tokio::sync::Semaphore::new(permits)),
            aggregates: Arc::new(cache::AggregateCache::new(settings.aggregate_cache)),
        })
    }
}

pub async fn connect(settings: &Settings) -> anyhow::Result<Db> {
    connect_pool(settings, REQUEST_CONNECTIONS).await
}

async fn connect_pool(settings: &Settings, connections: u32) -> anyhow::Result<Db> {
    match &settings.database_url {
        Some(url) => {
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                // A database that is down answers 503 quickly instead of hanging requests.
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .with_context(|| "connecting to PostgreSQL (DATABASE_URL)")?;
            Ok(Db::Postgres(pool))
        }
        None => {
            std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                format!("creating the data dir {}", settings.data_dir.display())
            })?;
            let path = settings.data_dir.join("talkamie.db");
            let options = SqliteConnectOptions::from_str("sqlite://")?
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Deleted rows are overwritten, not just unlinked (account deletion).
                .pragma("secure_delete", "ON");
            let pool = SqlitePoolOptions::new()
                .max_connections(connections.min(8))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            Ok(Db::Sqlite(pool))
        }
    }
}

pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    match db {
        Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
        Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
    }
    .context("applying migrations")
}
