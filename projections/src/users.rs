//! Read model `users`: accounts and profiles (`users`), password hashes (`user_credentials`,
//! kept apart so analysts never need to read them), sessions (`sessions`) and the devices that
//! receive push notifications (`push_devices`).
//!
//! Personal fields arrive sealed (see `sealing`); they are opened here with the user's key and
//! stored in clear in the read model, which is wiped for a deleted user. A rebuild after a
//! deletion cannot open them any more, so the deleted user stays wiped.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::FromRow;
use talkamie_aggregates::devices::{DevicesEvent, PushDevices};
use talkamie_aggregates::user::{
    CallDuration, InterestChoice, ProfileChanges, Sealed, User, UserEvent,
};

use crate::sealing::{self, UserKey};
use crate::{with_pool, with_tx, Db, DbTx, ProjectionError, StoredEvent};

pub const TABLES: &[&str] = &["push_devices", "sessions", "user_credentials", "users"];

/// A column value for dynamic updates.
enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Json(Value),
    /// JSON text for a JSON column, or NULL.
    JsonText(Option<String>),
}

async fn update_columns(
    tx: &mut DbTx,
    user_id: &str,
    columns: Vec<(&'static str, Val)>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let mut sql = String::from("UPDATE users SET ");
    for (i, (column, _)) in columns.iter().enumerate() {
        sql.push_str(&format!("{column} = ${}, ", i + 3));
    }
    sql.push_str("updated_at = $2 WHERE id = $1");
    with_tx!(tx, conn => {
        let mut query = sqlx::query(&sql).bind(user_id).bind(at);
        for (_, value) in columns {
            query = match value {
                Val::Text(v) => query.bind(v),
                Val::Int(v) => query.bind(v),
                Val::Bool(v) => query.bind(v),
                Val::Json(v) => query.bind(Json(v)),
                Val::JsonText(v) => query.bind(v.and_then(|t| serde_json::from_str::<Value>(&t).ok()).map(Json)),
            };
        }
        query.execute(conn).await.map(|r| r.rows_affected())?
    });
    Ok(())
}

/// Opens a sealed field; an empty plaintext (or an unreadable value) clears the column.
fn opened(key: Option<&UserKey>, sealed: &Sealed) -> Val {
    Val::Text(sealing::open_with(key, sealed).filter(|v| !v.is_empty()))
}

fn text(value: &str) -> Val {
    Val::Text(Some(value.to_string()).filter(|v| !v.is_empty()))
}

async fn resolve_interests(
    tx: &mut DbTx,
    choices: &[InterestChoice],
) -> Result<Value, ProjectionError> {
    let mut out = Vec::new();
    for choice in choices {
        match choice {
            InterestChoice::Catalog { id } => {
                let row: Option<(String, String)> = with_tx!(tx, conn => {
                    sqlx::query_as("SELECT name, emoji FROM interests WHERE id = $1")
                        .bind(id)
                        .fetch_optional(conn)
                        .await?
                });
                if let Some((name, emoji)) = row {
                    out.push(json!({"id": id, "name": name, "emoji": emoji}));
                }
            }
            InterestChoice::Custom { name, emoji } => {
                out.push(json!({"id": Value::Null, "name": name, "emoji": emoji}))
            }
        }
    }
    Ok(Value::Array(out))
}

async fn profile_columns(
    tx: &mut DbTx,
    key: Option<&UserKey>,
    changes: &ProfileChanges,
) -> Result<Vec<(&'static str, Val)>, ProjectionError> {
    let mut columns = Vec::new();
    let sealed = [
        ("name", &changes.name),
        ("bio", &changes.bio),
        ("dob", &changes.dob),
        ("city", &changes.city),
        ("state", &changes.state),
        ("country", &changes.country),
        ("license_id", &changes.license_id),
        ("paypal_email", &changes.paypal_email),
    ];
    for (column, value) in sealed {
        if let Some(value) = value {
            columns.push((column, opened(key, value)));
        }
    }
    let plain = [
        ("language", &changes.language),
        ("timezone", &changes.timezone),
        ("specialization", &changes.specialization),
        ("certificate_state", &changes.certificate_state),
    ];
    for (column, value) in plain {
        if let Some(value) = value {
            columns.push((column, text(value)));
        }
    }
    for (column, file) in [
        ("picture_file", &changes.picture),
        ("video_file", &changes.video),
        ("certificate_file", &changes.certificate),
    ] {
        if let Some(file) = file {
            let value = if file.key.is_empty() {
                None
            } else {
                serde_json::to_string(file).ok()
            };
            columns.push((column, Val::JsonText(value)));
        }
    }
    if let Some(gender) = changes.gender {
        columns.push(("gender", text(gender.as_str())));
    }
    if let Some(visibility) = changes.visibility {
        columns.push(("visibility", text(visibility.as_str())));
    }
    if let Some(offset) = changes.timezone_offset {
        columns.push(("timezone_offset", Val::Int(Some(offset.into()))));
    }
    if let Some(duration) = changes.max_call_duration {
        let seconds = match duration {
            CallDuration::Unlimited => None,
            CallDuration::Seconds(s) => Some(i64::from(s)),
        };
        columns.push(("max_call_duration", Val::Int(seconds)));
    }
    if let Some(count) = changes.max_call_count {
        columns.push(("max_call_count", Val::Int(Some(count.into()))));
    }
    if let Some(enabled) = changes.push_enabled {
        columns.push(("push_enabled", Val::Bool(enabled)));
    }
    if let Some(interests) = &changes.interests {
        columns.push((
            "interests",
            Val::Json(resolve_interests(tx, interests).await?),
        ));
    }
    Ok(columns)
}

pub async fn apply(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    if event.aggregate_type == <PushDevices as cqrs_es::Aggregate>::TYPE {
        return apply_devices(tx, event).await;
    }
    if event.aggregate_type != <User as cqrs_es::Aggregate>::TYPE {
        return Ok(());
    }
    let user_id = event.aggregate_id.as_str();
    let user_event = event.decode::<UserEvent>()?;
    let key = match &user_event {
        UserEvent::UserRegistered { .. }
        | UserEvent::PasswordChanged { .. }
        | UserEvent::ProfileUpdated { .. }
        | UserEvent::MetasReplaced { .. } => sealing::key_tx(tx, user_id).await?,
        _ => None,
    };
    let key = key.as_ref();
    match user_event {
        UserEvent::UserRegistered {
            email,
            name,
            user_type,
            password_hash,
            at,
        } => {
            let email = sealing::open_with(key, &email);
            let normalized = email.as_deref().map(normalize_email);
            let name = sealing::open_with(key, &name);
            with_tx!(tx, conn => {
                sqlx::query(
                    "INSERT INTO users (id, email, email_normalized, email_verified, type, name,
                                        visibility, push_enabled, verification_admin,
                                        verification_background, insert_date, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'public', $7, 'pending', 'pending', $8, $8)",
                )
                .bind(user_id)
                .bind(&email)
                .bind(&normalized)
                .bind(false)
                .bind(user_type.as_str())
                .bind(&name)
                .bind(true)
                .bind(at)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
            });
            if let Some(hash) = sealing::open_with(key, &password_hash) {
                with_tx!(tx, conn => {
                    sqlx::query(
                        "INSERT INTO user_credentials (user_id, password_hash, changed_at)
                         VALUES ($1, $2, $3)",
                    )
                    .bind(user_id)
                    .bind(&hash)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
                });
            }
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
            update_columns(tx, user_id, vec![("email_verified", Val::Bool(true))], at).await?;
        }
        UserEvent::PasswordChanged { password_hash, at } => {
            if let Some(hash) = sealing::open_with(key, &password_hash) {
                with_tx!(tx, conn => {
                    sqlx::query(
                        "UPDATE user_credentials SET password_hash = $2, changed_at = $3
                          WHERE user_id = $1",
                    )
                    .bind(user_id)
                    .bind(&hash)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
                });
            }
        }
        UserEvent::ProfileUpdated { changes, at } => {
            let columns = profile_columns(tx, key, &changes).await?;
            update_columns(tx, user_id, columns, at).await?;
        }
        UserEvent::MetasReplaced { metas, at } => {
            let opened: Vec<Value> = metas
                .iter()
                .filter_map(|m| {
                    let value = sealing::open_with(key, &m.value)?;
                    let value: Value = serde_json::from_str(&value).ok()?;
                    Some(json!({"key": m.key, "access": m.access, "value": value}))
                })
                .collect();
            update_columns(
                tx,
                user_id,
                vec![("metas", Val::Json(Value::Array(opened)))],
                at,
            )
            .await?;
        }
        UserEvent::VerificationChanged { step, status, at } => {
            let column = match step {
                talkamie_aggregates::user::VerificationStep::Admin => "verification_admin",
                talkamie_aggregates::user::VerificationStep::Background => {
                    "verification_background"
                }
                talkamie_aggregates::user::VerificationStep::Basic => return Ok(()),
            };
            update_columns(tx, user_id, vec![(column, text(status.as_str()))], at).await?;
        }
        UserEvent::UserDeleted { at } => {
            // Wipe everything personal; keep the opaque id (money history stays auditable).
            let wiped = [
                "email",
                "email_normalized",
                "name",
                "bio",
                "dob",
                "city",
                "state",
                "country",
                "license_id",
                "paypal_email",
                "timezone",
                "specialization",
                "certificate_state",
                "gender",
                "language",
            ];
            let mut columns: Vec<(&'static str, Val)> =
                wiped.into_iter().map(|c| (c, Val::Text(None))).collect();
            for column in ["picture_file", "video_file", "certificate_file"] {
                columns.push((column, Val::JsonText(None)));
            }
            columns.push(("interests", Val::Json(json!([]))));
            columns.push(("metas", Val::Json(json!([]))));
            update_columns(tx, user_id, columns, at).await?;
            with_tx!(tx, conn => {
                sqlx::query("UPDATE users SET deleted_at = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected())?;
                sqlx::query("DELETE FROM user_credentials WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected())?;
                sqlx::query("DELETE FROM push_devices WHERE user_id = $1")
                    .bind(user_id)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())?
            });
        }
    }
    Ok(())
}

/// `push_devices` from the PushDevices streams. A token registered by another account moves
/// to this one (one device, one signed-in account).
async fn apply_devices(tx: &mut DbTx, event: &StoredEvent) -> Result<(), ProjectionError> {
    use crate::db::{exec, Bind::Text, Bind::Time};
    let user_id = event.aggregate_id.as_str();
    match event.decode::<DevicesEvent>()? {
        DevicesEvent::DeviceRegistered {
            token_hash,
            token,
            platform,
            at,
        } => {
            let key = sealing::key_tx(tx, user_id).await?;
            // A token that cannot be opened any more (the account is gone) registers nothing.
            let Some(token) = sealing::open_with(key.as_ref(), &token) else {
                return Ok(());
            };
            exec(
                tx,
                "INSERT INTO push_devices (token_hash, user_id, token, platform, registered_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (token_hash) DO UPDATE
                    SET user_id = $2, token = $3, platform = $4, registered_at = $5",
                &[
                    Text(&token_hash),
                    Text(user_id),
                    Text(&token),
                    Text(platform.as_str()),
                    Time(at),
                ],
            )
            .await?;
        }
        DevicesEvent::DeviceRemoved { token_hash, .. }
        | DevicesEvent::DeviceDropped { token_hash, .. } => {
            exec(
                tx,
                "DELETE FROM push_devices WHERE token_hash = $1 AND user_id = $2",
                &[Text(&token_hash), Text(user_id)],
            )
            .await?;
        }
    }
    Ok(())
}

/// The devices that receive `user_id`'s push notifications: `(token_hash, token, platform)`.
pub async fn push_devices(
    db: &Db,
    user_id: &str,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let sql = "SELECT token_hash, token, platform FROM push_devices
                WHERE user_id = $1 ORDER BY registered_at, token_hash";
    with_pool!(db, pool => sqlx::query_as(sql).bind(user_id).fetch_all(pool).await)
}

/// Those of `user_ids` who registered at least one push device.
pub async fn with_push_devices(
    db: &Db,
    user_ids: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT DISTINCT user_id FROM push_devices WHERE user_id IN ({})",
        crate::db::placeholders(1, user_ids.len())
    );
    let ids: Vec<String> = with_pool!(db, pool => {
        let mut query = sqlx::query_scalar(&sql);
        for id in user_ids {
            query = query.bind(id);
        }
        query.fetch_all(pool).await?
    });
    Ok(ids.into_iter().collect())
}

/// Emails are unique case-insensitively: compared trimmed and lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// One row of `users`.
#[derive(Debug, Clone, FromRow)]
pub struct UserRecord {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    #[sqlx(rename = "type")]
    pub user_type: String,
    pub name: Option<String>,
    pub gender: Option<String>,
    pub bio: Option<String>,
    pub dob: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub license_id: Option<String>,
    pub paypal_email: Option<String>,
    pub language: Option<String>,
    pub visibility: String,
    pub timezone_offset: Option<i32>,
    pub timezone: Option<String>,
    pub specialization: Option<String>,
    pub interests: Option<Json<Value>>,
    pub certificate_state: Option<String>,
    pub picture_file: Option<Json<Value>>,
    pub video_file: Option<Json<Value>>,
    pub certificate_file: Option<Json<Value>>,
    pub max_call_duration: Option<i64>,
    pub max_call_count: Option<i64>,
    pub push_enabled: bool,
    pub metas: Option<Json<Value>>,
    pub verification_admin: String,
    pub verification_background: String,
    pub insert_date: DateTime<Utc>,
    pub last_login_date: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// From `user_ratings` (projection `reviews`).
    pub total_reviews: i64,
    pub rate_sum: i64,
}

impl UserRecord {
    /// Where the user's wall clock is (their IANA zone, else their offset, else UTC).
    pub fn zone(&self) -> talkamie_aggregates::calendar::Zone {
        talkamie_aggregates::calendar::Zone::of_user(self.timezone.as_deref(), self.timezone_offset)
    }

    /// Midnight of `now`'s day in the user's zone (what "today" means for their counters).
    pub fn day_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let zone = self.zone();
        zone.instant(zone.local(now).date().and_time(chrono::NaiveTime::MIN))
    }
}

