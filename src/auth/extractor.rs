//! `Authenticated`: a handler argument that requires a valid access token of a live session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use chrono::Utc;
use talkamie_aggregates::user::{ProfileChanges, User, UserCommand};
use talkamie_projections::users::{self, UserRecord};

use crate::auth::tokens::{Claims, TokenKind};
use crate::http::envelope::ApiError;
use crate::state::AppState;
use crate::store::Metadata;

#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: String,
    pub session_id: String,
    /// The user's row as this request's session check read it (one statement for both), for
    /// `me`. `None` on a socket, whose identity outlives any one read of the row.
    row: Option<Arc<UserRecord>>,
}

impl Authenticated {
    /// The caller's row as read with this request's session check, if it was.
    pub fn row(&self) -> Option<&UserRecord> {
        self.row.as_deref()
    }

    pub fn metadata(&self) -> Metadata {
        Metadata::from([
            ("userId".to_string(), self.user_id.clone()),
            ("sessionId".to_string(), self.session_id.clone()),
        ])
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_ended() -> ApiError {
    ApiError::unauthenticated("this session has ended; sign in again")
}

fn verify(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    state
        .tokens
        .verify(token, TokenKind::Access)
        .ok_or_else(|| ApiError::unauthenticated("invalid or expired access token"))
}

/// Verifies an access token and that its session is still active (a socket's sign-in).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    let claims = verify(state, token)?;
    if !users::session_is_active(&state.store.db, &claims.sid, &claims.sub).await? {
        return Err(session_ended());
    }
    Ok(Authenticated {
        user_id: claims.sub,
        session_id: claims.sid,
        row: None,
    })
}

/// [`authenticate`] for one request: the caller's row comes with the session check.
async fn authenticate_request(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    let claims = verify(state, token)?;
    let row = match users::find_with_session(&state.store.db, &claims.sub, &claims.sid).await? {
        Some((_, false)) => return Err(session_ended()),
        Some((row, true)) => Some(Arc::new(row)),
        // No row of the user: the session alone decides (`me` answers 404 then).
        None if users::session_is_active(&state.store.db, &claims.sid, &claims.sub).await? => None,
        None => return Err(session_ended()),
    };
    Ok(Authenticated {
        user_id: claims.sub,
        session_id: claims.sid,
        row,
    })
}

/// `x-user-timezone-offset: <minutes>` (JavaScript's sign) updates the user's offset.
async fn record_timezone_offset(
    state: &AppState,
    req: &HttpRequest,
    who: &mut Authenticated,
) -> Result<(), ApiError> {
    let Some(raw) = req.headers().get("x-user-timezone-offset") else {
        return Ok(());
    };
    let offset = raw
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|v| (-840..=840).contains(v))
        .ok_or_else(|| {
            ApiError::invalid(serde_json::json!({
                "x-user-timezone-offset": "must be whole minutes between -840 and 840"
            }))
        })?;
    if who.row().is_some_and(|u| u.timezone_offset == Some(offset)) {
        return Ok(());
    }
    let command = UserCommand::UpdateProfile {
        changes: Box::new(ProfileChanges {
            timezone_offset: Some(offset),
            ..Default::default()
        }),
        at: Utc::now(),
    };
    state
        .store
        .execute::<User>(&who.user_id, command, who.metadata())
        .await
        .map_err(|e| ApiError::from_command(e, |_| ApiError::unauthenticated("unknown user")))?;
    // The row read before this change is stale now: `me` reads it again.
    who.row = None;
    Ok(())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(ApiError::internal)?
                .clone();
            let token = bearer(&req)
                .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer token"))?;
            let mut who = authenticate_request(&state, token).await?;
            record_timezone_offset(&state, &req, &mut who).await?;
            Ok(who)
        })
    }
}
