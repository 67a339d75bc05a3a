//! Section 4: `GET /v1/users`, finding people. Filters, keyword search and the visibility
//! rules are SQL over the `users` read model; pages use the shared keyset pagination.

use actix_web::{get, web, HttpResponse};
use chrono::{Months, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::Value;
use talkamie_aggregates::calendar::Day;
use talkamie_projections::directory::{self, like, Arg, Where, VOLUNTEER_VERIFIED_SQL};
use talkamie_projections::profiles::Reader;
use talkamie_projections::relations;
use talkamie_projections::schedules::available_on_sql;
use talkamie_projections::users::UserRecord;
use utoipa::IntoParams;

use super::envelope::{ok_page, ApiError};
use super::pagination::{user_keyset, user_sort_key, PageQuery, Pager};
use super::users::me;
use super::validate::Problems;
use crate::auth::Authenticated;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct UsersQuery {
    /// `senior` or `volunteer`
    #[serde(rename = "type")]
    user_type: Option<String>,
    /// Words in the name, bio or interests
    keyword: Option<String>,
    /// `male`, `female` or `unspecified`
    gender: Option<String>,
    min_age: Option<String>,
    max_age: Option<String>,
    /// Part of the city, state or country
    location: Option<String>,
    /// Comma-separated interest ids; any of them matches
    interests: Option<String>,
    /// A specialization code
    specialization: Option<String>,
    /// `YYYY-MM-DD`: volunteers with availability on that date (their local calendar)
    available_on: Option<String>,
}

fn parse_age(problems: &mut Problems, field: &str, raw: &Option<String>) -> Option<u32> {
    let raw = raw.as_deref()?.trim();
    match raw.parse::<u32>() {
        Ok(age) if age <= 130 => Some(age),
        _ => {
            problems.add(field, "must be a whole number of years, 0 to 130");
            None
        }
    }
}

/// The newest date of birth of someone at least `years` old today.
fn born_by(years: u32) -> String {
    let today = Utc::now().date_naive();
    today
        .checked_sub_months(Months::new(years * 12))
        .unwrap_or(NaiveDate::MIN)
        .format("%Y-%m-%d")
        .to_string()
}

/// The filters as SQL, checking each one.
fn filters(reader: &UserRecord, q: &UsersQuery) -> Result<Where, ApiError> {
    let mut p = Problems::default();
    let mut w = Where::default();
    let text = |v: &str| Arg::Text(v.to_string());
    w.push("deleted_at IS NULL", vec![]);
    w.push("id <> ?", vec![text(&reader.id)]);
    if reader.user_type != "admin" {
        w.push("type <> 'admin'", vec![]);
        w.push(
            "visibility = 'public' OR (visibility = 'volunteers' AND ? = 'volunteer')
             OR (visibility = 'seniors' AND ? = 'senior')
             OR (visibility = 'matches'
                 AND id IN (SELECT other_id FROM connections WHERE user_id = ?))",
            vec![
                text(&reader.user_type),
                text(&reader.user_type),
                text(&reader.id),
            ],
        );
    }
    if reader.user_type == "senior" {
        w.push(
            &format!("type <> 'volunteer' OR {VOLUNTEER_VERIFIED_SQL}"),
            vec![],
        );
    }
    match q.user_type.as_deref() {
        None | Some("") => {}
        Some(t @ ("senior" | "volunteer")) => w.push("type = ?", vec![text(t)]),
        Some(_) => p.add("type", "must be senior or volunteer"),
    }
    match q.gender.as_deref() {
        None | Some("") => {}
        Some(g @ ("male" | "female" | "unspecified")) => {
            w.push("COALESCE(gender, 'unspecified') = ?", vec![text(g)])
        }
        Some(_) => p.add("gender", "must be male, female or unspecified"),
    }
    let min_age = parse_age(&mut p, "minAge", &q.min_age);
    let max_age = parse_age(&mut p, "maxAge", &q.max_age);
    if let (Some(min), Some(max)) = (min_age, max_age) {
        if min > max {
            p.add("maxAge", "must not be below minAge");
        }
    }
    if let Some(min) = min_age {
        w.push(
            "dob IS NOT NULL AND dob <= ?",
            vec![Arg::Text(born_by(min))],
        );
    }
    if let Some(max) = max_age {
        w.push(
            "dob IS NOT NULL AND dob > ?",
            vec![Arg::Text(born_by(max + 1))],
        );
    }
    if let Some(location) = q.location.as_deref().filter(|l| !l.trim().is_empty()) {
        let pattern = like(location);
        w.push(
            "LOWER(COALESCE(city, '')) LIKE ? ESCAPE '\\' OR LOWER(COALESCE(state, '')) LIKE ? ESCAPE '\\'
             OR LOWER(COALESCE(country, '')) LIKE ? ESCAPE '\\'",
            vec![text(&pattern), text(&pattern), text(&pattern)],
        );
    }
    if let Some(keyword) = q.keyword.as_deref().filter(|k| !k.trim().is_empty()) {
        let pattern = like(keyword);
        w.push(
            "LOWER(COALESCE(name, '')) LIKE ? ESCAPE '\\' OR LOWER(COALESCE(bio, '')) LIKE ? ESCAPE '\\'
             OR LOWER(COALESCE(CAST(interests AS TEXT), '')) LIKE ? ESCAPE '\\'",
            vec![text(&pattern), text(&pattern), text(&pattern)],
        );
    }
    if let Some(ids) = q.interests.as_deref().filter(|i| !i.trim().is_empty()) {
        let ids: Vec<&str> = ids
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if ids.iter().any(|id| {
            !id.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }) {
            p.add("interests", "must be comma-separated interest ids");
        } else {
            // PostgreSQL prints json with a space after colons, SQLite keeps serde's compact form.
            let clause =
                vec!["CAST(interests AS TEXT) LIKE ? OR CAST(interests AS TEXT) LIKE ?"; ids.len()]
                    .join(" OR ");
            let args = ids
                .iter()
                .flat_map(|id| [format!("%\"id\":\"{id}\"%"), format!("%\"id\": \"{id}\"%")])
                .map(Arg::Text)
                .collect();
            w.push(&clause, args);
        }
    }
    if let Some(code) = q.specialization.as_deref().filter(|s| !s.trim().is_empty()) {
        w.push("specialization = ?", vec![text(code.trim())]);
    }
    if let Some(date) = q.available_on.as_deref().filter(|d| !d.is_empty()) {
        match NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            // Volunteers with availability on that (their local) date; seniors have none.
            Ok(date) => w.push(
                &format!(
                    "type = 'volunteer' AND {}",
                    available_on_sql("users.id", Day::of(date))
                ),
                vec![text(&date.to_string()), text(&date.to_string())],
            ),
            Err(_) => p.add("availableOn", "must be a date YYYY-MM-DD"),
        }
    }
    p.finish()?;
    Ok(w)
}

