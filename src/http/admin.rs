//! Section 11: the admin API (admin tokens only) and section 10's verification steps.

use actix_web::{get, post, web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::user::{UserCommand, VerificationStatus, VerificationStep};
use talkamie_projections::directory::{self, like, Arg, Where};
use talkamie_projections::profiles::Reader;
use talkamie_projections::relations;
use talkamie_projections::users::{self, UserRecord};
use utoipa::{IntoParams, ToSchema};

use super::auth::execute_user;
use super::envelope::{ok, ok_page, ApiError};
use super::pagination::{user_keyset, user_sort_key, PageQuery, Pager};
use super::users::me;
use super::validate::Problems;
use crate::auth::Authenticated;
use crate::providers::background::{BackgroundCheckRequest, CheckOutcome};
use crate::state::AppState;

/// The caller, if they are an admin (403 otherwise).
pub async fn require_admin(state: &AppState, who: &Authenticated) -> Result<UserRecord, ApiError> {
    let caller = me(state, who).await?;
    if caller.user_type == "admin" {
        Ok(caller)
    } else {
        Err(ApiError::forbidden())
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AdminUsersQuery {
    /// `senior`, `volunteer` or `admin`
    #[serde(rename = "type")]
    user_type: Option<String>,
    /// Words in the name, email or bio
    keyword: Option<String>,
    /// `true`: only volunteers not yet verified (the review queue)
    unverified: Option<String>,
}

/// Every account (deleted ones included), newest first, as `full_user` seen by an admin.
#[utoipa::path(tag = "admin", security(("bearer" = [])), params(AdminUsersQuery, PageQuery),
    responses((status = 200, description = "full_user[] with pagination"),
              (status = 403, description = "not an admin")))]
#[get("/v1/admin/users")]
pub async fn users_list(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<AdminUsersQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&state, &who).await?;
    let mut p = Problems::default();
    let mut w = Where::default();
    match query.user_type.as_deref() {
        None | Some("") => {}
        Some(t @ ("senior" | "volunteer" | "admin")) => {
            w.push("type = ?", vec![Arg::Text(t.into())])
        }
        Some(_) => p.add("type", "must be senior, volunteer or admin"),
    }
    if let Some(keyword) = query.keyword.as_deref().filter(|k| !k.trim().is_empty()) {
        let pattern = Arg::Text(like(keyword));
        w.push(
            "LOWER(COALESCE(name, '')) LIKE ? ESCAPE '\\' OR LOWER(COALESCE(email, '')) LIKE ? ESCAPE '\\'
             OR LOWER(COALESCE(bio, '')) LIKE ? ESCAPE '\\'",
            vec![pattern.clone(), pattern.clone(), pattern],
        );
    }
    match query.unverified.as_deref() {
        None | Some("") | Some("false") => {}
        Some("true") => w.push(
            &format!(
                "type = 'volunteer' AND deleted_at IS NULL AND NOT {}",
                directory::VOLUNTEER_VERIFIED_SQL
            ),
            vec![],
        ),
        Some(_) => p.add("unverified", "must be true or false"),
    }
    p.finish()?;
    let fingerprint = format!("{}|{query:?}", admin.id);
    let pager = Pager::new(&state.hash_key, "admin-users", &fingerprint, &page)?;
    let after = user_keyset(pager.after(&page)?)?;
    let (mut rows, total) = directory::page(&state.store.db, &w, after, pager.page_size).await?;
    let has_more = pager.trim(&mut rows);
    let last_key = rows.last().map(user_sort_key);
    let ids: Vec<String> = rows.iter().map(|u| u.id.clone()).collect();
    let relations = relations::relations((&state.store.db).into(), &admin.id, &ids).await?;
    let reader = Reader::user(&admin.id, true).with_relations(relations);
    let online = state.hub.online(&state.store.db, &ids).await;
    let mut data: Vec<Value> = rows
        .iter()
        .map(|u| u.full(&reader, online.contains(&u.id)))
        .collect();
    data.iter_mut().for_each(|u| state.files.sign_urls(u));
    Ok(ok_page(
        data,
        pager.pagination(last_key.as_ref(), has_more, total),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerificationBody {
    /// `admin` or `background`
    step: Option<String>,
    /// `pending`, `in-progress`, `failed` or `complete`
    status: Option<String>,
}

fn parse_status(p: &mut Problems, raw: Option<&str>) -> Option<VerificationStatus> {
    match raw {
        Some("pending") => Some(VerificationStatus::Pending),
        Some("in-progress") => Some(VerificationStatus::InProgress),
        Some("failed") => Some(VerificationStatus::Failed),
        Some("complete") => Some(VerificationStatus::Complete),
        _ => {
            p.add("status", "must be pending, in-progress, failed or complete");
            None
        }
    }
}

/// The verification part of `extended_user`, for answers about verification.
async fn verification_of(state: &AppState, user_id: &str) -> Result<Value, ApiError> {
    let user = users::find_by_id(&state.store.db, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(user.extended(false, &Default::default())["verification"].clone())
}

async fn set_verification(
    state: &AppState,
    who: &Authenticated,
    user_id: &str,
    step: VerificationStep,
    status: VerificationStatus,
) -> Result<(), ApiError> {
    let command = UserCommand::SetVerification {
        step,
        status,
        at: Utc::now(),
    };
    execute_user(state, user_id, command, who.metadata()).await?;
    Ok(())
}

/// An admin approves or fails a volunteer's `admin` step (or sets `background` by hand).
#[utoipa::path(tag = "admin", security(("bearer" = [])), request_body = VerificationBody,
    params(("id" = String, Path, description = "the volunteer's id")),
    responses((status = 200, description = "{user: {id, verification}}"),
              (status = 400, description = "invalid step or status"),
              (status = 403, description = "not an admin"),
              (status = 404, description = "no such user"),
              (status = 422, description = "not_applicable: not a volunteer")))]
#[post("/v1/admin/user/{id}/verification")]
pub async fn set_user_verification(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<VerificationBody>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &who).await?;
    let mut p = Problems::default();
    let step = match body.step.as_deref() {
        Some("admin") => Some(VerificationStep::Admin),
        Some("background") => Some(VerificationStep::Background),
        _ => {
            p.add(
                "step",
                "must be admin or background (basic follows from the profile)",
            );
            None
        }
    };
    let status = parse_status(&mut p, body.status.as_deref());
    p.finish()?;
    let (Some(step), Some(status)) = (step, status) else {
        return Err(ApiError::internal());
    };
    users::find_by_id(&state.store.db, &id)
        .await?
        .filter(|u| !u.is_deleted())
        .ok_or_else(|| ApiError::not_found("user"))?;
    set_verification(&state, &who, &id, step, status).await?;
    Ok(ok(
        json!({"user": {"id": *id, "verification": verification_of(&state, &id).await?}}),
    ))
}

/// A volunteer submits their details for the background check. The step goes `in-progress`,
/// then `complete` or `failed` when the provider answers (each change is pushed as
/// `user.update`). The details go to the provider only; they are not stored here.
#[utoipa::path(tag = "verification", security(("bearer" = [])), request_body = Object,
    responses((status = 200, description = "{verification}"),
              (status = 400, description = "invalid details"),
              (status = 409, description = "already complete"),
              (status = 422, description = "not_applicable: not a volunteer")))]
