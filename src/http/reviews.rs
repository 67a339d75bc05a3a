//! Section 10: reviews. A user rates someone they talked with (an answered call that ended);
//! one live review per rater and ratee, which they may change or delete. The Review aggregate
//! keeps those rules; the `reviews` projection keeps each user's `rating` and `totalReviews`.

use actix_web::{delete, get, post, put, web, HttpResponse};
use chrono::Utc;
use serde_json::{json, Value};
use std::collections::HashSet;
use talkamie_aggregates::review::{
    review_stream_id, Review, ReviewCommand, ReviewError, MAX_TEXT_CHARS,
};

use talkamie_projections::users;
use talkamie_projections::{calls, relations, reviews};
use uuid::Uuid;

use super::envelope::{created, ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::schedules::users_as_seen_by;
use super::users::{may_see, me, visible_user};
use crate::auth::Authenticated;
use crate::state::AppState;

fn review_rejected(error: ReviewError) -> ApiError {
    let message = error.to_string();
    match error {
        ReviewError::SelfReview => ApiError::bad_request(message),
        ReviewError::BadRate => ApiError::invalid(json!({ "rate": message })),
        ReviewError::TextTooLong => ApiError::invalid(json!({ "text": message })),
        ReviewError::NoEndedCall => ApiError::unprocessable("no_ended_call", message),
        ReviewError::AlreadyReviewed => ApiError::conflict("already_exists", message),
        ReviewError::NotFound => ApiError::not_found("review"),
    }
}

/// `rate` and `text` of a body; each `None` when absent (a PUT may leave either out).
fn review_fields(body: &Value) -> Result<(Option<i64>, Option<String>), ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid(json!({ "body": "must be {text, rate}" })));
    }
    let rate = match body.get("rate") {
        None | Some(Value::Null) => None,
        Some(rate) => Some(
            rate.as_i64()
                .filter(|r| (1..=5).contains(r))
                .ok_or_else(|| {
                    ApiError::invalid(json!({ "rate": "must be a whole number from 1 to 5" }))
                })?,
        ),
    };
    let text = match body.get("text") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let control = text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
            if text.chars().count() > MAX_TEXT_CHARS || control {
                return Err(ApiError::invalid(
                    json!({ "text": format!("must be at most {MAX_TEXT_CHARS} characters of text") }),
                ));
            }
            Some(text.trim().to_string())
        }
        Some(_) => return Err(ApiError::invalid(json!({ "text": "must be a string" }))),
    };
    Ok((rate, text))
}

/// A user id from the path; one no user can have (control characters) is 404 at once.
fn user_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.chars().any(char::is_control) {
        Err(ApiError::not_found("user"))
    } else {
        Ok(id)
    }
}

/// `{id, rating, totalReviews}` of the ratee now.
async fn rating_json(state: &AppState, user_id: &str) -> Result<Value, ApiError> {
    let (rating, total) = reviews::rating_of((&state.store.db).into(), user_id).await?;
    Ok(json!({ "id": user_id, "rating": rating, "totalReviews": total }))
}

async fn execute(
    state: &AppState,
    who: &Authenticated,
    ratee: &str,
    command: ReviewCommand,
) -> Result<(), ApiError> {
    state
        .store
        .execute::<Review>(
            &review_stream_id(&who.user_id, ratee),
            command,
            who.metadata(),
        )
        .await
        .map_err(|e| ApiError::from_command(e, review_rejected))?;
    Ok(())
}

/// `{review, user:{id, rating, totalReviews}}` after a write.
async fn review_answer(
    state: &AppState,
    who: &Authenticated,
    ratee: &str,
) -> Result<Value, ApiError> {
    let review = reviews::by_pair((&state.store.db).into(), &who.user_id, ratee)
        .await?
        .ok_or_else(|| ApiError::not_found("review"))?;
    Ok(json!({ "review": review.to_json(), "user": rating_json(state, ratee).await? }))
}

/// Reviews `{id}` (after a call between us ended): `{review, user:{id,rating,totalReviews}}`.
#[utoipa::path(tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user to review")),
    request_body(content = Object, description = "{text, rate: 1..5}"),
    responses((status = 201, description = "{review, user}"),
              (status = 404, description = "no such user"),
              (status = 409, description = "already reviewed (update it instead)"),
              (status = 422, description = "no ended call between you")))]
