//! Section 3: sign-up, sign-in, get user by token, refresh (rotating, with reuse detection),
//! sign-out, reset password.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::user::{User, UserCommand, UserError, UserEvent, UserType};
use talkamie_projections::{relations, sealing, users};
use utoipa::ToSchema;
use uuid::Uuid;

use super::envelope::{created, ok, ApiError};
use super::otp::OTP_INVALID;
use super::validate::Problems;
use crate::accounts;
use crate::auth::otp::OtpPurpose;
use crate::auth::tokens::TokenKind;
use crate::auth::{password, Authenticated};
use crate::ratelimit;
use crate::state::AppState;
use crate::store::Metadata;

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignUpBody {
    email: Option<String>,
    password: Option<String>,
    name: Option<String>,
    /// `senior` or `volunteer`
    #[serde(rename = "type")]
    user_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignInBody {
    email: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshBody {
    refresh: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetPasswordBody {
    email: Option<String>,
    code: Option<String>,
    new_password: Option<String>,
}

pub fn client_ip(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn user_rejected(error: UserError) -> ApiError {
    match error {
        UserError::TooManyMetas => ApiError::unprocessable("too_many_metas", error.to_string()),
        UserError::MetaAccessTooHigh(_) => {
            ApiError::unprocessable("meta_access_too_high", error.to_string())
        }
        UserError::BadMetaKey => ApiError::invalid(serde_json::json!({"metas": error.to_string()})),
        UserError::NotAVolunteer | UserError::BasicStepIsDerived => {
            ApiError::unprocessable("not_applicable", error.to_string())
        }
        UserError::NotFound => ApiError::not_found("user"),
        UserError::SessionNotFound => {
            ApiError::unauthenticated("this session has ended; sign in again")
        }
        UserError::AlreadyRegistered | UserError::SessionExists => {
            ApiError::conflict("already_exists", error.to_string())
        }
    }
}

/// Runs a command on a user; a refusal becomes the matching 4xx.
pub async fn execute_user(
    state: &AppState,
    user_id: &str,
    command: UserCommand,
    metadata: Metadata,
) -> Result<Vec<UserEvent>, ApiError> {
    state
        .store
        .execute::<User>(user_id, command, metadata)
        .await
        .map_err(|e| ApiError::from_command(e, user_rejected))
}

/// The user's sealing key; a user without one is deleted (404).
pub async fn user_key(state: &AppState, user_id: &str) -> Result<sealing::UserKey, ApiError> {
    sealing::key(&state.store.db, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// The signed-in user's own view (`extended_user`).
pub async fn extended_user(state: &AppState, user_id: &str) -> Result<Value, ApiError> {
    let user = users::find_by_id(&state.store.db, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let online = state
        .hub
        .online(&state.store.db, std::slice::from_ref(&user.id))
        .await;
    let now = state.clock.now();
    let counters =
        relations::counters((&state.store.db).into(), user_id, user.day_start(now)).await?;
    let mut rendered = user.extended(online.contains(user_id), &counters);
    rendered["availability"] =
        talkamie_projections::schedules::availability_json((&state.store.db).into(), &user, now)
            .await?;
    state.files.sign_urls(&mut rendered);
    Ok(rendered)
}

/// Opens a session and answers `user_account`.
async fn open_session(
    state: &AppState,
    user_id: &str,
    metadata: Metadata,
) -> Result<Value, ApiError> {
    let session_id = Uuid::new_v4().to_string();
    let jti = Uuid::new_v4().to_string();
    let command = UserCommand::OpenSession {
        session_id: session_id.clone(),
        refresh_jti: jti.clone(),
        at: Utc::now(),
    };
    execute_user(state, user_id, command, metadata).await?;
    let tokens = tokens_for(state, user_id, &session_id, &jti)?;
    Ok(json!({ "user": extended_user(state, user_id).await?, "tokens": tokens }))
}

fn tokens_for(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    jti: &str,
) -> Result<Value, ApiError> {
    let sign = |r: anyhow::Result<String>| {
        r.map_err(|error| {
            tracing::error!(%error, "signing a token failed");
            ApiError::internal()
        })
    };
    Ok(json!({
        "access": sign(state.tokens.access(user_id, session_id))?,
        "refresh": sign(state.tokens.refresh(user_id, session_id, jti))?,
    }))
}

fn request_metadata(req: &HttpRequest) -> Metadata {
    let mut metadata = Metadata::new();
    if let Some(id) = req.extensions_ref_request_id() {
        metadata.insert("requestId".into(), id);
    }
    metadata
}

trait RequestIdExt {
    fn extensions_ref_request_id(&self) -> Option<String>;
}

impl RequestIdExt for HttpRequest {
    fn extensions_ref_request_id(&self) -> Option<String> {
        use actix_web::HttpMessage;
        self.extensions()
            .get::<tracing_actix_web::RequestId>()
            .map(|id| id.to_string())
    }
}

/// Creates an account (senior or volunteer) and signs it in.
#[utoipa::path(tag = "auth", request_body = SignUpBody, responses(
    (status = 201, description = "user_account"),
    (status = 400, description = "invalid input"),
    (status = 409, description = "already_exists: the email is taken")))]
#[post("/v1/auth/sign-up")]
pub async fn sign_up(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignUpBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.required("email", &body.email).trim().to_string();
    problems.check_email("email", &email);
    let password = problems.required("password", &body.password).to_string();
    if !password.is_empty() {
        if let Err(p) = password::check_length(&password) {
            problems.add("password", p);
        }
    }
    let name = problems.required("name", &body.name).trim().to_string();
    if !name.is_empty() {
        problems.check_length("name", &name, 1, 100);
    }
    let user_type = match body.user_type.as_deref() {
        Some("senior") => Some(UserType::Senior),
        Some("volunteer") => Some(UserType::Volunteer),
        Some(_) => {
            problems.add("type", "must be senior or volunteer");
            None
        }
        None => {
            problems.add("type", "is required");
            None
        }
    };
    problems.finish()?;
    let user_type = user_type.ok_or_else(ApiError::internal)?;

    let metadata = request_metadata(&req);
    let user_id = accounts::create_account(
        &state.store,
        &state.hash_key,
        accounts::NewAccount {
            email: &email,
            password,
            name: &name,
            user_type,
        },
        metadata.clone(),
    )
    .await?;
    Ok(created(open_session(&state, &user_id, metadata).await?))
}

/// Signs in with email and password. One message for unknown email and wrong password.
#[utoipa::path(tag = "auth", request_body = SignInBody, responses(
    (status = 200, description = "user_account"),
    (status = 401, description = "Email and/or password not valid"),
    (status = 429, description = "too many attempts; see Retry-After")))]
#[post("/v1/auth/sign-in")]
pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignInBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.required("email", &body.email).trim().to_string();
    let password = problems.required("password", &body.password).to_string();
    problems.finish()?;
    ratelimit::check(&state.limits.sign_in_per_ip, &client_ip(&req))?;
    ratelimit::check(
        &state.limits.sign_in_per_email,
        &users::normalize_email(&email),
    )?;

    let refused = || ApiError::unauthenticated("Email and/or password not valid");
    let Some((user_id, hash)) = users::credentials_by_email(&state.store.db, &email).await? else {
        password::verify_dummy(password).await;
        return Err(refused());
    };
    if !password::verify(password, hash).await {
        return Err(refused());
    }
    Ok(ok(
        open_session(&state, &user_id, request_metadata(&req)).await?
    ))
}

