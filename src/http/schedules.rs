//! Section 8: scheduling calls (`POST /v1/user/{id}/schedule`), reading, moving and cancelling
//! them, and the schedule lists. The two-calendar booking saga is in `crate::scheduling`.

use std::collections::HashMap;

use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::calendar::{CallKind, Recurrence, Schedule, Slot, Zone};
use talkamie_projections::profiles::Reader;
use talkamie_projections::schedules::{self, ScheduleList, ScheduleRow};
use talkamie_projections::users::{self, UserRecord};
use talkamie_projections::{chats, relations};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::connections::pair_id;
use super::envelope::{created, ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::users::{me, visible_user};
use super::validate::Problems;
use crate::auth::Authenticated;
use crate::scheduling;
use crate::state::AppState;

/// Title length limit.
const MAX_TITLE_CHARS: usize = 120;
/// A single call lasts at most this long.
const MAX_CALL: Duration = Duration::hours(24);
/// Namespace of schedule ids derived from an `Idempotency-Key`.
const SCHEDULE_NAMESPACE: Uuid = Uuid::from_u128(0x51c4_0d2e_8b7a_4f3c_9e61_2d5a_7c0b_3e94);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleBody {
    title: Option<String>,
    /// `audio` or `video`
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `none` (default), `daily` or `weekly` (a series over the next 8 weeks)
    recurrence: Option<String>,
    /// ISO-8601 instant, e.g. `2026-12-01T15:00:00Z`
    start_date_time: Option<String>,
    end_date_time: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct KeywordQuery {
    /// Words in the title (schedules) or the other person's name
    keyword: Option<String>,
}

impl KeywordQuery {
    /// The keyword, trimmed; none when blank; 400 with control characters.
    pub fn keyword(&self) -> Result<Option<&str>, ApiError> {
        let keyword = self
            .keyword
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        if keyword.is_some_and(|k| k.chars().any(char::is_control)) {
            return Err(ApiError::invalid(
                json!({"keyword": "must not contain control characters"}),
            ));
        }
        Ok(keyword)
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The body's fields over `base` (a new schedule has none): a complete, checked schedule.
fn apply_body(body: &ScheduleBody, base: Schedule) -> Result<Schedule, ApiError> {
    let mut problems = Problems::default();
    let mut schedule = base;
    if let Some(title) = &body.title {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
            problems.add(
                "title",
                format!("must be 1 to {MAX_TITLE_CHARS} characters"),
            );
        }
        schedule.title = title.to_string();
    }
    if let Some(kind) = &body.kind {
        match kind.as_str() {
            "audio" => schedule.kind = CallKind::Audio,
            "video" => schedule.kind = CallKind::Video,
            _ => problems.add("type", "must be audio or video"),
        }
    }
    if let Some(recurrence) = &body.recurrence {
        match recurrence.as_str() {
            "none" => schedule.recurrence = Recurrence::None,
            "daily" => schedule.recurrence = Recurrence::Daily,
            "weekly" => schedule.recurrence = Recurrence::Weekly,
            _ => problems.add("recurrence", "must be none, daily or weekly"),
        }
    }
    let mut time = |key: &str, value: &Option<String>, current: DateTime<Utc>| match value {
        None => current,
        Some(text) => parse_time(text).unwrap_or_else(|| {
            problems.add(key, "must be an ISO-8601 time, e.g. 2026-12-01T15:00:00Z");
            current
        }),
    };
    let from = time("startDateTime", &body.start_date_time, schedule.first.from);
    let to = time("endDateTime", &body.end_date_time, schedule.first.to);
    problems.finish()?;
    if to <= from {
        return Err(ApiError::invalid(
            json!({"endDateTime": "must be after startDateTime"}),
        ));
    }
    if to - from > MAX_CALL {
        return Err(ApiError::invalid(
            json!({"endDateTime": "a call lasts at most 24 hours"}),
        ));
    }
    schedule.first = Slot { from, to };
    Ok(schedule)
}

/// `basic_user` of each of `ids` as `viewer` sees them (signed file URLs included).
pub async fn users_as_seen_by(
    state: &AppState,
    viewer: &str,
    ids: &[String],
) -> Result<HashMap<String, Value>, ApiError> {
    let mut out = HashMap::new();
    let relations = relations::relations((&state.store.db).into(), viewer, ids).await?;
    let online = state.hub.online(&state.store.db, ids).await;
    let reader = Reader::user(viewer, false).with_relations(relations);
    for id in ids {
        if out.contains_key(id) {
            continue;
        }
        let mut user = match users::find_by_id(&state.store.db, id).await? {
            Some(user) => user.basic(&reader, online.contains(id)),
            None => json!({ "id": id }),
        };
        state.files.sign_urls(&mut user);
        out.insert(id.clone(), user);
    }
    Ok(out)
}

async fn render_full(state: &AppState, viewer: &str, row: &ScheduleRow) -> Result<Value, ApiError> {
    let occurrences = schedules::occurrences((&state.store.db).into(), &row.id).await?;
    render_full_with(state, viewer, row, &occurrences).await
}

/// [`render_full`] with the schedule's occurrences known (those a booking just stored).
async fn render_full_with(
    state: &AppState,
    viewer: &str,
    row: &ScheduleRow,
    occurrences: &[Slot],
) -> Result<Value, ApiError> {
    let other = row.other_side(viewer).to_string();
    let mut attendees = users_as_seen_by(state, viewer, std::slice::from_ref(&other)).await?;
    let attendee = attendees.remove(&other).unwrap_or(Value::Null);
    Ok(row.to_full_json(state.clock.now(), attendee, occurrences))
}

async fn find_mine(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<ScheduleRow, ApiError> {
    let row = schedules::find((&state.store.db).into(), id, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))?;
    scheduling::member_or_404(&row, &who.user_id)?;
    Ok(row)
}

/// The schedule as its senior booked it (to move it or to restore it).
fn schedule_of(row: &ScheduleRow, zone: Zone) -> Schedule {
    Schedule {
        id: row.id.clone(),
        senior_id: row.senior_id.clone(),
        volunteer_id: row.volunteer_id.clone(),
        chat_id: row.chat_id.clone(),
        title: row.title.clone(),
        kind: if row.kind == "video" {
            CallKind::Video
        } else {
            CallKind::Audio
        },
        recurrence: row.recurrence(),
        first: Slot {
            from: row.starts_at,
            to: row.ends_at,
        },
        zone,
    }
}

/// Checks that `senior` may book `volunteer` at all.
async fn bookable(
    state: &AppState,
    senior: &UserRecord,
    volunteer_id: &str,
) -> Result<UserRecord, ApiError> {
    if senior.user_type != "senior" {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only seniors schedule calls",
        ));
    }
    if volunteer_id == senior.id {
        return Err(ApiError::invalid(
            json!({"id": "you cannot schedule a call with yourself"}),
        ));
    }
    let (volunteer, relations) = visible_user(state, senior, volunteer_id).await?;
    if !volunteer.is_volunteer() {
        return Err(ApiError::unprocessable(
            "not_a_volunteer",
            "calls are scheduled with volunteers",
        ));
    }
    if !volunteer.verified() {
        return Err(ApiError::unprocessable(
            "not_verified",
            "this volunteer is not verified yet",
        ));
    }
    if !relations.get(volunteer_id).is_some_and(|r| r.connected) {
        return Err(ApiError::unprocessable(
            "not_connected",
            "connect with this volunteer before scheduling a call",
        ));
    }
    Ok(volunteer)
}

async fn balance(state: &AppState, user_id: &str) -> Result<i64, ApiError> {
    Ok(talkamie_projections::ledger::balance((&state.store.db).into(), user_id).await?)
}

/// Schedules a call with volunteer `{id}`: `{schedule, chat:{id}, message}` (201).
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "the volunteer"),
           ("Idempotency-Key" = Option<String>, Header, description = "a retry returns the first result")),
    request_body = ScheduleBody,
    responses((status = 201, description = "{schedule: full_call_schedule, chat:{id}, message}"),
              (status = 400, description = "bad fields"),
              (status = 403, description = "only seniors schedule"),
              (status = 404, description = "no such volunteer"),
              (status = 409, description = "slot_unavailable or insufficient_coins"),
              (status = 422, description = "in the past, over the volunteer's limits, not verified or not connected")))]