/// The people I may see, filtered: `basic_user[]`, newest first.
#[utoipa::path(tag = "users", security(("bearer" = [])), params(UsersQuery, PageQuery),
    responses((status = 200, description = "basic_user[] with pagination"),
              (status = 400, description = "a filter is invalid, or lastEvaluatedKey is not genuine")))]
#[get("/v1/users")]
pub async fn list_users(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<UsersQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let reader = me(&state, &who).await?;
    let filter = filters(&reader, &query)?;
    let fingerprint = format!("{}|{query:?}", reader.id);
    let pager = Pager::new(&state.hash_key, "users", &fingerprint, &page)?;
    let after = user_keyset(pager.after(&page)?)?;
    let (mut rows, total) =
        directory::page(&state.store.db, &filter, after, pager.page_size).await?;
    let has_more = pager.trim(&mut rows);
    let last_key = rows.last().map(user_sort_key);
    let ids: Vec<String> = rows.iter().map(|u| u.id.clone()).collect();
    let relations = relations::relations((&state.store.db).into(), &reader.id, &ids).await?;
    let reader = Reader::user(&reader.id, reader.user_type == "admin").with_relations(relations);
    let online = state.hub.online(&state.store.db, &ids).await;
    let mut data: Vec<Value> = rows
        .iter()
        .map(|u| u.basic(&reader, online.contains(&u.id)))
        .collect();
    data.iter_mut().for_each(|u| state.files.sign_urls(u));
    Ok(ok_page(
        data,
        pager.pagination(last_key.as_ref(), has_more, total),
    ))
}
