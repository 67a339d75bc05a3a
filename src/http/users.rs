//! Section 4: a user's profile (`GET/PUT/DELETE /v1/user/{id}`) and password.

use std::collections::HashMap;

use actix_web::{delete, get, put, web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use talkamie_aggregates::email_claim::{EmailClaim, EmailClaimCommand};
use talkamie_aggregates::user::UserCommand;
use talkamie_projections::profiles::Reader;
use talkamie_projections::relations::{self, Relation};
use talkamie_projections::users::{self, UserRecord};
use talkamie_projections::{sealing, with_pool, Db};
use utoipa::ToSchema;

use super::auth::{execute_user, extended_user, user_key};
use super::envelope::{ok, ApiError};
use super::profile::{self, ProfileBody};
use super::validate::Problems;
use crate::auth::{password, Authenticated};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordBody {
    old_password: Option<String>,
    new_password: Option<String>,
}

/// The signed-in user's own row (404 once deleted).
pub async fn me(state: &AppState, who: &Authenticated) -> Result<UserRecord, ApiError> {
    let row = match who.row() {
        Some(row) => Some(row.clone()),
        None => users::find_by_id(&state.store.db, &who.user_id).await?,
    };
    row.filter(|u| !u.is_deleted())
        .ok_or_else(|| ApiError::not_found("user"))
}

fn own_id(who: &Authenticated, id: &str) -> Result<(), ApiError> {
    if who.user_id == id {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Whether `reader` may see `target` at all (section 2 visibility rules); `connected` says
/// whether the two are connected (for `matches`).
pub fn may_see(reader: &UserRecord, target: &UserRecord, connected: bool) -> bool {
    if reader.id == target.id || reader.user_type == "admin" {
        return true;
    }
    if target.is_deleted() {
        return false;
    }
    if reader.user_type == "senior" && target.is_volunteer() && !target.verified() {
        return false;
    }
    match target.visibility.as_str() {
        "public" => true,
        "volunteers" => reader.user_type == "volunteer",
        "seniors" => reader.user_type == "senior",
        "matches" => connected,
        _ => false,
    }
}

/// Another user `reader` may see (404 otherwise), with the reader's relation to them.
pub async fn visible_user(
    state: &AppState,
    reader: &UserRecord,
    id: &str,
) -> Result<(UserRecord, HashMap<String, Relation>), ApiError> {
    let relations =
        relations::relations((&state.store.db).into(), &reader.id, &[id.to_string()]).await?;
    let connected = relations.get(id).is_some_and(|r| r.connected);
    let target = users::find_by_id(&state.store.db, id)
        .await?
        .filter(|target| may_see(reader, target, connected))
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok((target, relations))
}

/// A user as `reader` sees them: `extended_user` for yourself, else `full_user`.
pub async fn user_as_seen_by(
    state: &AppState,
    reader: &UserRecord,
    id: &str,
) -> Result<Value, ApiError> {
    if id == reader.id {
        return super::auth::extended_user(state, id).await;
    }
    let (target, relations) = visible_user(state, reader, id).await?;
    let online = state
        .hub
        .online(&state.store.db, std::slice::from_ref(&target.id))
        .await
        .contains(id);
    let reader = Reader::user(&reader.id, reader.user_type == "admin").with_relations(relations);
    let mut user = target.full(&reader, online);
    user["availability"] = talkamie_projections::schedules::availability_json(
        (&state.store.db).into(),
        &target,
        state.clock.now(),
    )
    .await?;
    state.files.sign_urls(&mut user);
    Ok(user)
}

/// Validates the profile fields and metas, applies them, answers `extended_user`.
pub async fn update_profile(
    state: &AppState,
    who: &Authenticated,
    body: &ProfileBody,
) -> Result<Value, ApiError> {
    let key = user_key(state, &who.user_id).await?;
    if [&body.picture, &body.video, &body.certificate]
        .iter()
        .any(|f| f.is_some())
    {
        super::files::confirm_uploads(state, &who.user_id).await?;
    }
    let request = profile::parse(&state.store.db, &who.user_id, &key, body).await?;
    let at = Utc::now();
    if !request.changes.is_empty() {
        let command = UserCommand::UpdateProfile {
            changes: Box::new(request.changes),
            at,
        };
        execute_user(state, &who.user_id, command, who.metadata()).await?;
    }
    if let Some((action, changes)) = request.metas {
        let command = UserCommand::ChangeMetas {
            action,
            changes,
            at,
        };
        execute_user(state, &who.user_id, command, who.metadata()).await?;
    }
    extended_user(state, &who.user_id).await
}

/// A user: yourself as `extended_user`, anyone else you may see as `full_user` (404 otherwise).
#[utoipa::path(tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, description = "full_user, or extended_user for yourself"),
              (status = 404, description = "no such user, or not visible to you")))]
#[get("/v1/user/{id}")]
pub async fn get_user(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let reader = me(&state, &who).await?;
    Ok(ok(user_as_seen_by(&state, &reader, &id).await?))
}

