//! Section 10: the devices that receive my push notifications. The token is sealed with my key
//! before it enters the log (the PushDevices aggregate knows it by its SHA-256).

use actix_web::{delete, post, web, HttpResponse};
use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use talkamie_aggregates::devices::{DevicesCommand, Platform, PushDevices};

use super::auth::user_key;
use super::envelope::{ok, ApiError};
use super::users::me;
use crate::auth::Authenticated;
use crate::state::AppState;

/// Longest device token accepted (FCM tokens are ~160 characters, APNs 64 hex digits).
const MAX_TOKEN_CHARS: usize = 4096;

/// The hex SHA-256 a device is known by.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_of(body: &Value) -> Result<String, ApiError> {
    match body.get("token") {
        Some(Value::String(token))
            if !token.trim().is_empty()
                && token.chars().count() <= MAX_TOKEN_CHARS
                && !token.chars().any(char::is_control) =>
        {
            Ok(token.trim().to_string())
        }
        _ => Err(ApiError::invalid(json!({
            "token": format!("is required: the device's push token (1 to {MAX_TOKEN_CHARS} characters)")
        }))),
    }
}

async fn execute(
    state: &AppState,
    who: &Authenticated,
    command: DevicesCommand,
) -> Result<(), ApiError> {
    state
        .store
        .execute::<PushDevices>(&who.user_id, command, who.metadata())
        .await
        .map_err(|e| ApiError::from_command(e, |never| match never {}))?;
    Ok(())
}

/// Registers this device for my push notifications (again at every app start is fine).
#[utoipa::path(tag = "push", security(("bearer" = [])),
    request_body(content = Object, description = "{token, platform: ios|android|web}"),
    responses((status = 200, description = "null"),
              (status = 400, description = "missing token or unknown platform")))]
#[post("/v1/push-notification")]
pub async fn register_device(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let token = token_of(&body)?;
    let platform = body
        .get("platform")
        .and_then(Value::as_str)
        .and_then(Platform::parse)
        .ok_or_else(|| ApiError::invalid(json!({"platform": "must be ios, android or web"})))?;
    me(&state, &who).await?;
    let key = user_key(&state, &who.user_id).await?;
    let command = DevicesCommand::Register {
        token_hash: token_hash(&token),
        token: key.seal(&token),
        platform,
        at: Utc::now(),
    };
    execute(&state, &who, command).await?;
    Ok(ok(Value::Null))
}

/// Stops push notifications to this device (signing out of the app). Unknown tokens are fine.
#[utoipa::path(tag = "push", security(("bearer" = [])),
    request_body(content = Object, description = "{token}"),
    responses((status = 200, description = "null"),
              (status = 400, description = "missing token")))]
#[delete("/v1/push-notification")]
pub async fn remove_device(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let token = token_of(&body)?;
    me(&state, &who).await?;
    let command = DevicesCommand::Remove {
        token_hash: token_hash(&token),
        at: Utc::now(),
    };
    execute(&state, &who, command).await?;
    Ok(ok(Value::Null))
}