pub const USER_COLUMNS: &str = "id, email, email_verified, type, name, gender, bio, dob, city,
    state, country, license_id, paypal_email, language, visibility, timezone_offset, timezone,
    specialization, interests, certificate_state, picture_file, video_file, certificate_file,
    max_call_duration, max_call_count, push_enabled, metas, verification_admin,
    verification_background, insert_date, last_login_date, deleted_at,
    COALESCE((SELECT total_reviews FROM user_ratings WHERE user_ratings.user_id = users.id), 0)
        AS total_reviews,
    COALESCE((SELECT rate_sum FROM user_ratings WHERE user_ratings.user_id = users.id), 0)
        AS rate_sum";

pub async fn find_by_id(db: &Db, id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    with_pool!(db, pool => sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(pool).await)
}

/// A user row, read from the pool or from an open transaction.
pub async fn find(
    source: crate::db::Source<'_>,
    id: &str,
) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    crate::with_source!(source, conn => {
        sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// Rows of the given users by id, in one round trip (unknown ids are left out).
pub async fn find_many(
    source: crate::db::Source<'_>,
    ids: &[String],
) -> Result<std::collections::HashMap<String, UserRecord>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id {}",
        crate::db::one_of(source.is_postgres(), 1, ids.len())
    );
    let rows: Vec<UserRecord> = crate::with_source_by_store!(source, conn,
        postgres => sqlx::query_as::<_, UserRecord>(&sql).bind(ids).fetch_all(conn).await?,
        sqlite => {
            let mut query = sqlx::query_as::<_, UserRecord>(&sql);
            for id in ids {
                query = query.bind(id);
            }
            query.fetch_all(conn).await?
        }
    );
    Ok(rows.into_iter().map(|u| (u.id.clone(), u)).collect())
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
                WHERE u.email_normalized = $1 AND u.deleted_at IS NULL";
    let email = normalize_email(email);
    with_pool!(db, pool => sqlx::query_as(sql).bind(&email).fetch_optional(pool).await)
}

pub async fn password_hash(db: &Db, user_id: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = "SELECT password_hash FROM user_credentials WHERE user_id = $1";
    with_pool!(db, pool => sqlx::query_scalar(sql).bind(user_id).fetch_optional(pool).await)
}

/// Whether a session is still active for that user (revoked sessions stop their tokens).
/// A user's row with whether session `session_id` of theirs is active: a request's session
/// check and its read of the caller's row in one statement. `None` when there is no such user.
pub async fn find_with_session(
    db: &Db,
    user_id: &str,
    session_id: &str,
) -> Result<Option<(UserRecord, bool)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRecord,
        session_active: bool,
    }
    let sql = format!(
        "SELECT {USER_COLUMNS},
                EXISTS (SELECT 1 FROM sessions
                         WHERE sessions.id = $2 AND sessions.user_id = users.id
                           AND sessions.status = 'active') AS session_active
           FROM users WHERE id = $1"
    );
    let row: Option<Row> = with_pool!(db, pool => {
        sqlx::query_as(&sql).bind(user_id).bind(session_id).fetch_optional(pool).await?
    });
    Ok(row.map(|row| (row.user, row.session_active)))
}

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