#[post("/v1/user/{id}/schedule")]
pub async fn schedule_call(
    state: web::Data<AppState>,
    who: Authenticated,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<ScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let senior = me(&state, &who).await?;
    let volunteer = bookable(&state, &senior, &id).await?;
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    let schedule_id = match key {
        Some(key) => Uuid::new_v5(
            &SCHEDULE_NAMESPACE,
            format!("{}\n{key}", senior.id).as_bytes(),
        ),
        None => Uuid::new_v4(),
    }
    .to_string();
    let chat_id = pair_id(&senior.id, &volunteer.id);
    // Only a retry under the same key can find its schedule: a fresh random id is new.
    let existing = match key {
        Some(_) => {
            schedules::find((&state.store.db).into(), &schedule_id, state.clock.now()).await?
        }
        None => None,
    };
    // The occurrences this request books (the calendar stores exactly these).
    let mut booked: Option<Vec<Slot>> = None;
    if existing.is_none() {
        for (field, value) in [
            ("title", &body.title),
            ("type", &body.kind),
            ("startDateTime", &body.start_date_time),
            ("endDateTime", &body.end_date_time),
        ] {
            if value.is_none() {
                return Err(ApiError::invalid(json!({ field: "is required" })));
            }
        }
        let blank = Schedule {
            id: schedule_id.clone(),
            senior_id: senior.id.clone(),
            volunteer_id: volunteer.id.clone(),
            chat_id: chat_id.clone(),
            title: String::new(),
            kind: CallKind::Audio,
            recurrence: Recurrence::None,
            first: Slot {
                from: DateTime::<Utc>::MIN_UTC,
                to: DateTime::<Utc>::MIN_UTC,
            },
            zone: volunteer.zone(),
        };
        let schedule = apply_body(&body, blank)?;
        let coins = balance(&state, &senior.id).await?;
        scheduling::book(&state, &volunteer, &schedule, None, coins, who.metadata()).await?;
        scheduling::post_schedule_message(&state, &schedule, who.metadata()).await?;
        booked = Some(schedule.occurrences());
    }
    let row = find_mine(&state, &who, &schedule_id).await?;
    let message_client_id = format!("schedule:{schedule_id}");
    let find_message = || {
        chats::message_by_client_id(
            (&state.store.db).into(),
            &chat_id,
            &senior.id,
            &message_client_id,
        )
    };
    let mut message = find_message().await?;
    if message.is_none() {
        // A crash between the booking and its message left the booking without one, and this
        // retry (same Idempotency-Key) found the schedule and skipped both: post it now. Its
        // clientId keeps it to one message however often this runs.
        let schedule = schedule_of(&row, volunteer.zone());
        scheduling::post_schedule_message(&state, &schedule, who.metadata()).await?;
        message = find_message().await?;
    }
    let message = message.map(|m| m.to_json());
    let schedule = match booked {
        Some(occurrences) => render_full_with(&state, &senior.id, &row, &occurrences).await?,
        None => render_full(&state, &senior.id, &row).await?,
    };
    Ok(created(json!({
        "schedule": schedule,
        "chat": {"id": chat_id},
        "message": message,
    })))
}