/// Updates my profile and metas (own id only). Every field is optional.
#[utoipa::path(tag = "users", security(("bearer" = [])), request_body = ProfileBody,
    params(("id" = String, Path, description = "my user id")),
    responses((status = 200, description = "extended_user"),
              (status = 400, description = "invalid input, with details per field"),
              (status = 403, description = "not your id"),
              (status = 422, description = "unknown_file, too_many_metas, meta_access_too_high")))]
#[put("/v1/user/{id}")]
pub async fn put_user(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<ProfileBody>,
) -> Result<HttpResponse, ApiError> {
    own_id(&who, &id)?;
    Ok(ok(update_profile(&state, &who, &body).await?))
}

/// Changes my password; my other sessions end.
#[utoipa::path(tag = "users", security(("bearer" = [])), request_body = PasswordBody,
    params(("id" = String, Path, description = "my user id")),
    responses((status = 200, description = "null"),
              (status = 400, description = "invalid input"),
              (status = 403, description = "not your id"),
              (status = 422, description = "wrong_password: the old password does not match")))]
#[put("/v1/user/{id}/password")]
pub async fn change_password(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<PasswordBody>,
) -> Result<HttpResponse, ApiError> {
    own_id(&who, &id)?;
    let mut problems = Problems::default();
    let old = problems
        .required("oldPassword", &body.old_password)
        .to_string();
    let new = problems
        .required("newPassword", &body.new_password)
        .to_string();
    if !new.is_empty() {
        if let Err(p) = password::check_length(&new) {
            problems.add("newPassword", p);
        }
    }
    problems.finish()?;
    let stored = users::password_hash(&state.store.db, &who.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if !password::verify(old, stored).await {
        return Err(ApiError::unprocessable(
            "wrong_password",
            "the old password does not match",
        ));
    }
    let password_hash = password::hash(new).await.map_err(|error| {
        tracing::error!(%error, "password hashing failed");
        ApiError::internal()
    })?;
    let command = UserCommand::ChangePassword {
        password_hash: user_key(&state, &who.user_id).await?.seal(&password_hash),
        keep_session: Some(who.session_id.clone()),
        at: Utc::now(),
    };
    execute_user(&state, &who.user_id, command, who.metadata()).await?;
    Ok(ok(Value::Null))
}

/// Deletes an account (your own, or any as an admin). Sessions end, the email is freed, and
/// the user's key is destroyed: their personal data becomes unreadable everywhere.
#[utoipa::path(tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, description = "null"),
              (status = 403, description = "not your id and not an admin"),
              (status = 404, description = "no such user")))]
#[delete("/v1/user/{id}")]
pub async fn delete_user(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = me(&state, &who).await?;
    if caller.id != *id && caller.user_type != "admin" {
        return Err(ApiError::forbidden());
    }
    let target = users::find_by_id(&state.store.db, &id)
        .await?
        .filter(|u| !u.is_deleted())
        .ok_or_else(|| ApiError::not_found("user"))?;
    let email = target.email.clone().unwrap_or_default();
    // A call still running ends and is billed while the wallet is open.
    crate::calls::finish_calls_of(&state, &id, who.metadata()).await?;
    // The wallet decides next: a pending payout refuses the deletion before anything goes.
    crate::ledger::forfeit_balance(&state, &id, who.metadata()).await?;
    // Future schedules are cancelled, so the other side is alerted and their time is free.
    let now = state.clock.now();
    for schedule in
        talkamie_projections::schedules::future_of((&state.store.db).into(), &id, now).await?
    {
        crate::scheduling::cancel(&state, &schedule, &id, who.metadata()).await?;
    }
    super::support::close_open_ticket_of(&state, &who, &id).await?;
    execute_user(
        &state,
        &id,
        UserCommand::Delete { at: Utc::now() },
        who.metadata(),
    )
    .await?;
    // The read models are wiped now (read-your-writes); destroy the key, free the email.
    sealing::destroy_key(&state.store.db, &id).await?;
    if !email.is_empty() {
        let claim_id = crate::accounts::email_claim_id(&state.hash_key, &email);
        let release = EmailClaimCommand::Release {
            user_id: id.to_string(),
        };
        state
            .store
            .execute::<EmailClaim>(&claim_id, release, who.metadata())
            .await
            .map_err(|e| ApiError::from_command(e, |_| ApiError::internal()))?;
        if let Err(error) = state.mailer.forget(&email).await {
            tracing::warn!(%error, "could not remove stored mails of a deleted user");
        }
    }
    if let Err(error) = state.push.forget(&id).await {
        tracing::warn!(%error, "could not remove stored notifications of a deleted user");
    }
    super::files::delete_all(&state, &id).await?;
    compact(&state.store.db).await;
    Ok(ok(Value::Null))
}

/// SQLite keeps old page images in its WAL file until a checkpoint: fold it back into the
/// database (where `secure_delete` has zeroed the freed cells) so nothing deleted lingers.
async fn compact(db: &Db) {
    if let Db::Sqlite(_) = db {
        let result = with_pool!(db, pool => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await.map(|_| ())
        });
        if let Err(error) = result {
            tracing::warn!(%error, "WAL checkpoint after a deletion failed");
        }
    }
}
