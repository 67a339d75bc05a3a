//! The contract's envelopes (section 1): every answer, success or error, has the same shape.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{json, Value};

use crate::store::CommandError;

/// `{"success":true,"statusCode":200,"message":"OK","data":...}`
pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    respond(StatusCode::OK, data)
}

/// A list page: the envelope plus `pagination`.
pub fn ok_page<T: Serialize>(data: T, pagination: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "success": true,
        "statusCode": 200,
        "message": "OK",
        "data": data,
        "pagination": pagination,
    }))
}

pub fn created<T: Serialize>(data: T) -> HttpResponse {
    respond(StatusCode::CREATED, data)
}

fn respond<T: Serialize>(status: StatusCode, data: T) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "success": true,
        "statusCode": status.as_u16(),
        "message": status.canonical_reason().unwrap_or("OK"),
        "data": data,
    }))
}

/// An error answer: `{"success":false,"statusCode":4xx,"message":...,"error":"machine_code"}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }
    }

    /// 400 with per-field problems: `details: {"field": "what is wrong"}`.
    pub fn invalid(details: Value) -> Self {
        ApiError {
            details: Some(details),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", "invalid input")
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "you may not do this")
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; try again later",
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side",
        )
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "success": false,
            "statusCode": self.status.as_u16(),
            "message": self.message,
            "error": self.code,
        });
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        body
    }

    /// Maps a command failure; `rejected` turns the aggregate's own error into an answer.
    pub fn from_command<E: std::error::Error>(
        error: CommandError<E>,
        rejected: impl FnOnce(E) -> ApiError,
    ) -> ApiError {
        match error {
            CommandError::Rejected(e) => rejected(e),
            CommandError::Conflict => ApiError::conflict("conflict", error.to_string()),
            CommandError::Unavailable(_) | CommandError::Lagging => {
                tracing::warn!(%error, "command could not complete");
                ApiError::unavailable(error.to_string())
            }
            CommandError::Overloaded => {
                let mut answer = ApiError::unavailable(error.to_string());
                answer.retry_after_secs = Some(1);
                answer
            }
            CommandError::Internal(_) => {
                tracing::error!(%error, "command failed");
                ApiError::internal()
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(self.body())
    }
}

/// Database failures: a database that does not answer is 503, anything else 500 (logged).
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(%error, "database unavailable");
                ApiError::unavailable("the database is unavailable; try again shortly")
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal()
            }
        }
    }
}
