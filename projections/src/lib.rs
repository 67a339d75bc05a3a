//! The read side of Talkamie: the catch-up projector over the global event log, and one module
//! per read model. Read models are plain SQL tables (documented in `docs/read-models.md`).
//!
//! Durable read models never use cqrs-es `Query` dispatch: that runs after commit, outside the
//! transaction, and drops errors. Instead the projector reads the log after a checkpoint and
//! applies a batch plus the new checkpoint in one transaction.

pub mod alerts;
pub mod calls;
pub mod chat_views;
pub mod chats;
pub mod db;
pub mod directory;
pub mod feed;
pub mod ledger;
pub mod log;
pub mod message_runs;
pub mod presence;
pub mod profiles;
pub mod projector;
pub mod relations;
pub mod reviews;
pub mod schedules;
pub mod sealing;
pub mod support;
pub mod users;

pub use db::{Db, DbTx};
pub use log::{Checkpoint, StoredEvent};
pub use projector::{Projection, Projector};

/// Errors of the read side: the database, or an event the projector cannot understand.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event {position} ({event_type}) cannot be read: {source}")]
    BadEvent {
        position: i64,
        event_type: String,
        source: serde_json::Error,
    },
    #[error("unknown projection {0}")]
    UnknownProjection(String),
}
