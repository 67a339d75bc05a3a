//! Searching the `users` read model: `GET /v1/users` (discovery, with the visibility rules) and
//! the admin list. Keyset pagination on `(insert_date, id)`, newest first, so pages stay stable
//! while users sign up.

use chrono::{DateTime, Utc};

use crate::users::{UserRecord, USER_COLUMNS};
use crate::{with_pool, Db};

/// A bind value of the dynamic WHERE clause.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Time(DateTime<Utc>),
}

/// A WHERE clause built piece by piece, with numbered placeholders.
#[derive(Debug, Default, Clone)]
pub struct Where {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    /// Adds `clause`, where every `?` is replaced by the next placeholder for `args`.
    pub fn push(&mut self, clause: &str, args: Vec<Arg>) {
        let mut sql = String::new();
        let mut rest = clause;
        let mut args = args.into_iter();
        while let Some(at) = rest.find('?') {
            sql.push_str(&rest[..at]);
            let arg = args.next().expect("one argument per placeholder");
            self.args.push(arg);
            sql.push_str(&format!("${}", self.args.len()));
            rest = &rest[at + 1..];
        }
        sql.push_str(rest);
        self.clauses.push(format!("({sql})"));
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "TRUE".into()
        } else {
            self.clauses.join(" AND ")
        }
    }
}

/// SQL for "this volunteer passed every verification step" (mirrors `UserRecord::verified`).
pub const VOLUNTEER_VERIFIED_SQL: &str = "(email_verified AND name IS NOT NULL AND dob IS NOT NULL
    AND specialization IS NOT NULL AND license_id IS NOT NULL AND certificate_file IS NOT NULL
    AND verification_admin = 'complete' AND verification_background = 'complete')";

/// `%text%` for LIKE with its wildcards escaped (`ESCAPE '\'`).
pub fn like(text: &str) -> String {
    let escaped = text
        .trim()
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One page of users matching `filter`, after the keyset `after`, plus the total count.
pub async fn page(
    db: &Db,
    filter: &Where,
    after: Option<(DateTime<Utc>, String)>,
    page_size: i64,
) -> Result<(Vec<UserRecord>, i64), sqlx::Error> {
    let count_sql = format!("SELECT COUNT(*) FROM users WHERE {}", filter.sql());
    let mut paged = filter.clone();
    if let Some((at, id)) = after {
        paged.push(
            "insert_date < ? OR (insert_date = ? AND id < ?)",
            vec![Arg::Time(at), Arg::Time(at), Arg::Text(id)],
        );
    }
    let page_sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE {} ORDER BY insert_date DESC, id DESC LIMIT {}",
        paged.sql(),
        page_size + 1
    );
    with_pool!(db, pool => {
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
        for arg in &filter.args {
            count = match arg {
                Arg::Text(v) => count.bind(v),
                Arg::Time(v) => count.bind(v),
            };
        }
        let total = count.fetch_one(pool).await?;
        let mut rows = sqlx::query_as::<_, UserRecord>(&page_sql);
        for arg in &paged.args {
            rows = match arg {
                Arg::Text(v) => rows.bind(v),
                Arg::Time(v) => rows.bind(v),
            };
        }
        Ok((rows.fetch_all(pool).await?, total))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut w = Where::default();
        w.push("type = ?", vec![Arg::Text("senior".into())]);
        w.push(
            "name LIKE ? OR bio LIKE ?",
            vec![Arg::Text("a".into()), Arg::Text("b".into())],
        );
        assert_eq!(w.sql(), "(type = $1) AND (name LIKE $2 OR bio LIKE $3)");
        assert_eq!(w.args.len(), 3);
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like(" 50%_Off\\ "), "%50\\%\\_off\\\\%");
    }
}
