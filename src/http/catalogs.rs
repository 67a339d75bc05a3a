//! Section 4 and 9 reference data: interests, specialization areas, FAQs (seeded by
//! migrations) and the coin constants (from configuration). No sign-in needed.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use talkamie_projections::with_pool;
use utoipa::IntoParams;

use super::envelope::{ok, ApiError};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct KeywordQuery {
    /// Case-insensitive text to look for
    keyword: Option<String>,
}

/// `%keyword%` for LIKE, with LIKE's own wildcards escaped (`ESCAPE '\'`).
pub fn like_pattern(keyword: Option<&str>) -> String {
    let keyword = keyword.unwrap_or("").trim().to_lowercase();
    let escaped = keyword
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The interests a profile can pick, with emoji.
#[utoipa::path(tag = "catalogs", params(KeywordQuery),
    responses((status = 200, description = "[{id,name,emoji}]")))]
#[get("/v1/interests")]
pub async fn interests(
    state: web::Data<AppState>,
    query: web::Query<KeywordQuery>,
) -> Result<HttpResponse, ApiError> {
    let sql = "SELECT id, name, emoji FROM interests
                WHERE LOWER(name) LIKE $1 ESCAPE '\\' ORDER BY sort_order";
    let pattern = like_pattern(query.keyword.as_deref());
    let rows: Vec<(String, String, String)> = with_pool!(&state.store.db, pool => {
        sqlx::query_as(sql).bind(&pattern).fetch_all(pool).await?
    });
    let data: Vec<_> = rows
        .into_iter()
        .map(|(id, name, emoji)| json!({"id": id, "name": name, "emoji": emoji}))
        .collect();
    Ok(ok(data))
}

/// The 34 areas of healthcare work a volunteer can name.
#[utoipa::path(tag = "catalogs", responses((status = 200, description = "[{code,name}]")))]
#[get("/v1/specializations")]
pub async fn specializations(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let sql = "SELECT code, name FROM specializations ORDER BY sort_order";
    let rows: Vec<(String, String)> = with_pool!(&state.store.db, pool => {
        sqlx::query_as(sql).fetch_all(pool).await?
    });
    let data: Vec<_> = rows
        .into_iter()
        .map(|(code, name)| json!({"code": code, "name": name}))
        .collect();
    Ok(ok(data))
}

const FAQ_TYPES: [&str; 5] = ["general", "seniors", "volunteers", "finance", "safety"];

async fn faq_rows(
    state: &AppState,
    faq_type: Option<&str>,
    keyword: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let sql = "SELECT id, type, question, answer FROM faqs
                WHERE ($1 = '' OR type = $1)
                  AND (LOWER(question) LIKE $2 ESCAPE '\\' OR LOWER(answer) LIKE $2 ESCAPE '\\')
                ORDER BY type, sort_order";
    let pattern = like_pattern(keyword);
    let rows: Vec<(String, String, String, String)> = with_pool!(&state.store.db, pool => {
        sqlx::query_as(sql)
            .bind(faq_type.unwrap_or(""))
            .bind(&pattern)
            .fetch_all(pool)
            .await?
    });
    let data: Vec<_> = rows
        .into_iter()
        .map(|(id, t, q, a)| json!({"id": id, "type": t, "question": q, "answer": a}))
        .collect();
    Ok(ok(data))
}

/// Frequently asked questions, all types.
#[utoipa::path(tag = "catalogs", params(KeywordQuery),
    responses((status = 200, description = "[{id,type,question,answer}]")))]
#[get("/v1/faqs")]
pub async fn faqs(
    state: web::Data<AppState>,
    query: web::Query<KeywordQuery>,
) -> Result<HttpResponse, ApiError> {
    faq_rows(&state, None, query.keyword.as_deref()).await
}

/// Frequently asked questions of one type.
#[utoipa::path(tag = "catalogs",
    params(("type" = String, Path, description = "general, seniors, volunteers, finance or safety"), KeywordQuery),
    responses((status = 200, description = "[{id,type,question,answer}]"),
              (status = 400, description = "unknown type")))]
#[get("/v1/faqs/{type}")]
pub async fn faqs_by_type(
    state: web::Data<AppState>,
    faq_type: web::Path<String>,
    query: web::Query<KeywordQuery>,
) -> Result<HttpResponse, ApiError> {
    if !FAQ_TYPES.contains(&faq_type.as_str()) {
        return Err(ApiError::invalid(json!({
            "type": "must be general, seniors, volunteers, finance or safety"
        })));
    }
    faq_rows(&state, Some(&faq_type), query.keyword.as_deref()).await
}

/// Coin prices and limits (configurable, see the README).
#[utoipa::path(tag = "catalogs", responses((status = 200, description = "coin constants")))]
#[get("/v1/constants/coins")]
pub async fn coins(state: web::Data<AppState>) -> HttpResponse {
    ok(&state.settings.coins)
}
