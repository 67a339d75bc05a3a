//! Section 4 and 9 reference data: interests, specialization areas, FAQs (seeded by
//! migrations, added to by admins) and the coin constants (from configuration). Reading them
//! needs no sign-in.

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use talkamie_projections::with_pool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::admin::require_admin;
use super::envelope::{created, ok, ApiError};
use super::validate::Problems;
use crate::auth::Authenticated;
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

#[derive(Debug, Deserialize, ToSchema)]
pub struct FaqBody {
    /// general, seniors, volunteers, finance or safety
    #[serde(rename = "type")]
    faq_type: Option<String>,
    question: Option<String>,
    answer: Option<String>,
}

/// Whether a database error is a unique-key violation (SQLite 2067/1555, PostgreSQL 23505).
fn is_duplicate(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| matches!(code.as_ref(), "2067" | "1555" | "23505"))
}

/// Text without control characters (newlines allowed: answers have paragraphs).
fn check_text(p: &mut Problems, field: &str, value: &str, max: usize) {
    p.check_length(field, value, 1, max);
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        p.add(field, "must not hold control characters");
    }
}

/// Adds a question to the help centre (admins only): the new `{id,type,question,answer}`.
/// Catalogs are reference data in plain tables, not event-sourced (see the README).
#[utoipa::path(tag = "admin", security(("bearer" = [])), request_body = FaqBody,
    responses((status = 201, description = "{id,type,question,answer}"),
              (status = 400, description = "invalid fields"),
              (status = 403, description = "not an admin")))]
#[post("/v1/admin/faqs")]
pub async fn add_faq(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<FaqBody>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&state, &who).await?;
    let mut p = Problems::default();
    let faq_type = p.required("type", &body.faq_type).to_string();
    if !faq_type.is_empty() && !FAQ_TYPES.contains(&faq_type.as_str()) {
        p.add(
            "type",
            "must be general, seniors, volunteers, finance or safety",
        );
    }
    let question = p.required("question", &body.question).trim().to_string();
    let answer = p.required("answer", &body.answer).trim().to_string();
    check_text(&mut p, "question", &question, 300);
    check_text(&mut p, "answer", &answer, 4000);
    p.finish()?;
    let id = Uuid::new_v4().to_string();
    let sql = "INSERT INTO faqs (id, type, question, answer, sort_order)
               SELECT $1, $2, $3, $4, COALESCE(MAX(sort_order), 0) + 1 FROM faqs WHERE type = $2";
    with_pool!(&state.store.db, pool => {
        sqlx::query(sql).bind(&id).bind(&faq_type).bind(&question).bind(&answer)
            .execute(pool).await.map(|r| r.rows_affected())?
    });
    tracing::info!(admin = %admin.id, faq = %id, "FAQ added");
    Ok(created(
        json!({"id": id, "type": faq_type, "question": question, "answer": answer}),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InterestBody {
    name: Option<String>,
    emoji: Option<String>,
}

/// Adds an interest people can pick (admins only): the new `{id,name,emoji}`. Names are
/// unique whatever their case (409 `already_exists`).
#[utoipa::path(tag = "admin", security(("bearer" = [])), request_body = InterestBody,
    responses((status = 201, description = "{id,name,emoji}"),
              (status = 400, description = "invalid fields"),
              (status = 403, description = "not an admin"),
              (status = 409, description = "an interest of that name exists")))]
#[post("/v1/admin/interests")]
pub async fn add_interest(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<InterestBody>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&state, &who).await?;
    let mut p = Problems::default();
    let name = p.required("name", &body.name).trim().to_string();
    let emoji = p.required("emoji", &body.emoji).trim().to_string();
    check_text(&mut p, "name", &name, 40);
    check_text(&mut p, "emoji", &emoji, 8);
    if name.contains(['\n', '\r', '\t']) {
        p.add("name", "must be one line");
    }
    p.finish()?;
    let id = Uuid::new_v4().to_string();
    let sql = "INSERT INTO interests (id, name, emoji, sort_order)
               SELECT $1, $2, $3, COALESCE(MAX(sort_order), 0) + 1 FROM interests";
    let inserted = with_pool!(&state.store.db, pool => {
        sqlx::query(sql).bind(&id).bind(&name).bind(&emoji).execute(pool).await.map(|r| r.rows_affected())
    });
    match inserted {
        Ok(_) => {}
        Err(error) if is_duplicate(&error) => {
            return Err(ApiError::conflict(
                "already_exists",
                format!("an interest named {name} exists"),
            ))
        }
        Err(error) => return Err(error.into()),
    }
    tracing::info!(admin = %admin.id, interest = %id, "interest added");
    Ok(created(json!({"id": id, "name": name, "emoji": emoji})))
}
