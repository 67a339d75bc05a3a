//! Liveness, readiness and metrics.

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use super::envelope::{ok, ApiError};
use crate::state::AppState;

/// The process is up.
#[utoipa::path(tag = "operations", responses((status = 200, description = "alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    ok(json!({ "status": "ok" }))
}

/// The process can serve: the database answers.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "the database does not answer")))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(3), state.store.db.ping()).await {
        Ok(Ok(())) => Ok(ok(json!({ "status": "ready", "database": "ok" }))),
        _ => Err(ApiError::unavailable("the database does not answer")),
    }
}

/// Prometheus text exposition (version 0.0.4): request counts and latencies by route, open
/// sockets, the projector's position. Public, like the health checks.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "the metrics", content_type = "text/plain", body = String)))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render(&state))
}