/// One of my schedules: `full_call_schedule` (404 for anyone else's).
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, description = "full_call_schedule"),
              (status = 404, description = "no such schedule of yours")))]
#[get("/v1/schedule/{id}")]
pub async fn get_schedule(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = find_mine(&state, &who, &id).await?;
    Ok(ok(render_full(&state, &who.user_id, &row).await?))
}

/// Moves or renames a schedule (its senior only); every rule of booking applies again.
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id")),
    request_body = ScheduleBody,
    responses((status = 200, description = "full_call_schedule"),
              (status = 403, description = "only the senior who booked it may change it"),
              (status = 404, description = "no such schedule of yours"),
              (status = 409, description = "canceled, over, slot_unavailable or insufficient_coins")))]
#[put("/v1/schedule/{id}")]
pub async fn update_schedule(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<ScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let row = find_mine(&state, &who, &id).await?;
    if row.senior_id != who.user_id {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only the senior who booked a call may change it",
        ));
    }
    if row.state == "canceled" {
        return Err(ApiError::conflict("conflict", "this schedule was canceled"));
    }
    let senior = me(&state, &who).await?;
    let volunteer = bookable(&state, &senior, &row.volunteer_id).await?;
    let previous = schedule_of(&row, volunteer.zone());
    let mut moved = apply_body(&body, previous.clone())?;
    moved.zone = volunteer.zone();
    if moved != previous {
        let coins = balance(&state, &senior.id).await?;
        scheduling::book(
            &state,
            &volunteer,
            &moved,
            Some(&previous),
            coins,
            who.metadata(),
        )
        .await?;
    }
    let row = find_mine(&state, &who, &id).await?;
    Ok(ok(render_full(&state, &who.user_id, &row).await?))
}

