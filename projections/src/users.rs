//! Read model `users`: accounts and profiles (`users`), password hashes (`user_credentials`,
//! kept apart so analysts never need to read them) and sessions (`sessions`).
//! Also renders the contract's `extended_user` shape from a row.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::user::{User, UserEvent};

use crate::{with_pool, with_tx, Db, DbTx, ProjectionError, StoredEvent};

pub const TABLES: &[&str] = &["sessions", "user_credentials", "users"];

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if event.aggregate_type != <User as cqrs_es::Aggregate>::TYPE {
        return Ok(());
    }
    let user_id = event.aggregate_id.as_str();
    match event.decode::<UserEvent>()? {
        UserEvent::UserRegistered {
            email,
            name,
            user_type,
            password_hash,
            at,
        } => {
            with_tx!(tx, conn => {
                sqlx::query(
                    "INSERT INTO users (id, email, email_normalized, email_verified, type, name,
                                        insert_date, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                )
                .bind(user_id)
                .bind(&email)
                .bind(normalize_email(&email))
                .bind(false)
                .bind(user_type.as_str())
                .bind(&name)
                .bind(at)
                .execute(&mut *conn)
                .await
                    .map(|r| r.rows_affected())?;
                sqlx::query(
                    "INSERT INTO user_credentials (user_id, password_hash, changed_at)
                     VALUES ($1, $2, $3)",
                )
                .bind(user_id)
                .bind(&password_hash)
                .bind(at)
                .execute(conn)
                .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::SessionOpened {
            session_id,
            refresh_jti,
            at,
        } => {
            with_tx!(tx, conn => {
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, refresh_jti, status, created_at, refreshed_at)
                     VALUES ($1, $2, $3, 'active', $4, $4)",
                )
                .bind(&session_id)
                .bind(user_id)
                .bind(&refresh_jti)
                .bind(at)
                .execute(&mut *conn)
                .await
                    .map(|r| r.rows_affected())?;
                sqlx::query("UPDATE users SET last_login_date = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::SessionRefreshed {
            session_id,
            refresh_jti,
            at,
        } => {
            with_tx!(tx, conn => {
                sqlx::query("UPDATE sessions SET refresh_jti = $2, refreshed_at = $3 WHERE id = $1")
                    .bind(&session_id)
                    .bind(&refresh_jti)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::SessionEnded {
            session_id,
            reason,
            at,
        } => {
            with_tx!(tx, conn => {
                sqlx::query(
                    "UPDATE sessions SET status = 'ended', end_reason = $2, ended_at = $3
                      WHERE id = $1",
                )
                .bind(&session_id)
                .bind(reason.as_str())
                .bind(at)
                .execute(conn)
                .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::EmailVerified { at } => {
            with_tx!(tx, conn => {
                sqlx::query("UPDATE users SET email_verified = $2, updated_at = $3 WHERE id = $1")
                    .bind(user_id)
                    .bind(true)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::PasswordChanged { password_hash, at } => {
            with_tx!(tx, conn => {
                sqlx::query(
                    "UPDATE user_credentials SET password_hash = $2, changed_at = $3
                      WHERE user_id = $1",
                )
                .bind(user_id)
                .bind(&password_hash)
                .bind(at)
                .execute(conn)
                .await
                    .map(|r| r.rows_affected())?
            });
        }
        UserEvent::ProfileUpdated { changes, at } => {
            // COALESCE keeps columns the update does not name.
            with_tx!(tx, conn => {
                sqlx::query(
                    "UPDATE users SET name = COALESCE($2, name), gender = COALESCE($3, gender),
                            bio = COALESCE($4, bio), language = COALESCE($5, language),
                            timezone_offset = COALESCE($6, timezone_offset),
                            timezone = COALESCE($7, timezone), updated_at = $8
                      WHERE id = $1",
                )
                .bind(user_id)
                .bind(&changes.name)
                .bind(changes.gender.map(|g| g.as_str()))
                .bind(&changes.bio)
                .bind(&changes.language)
                .bind(changes.timezone_offset)
                .bind(&changes.timezone)
                .bind(at)
                .execute(conn)
                .await
                    .map(|r| r.rows_affected())?
            });
        }
    }
    Ok(())
}

/// Emails are unique case-insensitively: compared trimmed and lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// One row of `users`.
#[derive(Debug, Clone, FromRow)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    #[sqlx(rename = "type")]
    pub user_type: String,
    pub name: String,
    pub gender: Option<String>,
    pub bio: Option<String>,
    pub language: Option<String>,
    pub timezone_offset: Option<i32>,
    pub timezone: Option<String>,
    pub insert_date: DateTime<Utc>,
    pub last_login_date: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str = "id, email, email_verified, type, name, gender, bio, language,
    timezone_offset, timezone, insert_date, last_login_date";

pub async fn find_by_id(db: &Db, id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    with_pool!(db, pool => sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(pool).await)
}

/// Renders inside a projector transaction (the feed renders pushes from the same state).
pub async fn find_by_id_tx(tx: &mut DbTx, id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    with_tx!(tx, conn => sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(conn).await)
}

/// The user id and password hash for a sign-in, looked up by normalised email.
pub async fn credentials_by_email(
    db: &Db,
    email: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let sql = "SELECT u.id, c.password_hash FROM users u
                 JOIN user_credentials c ON c.user_id = u.id
                WHERE u.email_normalized = $1";
    let email = normalize_email(email);
    with_pool!(db, pool => sqlx::query_as(sql).bind(&email).fetch_optional(pool).await)
}

pub async fn password_hash(db: &Db, user_id: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = "SELECT password_hash FROM user_credentials WHERE user_id = $1";
    with_pool!(db, pool => sqlx::query_scalar(sql).bind(user_id).fetch_optional(pool).await)
}

/// Whether a session is still active for that user (revoked sessions stop their tokens).
pub async fn session_is_active(
    db: &Db,
    session_id: &str,
    user_id: &str,
) -> Result<bool, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM sessions WHERE id = $1 AND user_id = $2 AND status = 'active'";
    let count: i64 = with_pool!(db, pool => {
        sqlx::query_scalar(sql).bind(session_id).bind(user_id).fetch_one(pool).await?
    });
    Ok(count > 0)
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl UserRecord {
    /// The contract's `extended_user` (section 2), seen by the user themself. Parts that later
    /// features fill in (reviews, availability, ledger, connections...) have their empty shape.
    pub fn extended(&self, online: bool) -> Value {
        let verification_basic = if self.email_verified {
            "complete"
        } else {
            "pending"
        };
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.user_type,
            "gender": self.gender.as_deref().unwrap_or("unspecified"),
            "age": Value::Null,
            "bio": self.bio,
            "location": {"city": Value::Null, "state": Value::Null, "country": Value::Null},
            "picture": Value::Null,
            "rating": 0,
            "totalReviews": 0,
            "specialization": Value::Null,
            "interests": [],
            "language": self.language,
            "online": online,
            "viewer": {"id": self.id},
            "dob": Value::Null,
            "email": self.email,
            "availability": {
                "custom": {}, "weekly": {},
                "bookedSlots": {"custom": {}, "weekly": {}}
            },
            "video": Value::Null,
            "license": Value::Null,
            "certificate": Value::Null,
            "visibility": "public",
            "totalConnections": 0,
            "metas": {},
            "insertDate": iso(self.insert_date),
            "lastLoginDate": self.last_login_date.map(iso),
            "ledger": {"coins": {"balance": 0}, "paypal": Value::Null},
            "preferences": {
                "call": {"maxCount": Value::Null, "maxDuration": "unlimited"},
                "notifications": {"push": {"enabled": true}}
            },
            "dailyInfo": {"totalCalls": 0},
            "timezoneOffset": self.timezone_offset.unwrap_or(0),
            "timezone": self.timezone,
            "totalPendingRequests": 0,
            "totalUnreadAlerts": 0,
            "totalUnreadChats": 0,
            "verification": {
                "verified": false,
                "basic": {"status": verification_basic},
                "admin": {"status": "pending"},
                "background": {"status": "pending"}
            },
            "support": {"ticket": Value::Null}
        })
    }
}