#[post("/v1/verification/background")]
pub async fn submit_background_check(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let user = me(&state, &who).await?;
    if !user.is_volunteer() {
        return Err(ApiError::unprocessable(
            "not_applicable",
            "only volunteers are background-checked",
        ));
    }
    if user.verification_background == "complete" {
        return Err(ApiError::conflict(
            "conflict",
            "the background check is already complete",
        ));
    }
    let request: BackgroundCheckRequest = serde_json::from_value(body.into_inner())
        .map_err(|e| ApiError::invalid(json!({"body": e.to_string()})))?;
    let mut p = Problems::default();
    p.check_length("firstName", &request.first_name, 1, 100);
    p.check_length("lastName", &request.last_name, 1, 100);
    if let Some(middle) = &request.middle_name {
        p.check_length("middleName", middle, 0, 100);
    }
    let zip = request.zip_code.trim();
    if !(3..=10).contains(&zip.len())
        || !zip
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ' ')
    {
        p.add("zipCode", "must be a postal code");
    }
    if request.work_locations.is_empty() || request.work_locations.len() > 10 {
        p.add("workLocations", "1 to 10 locations");
    }
    for (i, l) in request.work_locations.iter().enumerate() {
        if l.country_code.len() != 2 || l.city.trim().is_empty() || l.state_code.trim().is_empty() {
            p.add(
                &format!("workLocations[{i}]"),
                "needs a 2-letter countryCode, a stateCode and a city",
            );
        }
    }
    p.finish()?;
    set_verification(
        &state,
        &who,
        &who.user_id,
        VerificationStep::Background,
        VerificationStatus::InProgress,
    )
    .await?;
    let outcome = state
        .background_checks
        .check(&request)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "background check provider failed");
            ApiError::unavailable("the background check provider is unavailable; try again")
        })?;
    let status = match outcome {
        CheckOutcome::Clear => VerificationStatus::Complete,
        CheckOutcome::Failed => VerificationStatus::Failed,
    };
    set_verification(
        &state,
        &who,
        &who.user_id,
        VerificationStep::Background,
        status,
    )
    .await?;
    Ok(ok(
        json!({"verification": verification_of(&state, &who.user_id).await?}),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// Audit one wallet (a user id)
    user: Option<String>,
    /// Replay only events recorded up to this time (ISO-8601)
    as_of: Option<String>,
}

/// The ledger audit of section 14 (`talkamie ledger audit` as JSON). `data.ok` is false when
/// any discrepancy was found; `data.discrepancies` names the wallets.
#[utoipa::path(tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, description = "the audit report"),
              (status = 403, description = "not an admin")))]
