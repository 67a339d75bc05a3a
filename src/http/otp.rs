//! Section 3: one-time codes by mail (`verify-email`, `reset-password`).

use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::otp::{Otp, OtpCommand, OtpError, OtpEvent};
use talkamie_aggregates::user::UserCommand;
use talkamie_projections::users;
use utoipa::ToSchema;

use super::auth::{client_ip, execute_user};
use super::envelope::{ok, ApiError};
use super::validate::Problems;
use crate::auth::otp::{self as codes, OtpPurpose};
use crate::ratelimit;
use crate::state::AppState;
use crate::store::Metadata;

pub const OTP_INVALID: &str = "invalid_code";

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpBody {
    email: Option<String>,
    purpose: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpVerifyBody {
    email: Option<String>,
    code: Option<String>,
    purpose: Option<String>,
}

pub fn otp_error(error: OtpError) -> ApiError {
    match error {
        OtpError::NoValidCode => ApiError::unprocessable(OTP_INVALID, "the code is not valid"),
        OtpError::Expired => {
            ApiError::unprocessable("code_expired", "the code has expired; request a new one")
        }
        OtpError::TooManyTries => {
            ApiError::unprocessable("too_many_tries", "too many wrong codes; request a new one")
        }
    }
}

/// Checks `code` for (email, purpose), counting a try; `consume` uses it up when right.
pub async fn check_code(
    state: &AppState,
    normalized_email: &str,
    purpose: OtpPurpose,
    code: &str,
    consume: bool,
) -> Result<(), ApiError> {
    let verify = OtpCommand::Verify {
        code_hash: codes::code_hash(&state.hash_key, normalized_email, purpose, code),
        consume,
        at: Utc::now(),
    };
    let events = state
        .store
        .execute::<Otp>(
            &codes::aggregate_id(&state.hash_key, normalized_email, purpose),
            verify,
            Metadata::new(),
        )
        .await
        .map_err(|e| ApiError::from_command(e, otp_error))?;
    ensure_accepted(&events)
}

/// A verification that appended `OtpAttemptFailed` was a wrong code.
fn ensure_accepted(events: &[OtpEvent]) -> Result<(), ApiError> {
    match events.first() {
        Some(OtpEvent::OtpAttemptFailed { tries_left }) => Err(ApiError::unprocessable(
            OTP_INVALID,
            format!("the code is not valid ({tries_left} tries left)"),
        )),
        _ => Ok(()),
    }
}

fn parse_purpose(problems: &mut Problems, purpose: &Option<String>) -> Option<OtpPurpose> {
    match purpose.as_deref() {
        Some("verify-email") => Some(OtpPurpose::VerifyEmail),
        Some("reset-password") => Some(OtpPurpose::ResetPassword),
        Some(_) => {
            problems.add("purpose", "must be verify-email or reset-password");
            None
        }
        None => {
            problems.add("purpose", "is required");
            None
        }
    }
}

/// Mails a 6-digit code (valid 10 minutes, 5 tries). Always 200, known email or not.
#[utoipa::path(tag = "otp", request_body = OtpBody, responses(
    (status = 200, description = "null"),
    (status = 400, description = "invalid input"),
    (status = 429, description = "too many codes requested; see Retry-After")))]
#[post("/v1/otp")]
pub async fn request_code(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<OtpBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.required("email", &body.email).trim().to_string();
    problems.check_email("email", &email);
    let purpose = parse_purpose(&mut problems, &body.purpose);
    problems.finish()?;
    let purpose = purpose.ok_or_else(ApiError::internal)?;
    let normalized = users::normalize_email(&email);
    ratelimit::check(&state.limits.otp_per_ip, &client_ip(&req))?;
    ratelimit::check(&state.limits.otp_per_email, &normalized)?;

    if users::credentials_by_email(&state.store.db, &normalized)
        .await?
        .is_none()
    {
        return Ok(ok(Value::Null)); // no user enumeration
    }
    let code = codes::generate_code();
    let issue = OtpCommand::Issue {
        code_hash: codes::code_hash(&state.hash_key, &normalized, purpose, &code),
        at: Utc::now(),
    };
    state
        .store
        .execute::<Otp>(
            &codes::aggregate_id(&state.hash_key, &normalized, purpose),
            issue,
            Metadata::new(),
        )
        .await
        .map_err(|e| ApiError::from_command(e, otp_error))?;
    let (subject, intro) = match purpose {
        OtpPurpose::VerifyEmail => ("Your Talkamie verification code", "to verify your email"),
        OtpPurpose::ResetPassword => (
            "Your Talkamie password reset code",
            "to reset your password",
        ),
    };
    let text = format!(
        "Hello,\n\nUse this code {intro}: {code}\n\nIt is valid for 10 minutes. \
         If you did not ask for it, you can ignore this message.\n\nTalkamie\n"
    );
    if let Err(error) = state.mailer.send(&email, subject, &text).await {
        tracing::error!(%error, "sending the code failed");
        return Err(ApiError::unavailable(
            "the code could not be sent; try again",
        ));
    }
    Ok(ok(Value::Null))
}

/// Checks a code. `verify-email` uses it up and marks the email verified; `reset-password`
/// only checks it, so the same code can then be used by `POST /v1/auth/reset-password`.
#[utoipa::path(tag = "otp", request_body = OtpVerifyBody, responses(
    (status = 200, description = "{verified:true}"),
    (status = 400, description = "invalid input"),
    (status = 422, description = "invalid_code, code_expired or too_many_tries")))]
#[post("/v1/otp/verify")]
pub async fn verify_code(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<OtpVerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    let code = problems.otp_code("code", &body.code);
    let purpose = parse_purpose(&mut problems, &body.purpose);
    problems.finish()?;
    let purpose = purpose.ok_or_else(ApiError::internal)?;
    ratelimit::check(&state.limits.otp_per_ip, &client_ip(&req))?;

    let normalized = users::normalize_email(&email);
    let Some((user_id, _)) = users::credentials_by_email(&state.store.db, &normalized).await?
    else {
        return Err(ApiError::unprocessable(
            OTP_INVALID,
            "the code is not valid",
        ));
    };
    check_code(
        &state,
        &normalized,
        purpose,
        &code,
        purpose == OtpPurpose::VerifyEmail,
    )
    .await?;
    if purpose == OtpPurpose::VerifyEmail {
        execute_user(
            &state,
            &user_id,
            UserCommand::VerifyEmail { at: Utc::now() },
            Metadata::new(),
        )
        .await?;
    }
    Ok(ok(json!({ "verified": true })))
}