#[post("/v1/user/{id}/review")]
pub async fn create_review(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let (rate, text) = review_fields(&body)?;
    let rate = rate.ok_or_else(|| ApiError::invalid(json!({ "rate": "is required (1 to 5)" })))?;
    let reader = me(&state, &who).await?;
    let id = user_id(&id)?;
    if id == who.user_id {
        return Err(review_rejected(ReviewError::SelfReview));
    }
    let (ratee, _) = visible_user(&state, &reader, id).await?;
    let had_ended_call =
        calls::ended_between((&state.store.db).into(), &who.user_id, &ratee.id).await?;
    let command = ReviewCommand::Write {
        review_id: Uuid::new_v4().to_string(),
        rater: who.user_id.clone(),
        ratee: ratee.id.clone(),
        rate,
        text: text.unwrap_or_default(),
        had_ended_call,
        at: Utc::now(),
    };
    execute(&state, &who, &ratee.id, command).await?;
    Ok(created(review_answer(&state, &who, &ratee.id).await?))
}

/// Changes my review of `{id}` (`rate` and/or `text`).
#[utoipa::path(tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user I reviewed")),
    request_body(content = Object, description = "{text?, rate?: 1..5}"),
    responses((status = 200, description = "{review, user}"),
              (status = 404, description = "no review of mine")))]
#[put("/v1/user/{id}/review")]
pub async fn update_review(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let (rate, text) = review_fields(&body)?;
    if rate.is_none() && text.is_none() {
        return Err(ApiError::invalid(
            json!({ "body": "give rate, text or both" }),
        ));
    }
    me(&state, &who).await?;
    let id = user_id(&id)?;
    let command = ReviewCommand::Update {
        rate,
        text,
        at: Utc::now(),
    };
    execute(&state, &who, id, command).await?;
    Ok(ok(review_answer(&state, &who, id).await?))
}

/// Deletes my review of `{id}`: `{user:{id,rating,totalReviews}}`.
#[utoipa::path(tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user I reviewed")),
    responses((status = 200, description = "{user}"),
              (status = 404, description = "no review of mine")))]
#[delete("/v1/user/{id}/review")]
pub async fn delete_review(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    me(&state, &who).await?;
    let id = user_id(&id)?;
    execute(&state, &who, id, ReviewCommand::Delete { at: Utc::now() }).await?;
    Ok(ok(json!({ "user": rating_json(&state, id).await? })))
}

/// One page of the reviews about `ratee`: the rows and the pagination.
async fn page_about(
    state: &AppState,
    ratee: &str,
    page: &PageQuery,
) -> Result<(Vec<reviews::ReviewRow>, Value), ApiError> {
    let pager = Pager::new(&state.hash_key, "reviews", ratee, page)?;
    let after = time_id_keyset(pager.after(page)?)?;
    let (mut rows, total) =
        reviews::page((&state.store.db).into(), ratee, after, pager.page_size + 1).await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|r| time_id_sort_key(r.created_at, &r.id));
    Ok((rows, pager.pagination(last.as_ref(), has_more, total)))
}

/// The reviews about me, newest first: `full_review[]` (the rater as a `basic_user`).
#[utoipa::path(tag = "reviews", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "full_review[] with pagination")))]
#[get("/v1/reviews")]
pub async fn my_reviews(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    me(&state, &who).await?;
    let (rows, pagination) = page_about(&state, &who.user_id, &page).await?;
    let raters: Vec<String> = rows.iter().map(|r| r.rater_id.clone()).collect();
    let people = users_as_seen_by(&state, &who.user_id, &raters).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let rater = people.get(&r.rater_id).cloned().unwrap_or(Value::Null);
            r.to_full_json(rater)
        })
        .collect();
    Ok(ok_page(data, pagination))
}

/// The reviews about a user I may see, newest first: `basic_review[]`.
#[utoipa::path(tag = "reviews", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id"), PageQuery),
    responses((status = 200, description = "basic_review[] with pagination"),
              (status = 404, description = "no such user")))]
#[get("/v1/user/{id}/reviews")]
pub async fn user_reviews(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let reader = me(&state, &who).await?;
    let (ratee, _) = visible_user(&state, &reader, user_id(&id)?).await?;
    let (rows, pagination) = page_about(&state, &ratee.id, &page).await?;
    // A rater the reader may not see (section 2 visibility) stays anonymous.
    let raters: Vec<String> = rows.iter().map(|r| r.rater_id.clone()).collect();
    let relations = relations::relations((&state.store.db).into(), &reader.id, &raters).await?;
    let mut seen = HashSet::new();
    for rater in &raters {
        let connected = relations.get(rater).is_some_and(|r| r.connected);
        if let Some(user) = users::find_by_id(&state.store.db, rater).await? {
            if may_see(&reader, &user, connected) {
                seen.insert(rater.clone());
            }
        }
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut review = r.to_json();
            if !seen.contains(&r.rater_id) && !r.rater_deleted {
                review["rater"] = json!({ "id": null, "name": "Talkamie user" });
            }
            review
        })
        .collect();
    Ok(ok_page(data, pagination))
}