/// Cancels a schedule (either side); the other side is alerted.
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, description = "null"),
              (status = 404, description = "no such schedule of yours"),
              (status = 409, description = "the schedule is over")))]
#[delete("/v1/schedule/{id}")]
pub async fn cancel_schedule(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = find_mine(&state, &who, &id).await?;
    if row.state != "canceled" {
        if row.last_ends_at <= state.clock.now() {
            return Err(ApiError::conflict("conflict", "this schedule is over"));
        }
        scheduling::cancel(&state, &row, &who.user_id, who.metadata()).await?;
    }
    Ok(ok(Value::Null))
}

/// Cancels every future schedule between me and `{id}`: `{cleared: n}`.
#[utoipa::path(tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "the other person")),
    responses((status = 200, description = "{cleared: n}")))]
#[delete("/v1/user/{id}/schedules")]
pub async fn clear_schedules(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let ids = schedules::future_between((&state.store.db).into(), &who.user_id, &id, now).await?;
    let mut cleared = 0;
    for schedule_id in ids {
        if let Some(row) = schedules::find((&state.store.db).into(), &schedule_id, now).await? {
            scheduling::cancel(&state, &row, &who.user_id, who.metadata()).await?;
            cleared += 1;
        }
    }
    Ok(ok(json!({ "cleared": cleared })))
}

async fn schedule_page(
    state: &AppState,
    who: &Authenticated,
    list: ScheduleList,
    name: &'static str,
    keyword: Option<&str>,
    page: &PageQuery,
) -> Result<HttpResponse, ApiError> {
    let fingerprint = format!("{}|{keyword:?}", who.user_id);
    let pager = Pager::new(&state.hash_key, name, &fingerprint, page)?;
    let after = time_id_keyset(pager.after(page)?)?;
    let now = state.clock.now();
    let (mut rows, total) = schedules::page(
        (&state.store.db).into(),
        &who.user_id,
        list,
        keyword,
        after,
        pager.page_size + 1,
        now,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|s| time_id_sort_key(s.starts_at, &s.id));
    let others: Vec<String> = rows
        .iter()
        .map(|s| s.other_side(&who.user_id).to_string())
        .collect();
    let attendees = users_as_seen_by(state, &who.user_id, &others).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|s| {
            let attendee = attendees
                .get(s.other_side(&who.user_id))
                .cloned()
                .unwrap_or(Value::Null);
            s.to_json(now, attendee)
        })
        .collect();
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// All my schedules, latest first: `basic_call_schedule[]`.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(KeywordQuery, PageQuery),
    responses((status = 200, description = "basic_call_schedule[] with pagination")))]
#[get("/v1/schedules")]
pub async fn list_schedules(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<KeywordQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyword = query.keyword()?;
    schedule_page(&state, &who, ScheduleList::All, "schedules", keyword, &page).await
}

/// My schedules still to come, soonest first.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(KeywordQuery, PageQuery),
    responses((status = 200, description = "basic_call_schedule[] with pagination")))]
#[get("/v1/schedules/upcoming")]
pub async fn upcoming_schedules(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<KeywordQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyword = query.keyword()?;
    schedule_page(
        &state,
        &who,
        ScheduleList::Upcoming,
        "upcoming",
        keyword,
        &page,
    )
    .await
}

/// My schedules that are over or canceled, latest first.
#[utoipa::path(tag = "schedules", security(("bearer" = [])), params(KeywordQuery, PageQuery),
    responses((status = 200, description = "basic_call_schedule[] with pagination")))]
#[get("/v1/schedules/past")]
pub async fn past_schedules(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<KeywordQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyword = query.keyword()?;
    schedule_page(&state, &who, ScheduleList::Past, "past", keyword, &page).await
}
