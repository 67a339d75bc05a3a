//! Section 7: a volunteer's availability, weekly and per date, in their wall-clock time.

use std::collections::BTreeMap;

use actix_web::{get, post, web, HttpResponse};
use chrono::{Days, NaiveDate};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use talkamie_aggregates::calendar::{CalendarCommand, Day, Range};
use talkamie_projections::schedules;
use talkamie_projections::users::UserRecord;
use utoipa::IntoParams;

use super::envelope::{ok, ApiError};
use super::users::{me, visible_user};
use super::validate::Problems;
use crate::auth::Authenticated;
use crate::scheduling;
use crate::state::AppState;

/// Dates one request may set.
const MAX_DATES_PER_REQUEST: usize = 62;
/// Days a custom query may span.
const MAX_QUERY_DAYS: i64 = 366;
/// Days a custom query spans when `to` is not given.
const DEFAULT_QUERY_DAYS: u64 = 30;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct WeeklyQuery {
    /// Whose availability (default: mine)
    user_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct CustomQuery {
    /// Whose availability (default: mine)
    user_id: Option<String>,
    /// First date `YYYY-MM-DD` (default: today in the volunteer's zone)
    from: Option<String>,
    /// Last date `YYYY-MM-DD` (default: 30 days after `from`)
    to: Option<String>,
}

/// The user whose availability is asked for: me, or someone I may see.
async fn whose(
    state: &AppState,
    who: &Authenticated,
    user_id: Option<&str>,
) -> Result<UserRecord, ApiError> {
    let reader = me(state, who).await?;
    match user_id.filter(|id| !id.is_empty() && *id != reader.id) {
        Some(id) => Ok(visible_user(state, &reader, id).await?.0),
        None => Ok(reader),
    }
}

async fn volunteer(state: &AppState, who: &Authenticated) -> Result<UserRecord, ApiError> {
    let user = me(state, who).await?;
    if !user.is_volunteer() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only volunteers publish availability",
        ));
    }
    Ok(user)
}

/// `[{start, end}, ...]` of one day; problems are reported under `key`.
fn parse_ranges(key: &str, value: &Value, problems: &mut Problems) -> Vec<Range> {
    let Some(items) = value.as_array() else {
        problems.add(key, "must be a list of {start, end}");
        return vec![];
    };
    let mut ranges = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let start = item.get("start").and_then(Value::as_str);
        let end = item.get("end").and_then(Value::as_str);
        match (start, end) {
            (Some(start), Some(end)) => match Range::parse(start, end) {
                Ok(range) => ranges.push(range),
                Err(why) => problems.add(&format!("{key}[{i}]"), why),
            },
            _ => problems.add(
                &format!("{key}[{i}]"),
                "must be {\"start\": \"HH:MM\", \"end\": \"HH:MM\"}",
            ),
        }
    }
    ranges
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == text)
}

/// Someone's weekly availability: `{sun:[{start,end}],...}` in their local time.
#[utoipa::path(tag = "availability", security(("bearer" = [])), params(WeeklyQuery),
    responses((status = 200, description = "{sun:[{start,end}],...}"),
              (status = 404, description = "no such user, or not visible to you")))]
#[get("/v1/availability/weekly")]
pub async fn get_weekly(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<WeeklyQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = whose(&state, &who, query.user_id.as_deref()).await?;
    Ok(ok(
        schedules::weekly((&state.store.db).into(), &user.id).await?
    ))
}

/// Replaces my weekly availability (volunteers): the whole week, days left out are empty.
#[utoipa::path(tag = "availability", security(("bearer" = [])),
    request_body(content = Object, description = "{sun:[{start:\"09:00\",end:\"12:00\"}],...}"),
    responses((status = 200, description = "the week as stored"),
              (status = 400, description = "unknown weekday, bad time, overlapping or too many ranges"),
              (status = 403, description = "not a volunteer")))]
