//! One handle over the two stores. Read-model SQL is written once, with `$n` placeholders that
//! both SQLite and PostgreSQL accept; the macros below type-check the same body against each
//! driver, so there is no `Any` driver and no duplicated query text.

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on either store.
pub enum DbTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// `with_pool!(db, pool => body)`: runs `body` with `pool` bound to the concrete pool.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// `with_tx!(tx, conn => body)`: runs `body` with `conn` bound to the transaction's connection.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::DbTx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::DbTx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

impl Db {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Opens a write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`)
    /// so a read-then-write transaction never fails half-way with a busy snapshot.
    pub async fn begin_write(&self) -> Result<DbTx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pool) => DbTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => DbTx::Postgres(pool.begin().await?),
        })
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }
}

impl DbTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            DbTx::Sqlite(tx) => tx.commit().await,
            DbTx::Postgres(tx) => tx.commit().await,
        }
    }
}

/// `$start, $start+1, ...` for an `IN (...)` list of `n` values.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a read runs: the pool (HTTP handlers) or an open transaction (the projector, which
/// renders pushes from the read models it is writing).
pub enum Source<'a> {
    Pool(&'a Db),
    Tx(&'a mut DbTx),
}

impl<'a> From<&'a Db> for Source<'a> {
    fn from(db: &'a Db) -> Self {
        Source::Pool(db)
    }
}

impl<'a> From<&'a mut DbTx> for Source<'a> {
    fn from(tx: &'a mut DbTx) -> Self {
        Source::Tx(tx)
    }
}

/// `with_source!(source, conn => body)`: runs `body` with `conn` bound to an executor of either
/// store, whether `source` is a pool or a transaction.
#[macro_export]
macro_rules! with_source {
    ($source:expr, $conn:ident => $body:expr) => {
        match $source {
            $crate::db::Source::Pool($crate::Db::Sqlite($conn)) => $body,
            $crate::db::Source::Pool($crate::Db::Postgres($conn)) => $body,
            $crate::db::Source::Tx($crate::DbTx::Sqlite(tx)) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::db::Source::Tx($crate::DbTx::Postgres(tx)) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

impl Source<'_> {
    /// Reborrows, so one source serves several reads in a row.
    pub fn reborrow(&mut self) -> Source<'_> {
        match self {
            Source::Pool(db) => Source::Pool(db),
            Source::Tx(tx) => Source::Tx(tx),
        }
    }
}

/// A value bound to a query of either store.
#[derive(Debug, Clone, Copy)]
pub enum Bind<'a> {
    Text(&'a str),
    Int(i64),
    Time(chrono::DateTime<chrono::Utc>),
    Bool(bool),
    OptText(Option<&'a str>),
    OptInt(Option<i64>),
    OptTime(Option<chrono::DateTime<chrono::Utc>>),
}

/// Binds values in order (`$1`, `$2`, ...) to a query of either store.
#[macro_export]
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds.iter() {
            query = match *bind {
                $crate::db::Bind::Text(v) => query.bind(v),
                $crate::db::Bind::Int(v) => query.bind(v),
                $crate::db::Bind::Time(v) => query.bind(v),
                $crate::db::Bind::Bool(v) => query.bind(v),
                $crate::db::Bind::OptText(v) => query.bind(v),
                $crate::db::Bind::OptInt(v) => query.bind(v),
                $crate::db::Bind::OptTime(v) => query.bind(v),
            };
        }
        query
    }};
}

/// Runs one statement inside the projector's transaction; returns the rows it touched.
pub async fn exec(
    tx: &mut DbTx,
    sql: &str,
    binds: &[Bind<'_>],
) -> Result<u64, crate::ProjectionError> {
    let affected = crate::with_tx!(tx, conn => {
        crate::bind_all!(sqlx::query(sql), binds).execute(conn).await.map(|r| r.rows_affected())?
    });
    Ok(affected)
}

/// Parameters of a query built piece by piece: `add` returns the placeholder to write.
#[derive(Debug, Clone, Default)]
pub struct Params<'a> {
    pub binds: Vec<Bind<'a>>,
}

impl<'a> Params<'a> {
    pub fn add(&mut self, bind: Bind<'a>) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }
}
