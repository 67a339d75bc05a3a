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

/// Rows written one after another, each once in its last state, in id order (as reading
/// them back `ORDER BY id` gives them).
pub fn last_state_by_id<T>(rows: Vec<T>, id: impl Fn(&T) -> &str) -> Vec<T> {
    let by_id: std::collections::BTreeMap<String, T> = rows
        .into_iter()
        .map(|row| (id(&row).to_string(), row))
        .collect();
    by_id.into_values().collect()
}

/// `$start, $start+1, ...` for an `IN (...)` list of `n` values.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "is one of `n` values" for a column, the values bound from `$start`: on PostgreSQL one text
/// array (`= ANY($start)`), so the statement's text is the same for any `n` and is prepared
/// once per connection (a list of each length was a statement of its own: enough of them to
/// overflow the connection's statement cache and be parsed and planned again at every use); on
/// SQLite, which binds no arrays, an `IN` list of `n` placeholders.
pub fn one_of(postgres: bool, start: usize, n: usize) -> String {
    if postgres {
        format!("= ANY(${start})")
    } else {
        format!("IN ({})", placeholders(start, n))
    }
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

/// `with_source_by_store!(source, conn, postgres => body, sqlite => body)`: as `with_source!`,
/// with a body per store, for binds only one of them takes (arrays; see `one_of`).
#[macro_export]
macro_rules! with_source_by_store {
    ($source:expr, $conn:ident, postgres => $pg:expr, sqlite => $lite:expr) => {
        match $source {
            $crate::db::Source::Pool($crate::Db::Sqlite($conn)) => $lite,
            $crate::db::Source::Pool($crate::Db::Postgres($conn)) => $pg,
            $crate::db::Source::Tx($crate::DbTx::Sqlite(tx)) => {
                let $conn = &mut **tx;
                $lite
            }
            $crate::db::Source::Tx($crate::DbTx::Postgres(tx)) => {
                let $conn = &mut **tx;
                $pg
            }
        }
    };
}

impl Source<'_> {
    pub fn is_postgres(&self) -> bool {
        matches!(
            self,
            Source::Pool(Db::Postgres(_)) | Source::Tx(DbTx::Postgres(_))
        )
    }

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

/// One statement of `exec_together`: its SQL, placeholders numbered from `$1`, and its values.
pub struct Statement<'a> {
    pub sql: String,
    pub binds: Vec<Bind<'a>>,
}

impl<'a> Statement<'a> {
    pub fn new(sql: impl Into<String>, binds: &[Bind<'a>]) -> Self {
        Statement {
            sql: sql.into(),
            binds: binds.to_vec(),
        }
    }
}

/// Runs statements that do not depend on one another's effects (they write different tables,
/// or different rows of one) in one round trip on PostgreSQL: as the parts of one
/// data-modifying `WITH`, whose parts all see the snapshot from before the statement, hence the
/// rule. The projector's path is serial, so a round trip saved is time saved for every event
/// behind it. SQLite, in process, runs them in turn.
pub async fn exec_together(
    tx: &mut DbTx,
    statements: &[Statement<'_>],
) -> Result<(), crate::ProjectionError> {
    if !matches!(tx, DbTx::Postgres(_)) || statements.len() < 2 {
        for statement in statements {
            exec(tx, &statement.sql, &statement.binds).await?;
        }
        return Ok(());
    }
    let (sql, binds) = joined(statements);
    exec(tx, &sql, &binds).await?;
    Ok(())
}

/// `statements` as one `WITH s1 AS (...), s2 AS (...) <last>`, each one's placeholders moved
/// past those of the ones before it.
fn joined<'a>(statements: &[Statement<'a>]) -> (String, Vec<Bind<'a>>) {
    let mut parts = Vec::with_capacity(statements.len());
    let mut binds = Vec::new();
    for statement in statements {
        parts.push(renumbered(&statement.sql, binds.len()));
        binds.extend_from_slice(&statement.binds);
    }
    let last = parts.pop().unwrap_or_default();
    let with: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| format!("s{} AS ({part})", i + 1))
        .collect();
    (format!("WITH {} {last}", with.join(", ")), binds)
}

/// `sql` with every placeholder `$n` written as `$(n + offset)`.
fn renumbered(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
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

    /// A row of a multi-row `VALUES` list: `($n, $n+1, ...)` for `binds`, in order.
    pub fn row(&mut self, binds: &[Bind<'a>]) -> String {
        let placeholders: Vec<String> = binds.iter().map(|bind| self.add(*bind)).collect();
        format!("({})", placeholders.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        joined, last_state_by_id, one_of, placeholders, renumbered, Bind, Params, Statement,
    };

    #[test]
    fn rows_keep_their_last_state_in_id_order() {
        let rows = vec![("b", 1), ("a", 1), ("b", 2)];
        assert_eq!(
            last_state_by_id(rows, |row| row.0),
            vec![("a", 1), ("b", 2)]
        );
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(placeholders(1, 1), "$1");
    }

    #[test]
    fn rows_number_their_values_after_the_ones_before() {
        let mut params = Params::default();
        assert_eq!(params.row(&[Bind::Int(1), Bind::Int(2)]), "($1, $2)");
        assert_eq!(params.row(&[Bind::Int(3), Bind::Int(4)]), "($3, $4)");
        assert_eq!(params.binds.len(), 4);
    }

    #[test]
    fn placeholders_move_past_the_ones_before() {
        assert_eq!(renumbered("x = $1 AND y = $12", 3), "x = $4 AND y = $15");
        assert_eq!(renumbered("no placeholders", 5), "no placeholders");
    }

    #[test]
    fn statements_join_into_one_with() {
        let statements = [
            Statement::new("DELETE FROM a WHERE id = $1", &[Bind::Int(1)]),
            Statement::new(
                "UPDATE b SET v = $2 WHERE id = $1",
                &[Bind::Int(2), Bind::Int(3)],
            ),
            Statement::new("DELETE FROM c WHERE id = $1", &[Bind::Int(4)]),
        ];
        let (sql, binds) = joined(&statements);
        assert_eq!(
            sql,
            "WITH s1 AS (DELETE FROM a WHERE id = $1), s2 AS (UPDATE b SET v = $3 WHERE id = $2) \
             DELETE FROM c WHERE id = $4"
        );
        let values: Vec<i64> = binds
            .iter()
            .map(|b| match b {
                Bind::Int(v) => *v,
                _ => 0,
            })
            .collect();
        assert_eq!(values, [1, 2, 3, 4]);
    }

    #[test]
    fn lists_are_one_array_on_postgres_and_placeholders_on_sqlite() {
        assert_eq!(one_of(true, 2, 3), "= ANY($2)");
        assert_eq!(one_of(true, 2, 40), "= ANY($2)");
        assert_eq!(one_of(false, 2, 3), "IN ($2, $3, $4)");
    }
}