/// The signed-in user.
#[utoipa::path(tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "{user: extended_user}"),
    (status = 401, description = "missing, invalid or ended token")))]
#[get("/v1/auth")]
pub async fn me(state: web::Data<AppState>, who: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(ok(
        json!({ "user": extended_user(&state, &who.user_id).await? }),
    ))
}

/// Exchanges a refresh token for new tokens. The old refresh token dies; presenting it again
/// ends the whole session (theft detection).
#[utoipa::path(tag = "auth", request_body = RefreshBody, responses(
    (status = 200, description = "{tokens:{access,refresh}}"),
    (status = 401, description = "invalid, expired or reused refresh token")))]
#[post("/v1/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let token = problems
        .required("refresh", &body.refresh)
        .trim()
        .to_string();
    problems.finish()?;
    let claims = state
        .tokens
        .verify(&token, TokenKind::Refresh)
        .ok_or_else(|| ApiError::unauthenticated("invalid or expired refresh token"))?;
    let presented = claims
        .jti
        .ok_or_else(|| ApiError::unauthenticated("invalid refresh token"))?;
    let new_jti = Uuid::new_v4().to_string();
    let command = UserCommand::RefreshSession {
        session_id: claims.sid.clone(),
        presented_jti: presented,
        new_jti: new_jti.clone(),
        at: Utc::now(),
    };
    let events = execute_user(&state, &claims.sub, command, request_metadata(&req)).await?;
    match events.first() {
        Some(UserEvent::SessionRefreshed { .. }) => Ok(ok(json!({
            "tokens": tokens_for(&state, &claims.sub, &claims.sid, &new_jti)?
        }))),
        _ => Err(ApiError::unauthenticated(
            "this refresh token was already used; the session has ended for your safety",
        )),
    }
}

/// Ends this session: its access and refresh tokens stop working.
#[utoipa::path(tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "null"), (status = 401, description = "not signed in")))]
#[delete("/v1/auth/sign-out")]
pub async fn sign_out(
    state: web::Data<AppState>,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let command = UserCommand::CloseSession {
        session_id: who.session_id.clone(),
        at: Utc::now(),
    };
    execute_user(&state, &who.user_id, command, who.metadata()).await?;
    Ok(ok(Value::Null))
}

/// Sets a new password with a `reset-password` code; every session ends.
#[utoipa::path(tag = "auth", request_body = ResetPasswordBody, responses(
    (status = 200, description = "null"),
    (status = 400, description = "invalid input"),
    (status = 422, description = "invalid_code, code_expired or too_many_tries")))]
#[post("/v1/auth/reset-password")]
pub async fn reset_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ResetPasswordBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    let code = problems.otp_code("code", &body.code);
    let new_password = problems
        .required("newPassword", &body.new_password)
        .to_string();
    if !new_password.is_empty() {
        if let Err(p) = password::check_length(&new_password) {
            problems.add("newPassword", p);
        }
    }
    problems.finish()?;
    ratelimit::check(&state.limits.otp_per_ip, &client_ip(&req))?;

    let normalized = users::normalize_email(&email);
    let Some((user_id, _)) = users::credentials_by_email(&state.store.db, &normalized).await?
    else {
        return Err(ApiError::unprocessable(
            OTP_INVALID,
            "the code is not valid",
        ));
    };
    let metadata = request_metadata(&req);
    super::otp::check_code(&state, &normalized, OtpPurpose::ResetPassword, &code, true).await?;
    let password_hash = password::hash(new_password).await.map_err(|error| {
        tracing::error!(%error, "password hashing failed");
        ApiError::internal()
    })?;
    let command = UserCommand::ResetPassword {
        password_hash: user_key(&state, &user_id).await?.seal(&password_hash),
        at: Utc::now(),
    };
    execute_user(&state, &user_id, command, metadata).await?;
    Ok(ok(Value::Null))
}
