//! Section 4 (the part the foundation needs): update my profile, change my password.
//! The full profile (pictures, interests, metas, ...) comes with the profiles issue.

use actix_web::{put, web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use talkamie_aggregates::user::{Gender, ProfileChanges, User, UserCommand};
use utoipa::ToSchema;

use super::auth::{extended_user, user_rejected};
use super::envelope::{ok, ApiError};
use super::validate::Problems;
use crate::auth::{password, Authenticated};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ProfileBody {
    pub name: Option<String>,
    /// `male`, `female` or `unspecified`
    pub gender: Option<String>,
    pub bio: Option<String>,
    pub language: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordBody {
    old_password: Option<String>,
    new_password: Option<String>,
}

fn own_id(who: &Authenticated, id: &str) -> Result<(), ApiError> {
    if who.user_id == id {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Validates the profile fields of `PUT /v1/user/{id}` and WebSocket `user.update`.
pub fn profile_changes(body: &ProfileBody) -> Result<ProfileChanges, ApiError> {
    let mut problems = Problems::default();
    let mut changes = ProfileChanges::default();
    if let Some(name) = &body.name {
        problems.check_length("name", name, 1, 100);
        changes.name = Some(name.trim().to_string());
    }
    if let Some(gender) = &body.gender {
        changes.gender = match gender.as_str() {
            "male" => Some(Gender::Male),
            "female" => Some(Gender::Female),
            "unspecified" => Some(Gender::Unspecified),
            _ => {
                problems.add("gender", "must be male, female or unspecified");
                None
            }
        };
    }
    if let Some(bio) = &body.bio {
        problems.check_length("bio", bio, 0, 1000);
        changes.bio = Some(bio.trim().to_string());
    }
    if let Some(language) = &body.language {
        problems.check_length("language", language, 1, 35);
        changes.language = Some(language.trim().to_string());
    }
    problems.finish()?;
    Ok(changes)
}

/// Applies profile changes and answers the user's `extended_user`.
pub async fn update_profile(
    state: &AppState,
    who: &Authenticated,
    body: &ProfileBody,
) -> Result<Value, ApiError> {
    let changes = profile_changes(body)?;
    let command = UserCommand::UpdateProfile {
        changes,
        at: Utc::now(),
    };
    state
        .store
        .execute::<User>(&who.user_id, command, who.metadata())
        .await
        .map_err(|e| ApiError::from_command(e, user_rejected))?;
    extended_user(state, &who.user_id).await
}

/// Updates my profile (own id only).
#[utoipa::path(tag = "users", security(("bearer" = [])), request_body = ProfileBody,
    params(("id" = String, Path, description = "my user id")),
    responses((status = 200, description = "extended_user"),
              (status = 400, description = "invalid input"),
              (status = 403, description = "not your id")))]
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
    let stored = talkamie_projections::users::password_hash(&state.store.db, &who.user_id)
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
        password_hash,
        keep_session: Some(who.session_id.clone()),
        at: Utc::now(),
    };
    state
        .store
        .execute::<User>(&who.user_id, command, who.metadata())
        .await
        .map_err(|e| ApiError::from_command(e, user_rejected))?;
    Ok(ok(Value::Null))
}