#[get("/v1/admin/ledger/audit")]
pub async fn ledger_audit(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &who).await?;
    let as_of = match query.as_of.as_deref().filter(|t| !t.is_empty()) {
        Some(raw) => Some(
            chrono::DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid(json!({"asOf": "must be an ISO-8601 time"})))?,
        ),
        None => None,
    };
    let user = query.user.as_deref().filter(|u| !u.is_empty());
    let report = crate::ledger::audit::audit_settled(&state.store, user, as_of).await?;
    Ok(ok(report))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockBody {
    /// Seconds to move the server's clock forward (1 to 31 days' worth)
    advance_seconds: i64,
}

/// Moves the server's clock forward, for tests of reminders and call timeouts. Only with
/// `TALKAMIE_ADJUSTABLE_CLOCK=true` (404 otherwise): never in production.
#[utoipa::path(tag = "admin", security(("bearer" = [])), request_body = ClockBody,
    responses((status = 200, description = "{now}"),
              (status = 403, description = "not an admin"),
              (status = 404, description = "the clock is not adjustable on this server")))]
#[post("/v1/admin/clock")]
pub async fn advance_clock(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<ClockBody>,
) -> Result<HttpResponse, ApiError> {
    if !state.settings.timers.adjustable_clock {
        return Err(ApiError::not_found("adjustable clock"));
    }
    require_admin(&state, &who).await?;
    if !(1..=31 * 24 * 3600).contains(&body.advance_seconds) {
        return Err(ApiError::invalid(
            json!({"advanceSeconds": "must be 1 to 2678400 seconds"}),
        ));
    }
    let now = state.clock.advance(body.advance_seconds);
    Ok(ok(json!({ "now": now })))
}