#[post("/v1/availability/weekly")]
pub async fn set_weekly(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    volunteer(&state, &who).await?;
    let mut problems = Problems::default();
    let mut week: BTreeMap<Day, Vec<Range>> = BTreeMap::new();
    for (key, value) in object(&body)? {
        match Day::parse(key) {
            Some(day) if week.contains_key(&day) => {
                problems.add(key, "this weekday is given twice");
            }
            Some(day) => {
                week.insert(day, parse_ranges(key, value, &mut problems));
            }
            None => problems.add(key, "is not a weekday (sun mon tue wed thu fri sat)"),
        }
    }
    problems.finish()?;
    let command = CalendarCommand::SetWeekly { week };
    scheduling::execute(&state, &who.user_id, command, who.metadata()).await?;
    Ok(ok(schedules::weekly(
        (&state.store.db).into(),
        &who.user_id,
    )
    .await?))
}

/// Someone's custom dates between `from` and `to`: `{"YYYY-MM-DD":[{start,end}]}`.
#[utoipa::path(tag = "availability", security(("bearer" = [])), params(CustomQuery),
    responses((status = 200, description = "{\"YYYY-MM-DD\":[{start,end}]}"),
              (status = 400, description = "bad dates or span"),
              (status = 404, description = "no such user, or not visible to you")))]
#[get("/v1/availability/custom")]
pub async fn get_custom(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<CustomQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = whose(&state, &who, query.user_id.as_deref()).await?;
    let mut problems = Problems::default();
    let date = |key: &str, value: &Option<String>, problems: &mut Problems| {
        let value = value.as_deref().filter(|v| !v.is_empty())?;
        let parsed = parse_date(value);
        if parsed.is_none() {
            problems.add(key, "must be a date YYYY-MM-DD");
        }
        parsed
    };
    let from = date("from", &query.from, &mut problems);
    let to = date("to", &query.to, &mut problems);
    problems.finish()?;
    let from = from.unwrap_or_else(|| user.zone().local(state.clock.now()).date());
    let to = to.unwrap_or_else(|| from + Days::new(DEFAULT_QUERY_DAYS));
    if to < from {
        return Err(ApiError::invalid(json!({"to": "must not be before from"})));
    }
    if (to - from).num_days() > MAX_QUERY_DAYS {
        return Err(ApiError::invalid(
            json!({"to": format!("at most {MAX_QUERY_DAYS} days after from")}),
        ));
    }
    let custom = schedules::custom((&state.store.db).into(), &user.id, from, to).await?;
    Ok(ok(custom))
}

/// Sets dates of my availability (volunteers): each date's ranges replace that date's weekly
/// ranges; `[]` is a day off.
#[utoipa::path(tag = "availability", security(("bearer" = [])),
    request_body(content = Object, description = "{\"YYYY-MM-DD\":[{start,end}]}"),
    responses((status = 200, description = "the dates as stored"),
              (status = 400, description = "bad date, bad time, overlapping or too many ranges"),
              (status = 403, description = "not a volunteer"),
              (status = 422, description = "a date in the past or too far ahead")))]
#[post("/v1/availability/custom")]
pub async fn set_custom(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let user = volunteer(&state, &who).await?;
    let body = object(&body)?;
    if body.is_empty() {
        return Err(ApiError::invalid(json!({"body": "give at least one date"})));
    }
    if body.len() > MAX_DATES_PER_REQUEST {
        return Err(ApiError::invalid(
            json!({"body": format!("at most {MAX_DATES_PER_REQUEST} dates at once")}),
        ));
    }
    let mut problems = Problems::default();
    let mut days = BTreeMap::new();
    for (key, value) in body {
        match parse_date(key) {
            Some(date) => {
                days.insert(date, parse_ranges(key, value, &mut problems));
            }
            None => problems.add(key, "is not a date YYYY-MM-DD"),
        }
    }
    problems.finish()?;
    let (first, last) = match (days.keys().next(), days.keys().last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => return Err(ApiError::invalid(json!({"body": "give at least one date"}))),
    };
    let today = user.zone().local(state.clock.now()).date();
    let command = CalendarCommand::SetCustom { days, today };
    scheduling::execute(&state, &who.user_id, command, who.metadata()).await?;
    let stored = schedules::custom((&state.store.db).into(), &who.user_id, first, last).await?;
    let set: Map<String, Value> = stored
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(date, _)| body.contains_key(date.as_str()))
        .map(|(date, ranges)| (date.clone(), ranges.clone()))
        .collect();
    Ok(ok(Value::Object(set)))
}
