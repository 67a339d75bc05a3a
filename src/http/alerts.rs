//! Alerts (section 10): `GET /v1/alerts` and the `alerts.update` WebSocket action.

use actix_web::{get, web, HttpResponse};
use chrono::Utc;
use serde_json::{json, Map, Value};
use talkamie_aggregates::alert_inbox::{
    AlertInbox, AlertInboxCommand, AlertInboxError, MAX_ALERTS_PER_UPDATE,
};
use talkamie_projections::alerts;

use super::envelope::{ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use crate::auth::Authenticated;
use crate::state::AppState;

/// My alerts, newest first: `basic_alert[]`.
#[utoipa::path(tag = "alerts", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_alert[] with pagination")))]
#[get("/v1/alerts")]
pub async fn list_alerts(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let pager = Pager::new(&state.hash_key, "alerts", &who.user_id, &page)?;
    let after = time_id_keyset(pager.after(&page)?)?;
    let (mut rows, total) = alerts::page(
        (&state.store.db).into(),
        &who.user_id,
        after,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|a| time_id_sort_key(a.created_at, &a.id));
    let mut data: Vec<Value> = rows.iter().map(|a| a.to_json()).collect();
    data.iter_mut().for_each(|a| state.files.sign_urls(a));
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// `alerts.update`: marks my alerts read. Answers `{alertsMap, viewer:{id,totalUnreadAlerts}}`
/// with the alerts of mine that are now read; ids that are not my alerts are left out.
pub async fn update_alerts(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let Some(map) = frame.get("alertsMap").and_then(Value::as_object) else {
        return Err(ApiError::invalid(
            json!({"alertsMap": "is required: {alertId: {status: read}}"}),
        ));
    };
    if map.is_empty() || map.len() > MAX_ALERTS_PER_UPDATE {
        return Err(ApiError::invalid(json!({
            "alertsMap": format!("must hold 1 to {MAX_ALERTS_PER_UPDATE} alerts")
        })));
    }
    for (id, entry) in map {
        if entry.get("status").and_then(Value::as_str) != Some("read") {
            return Err(ApiError::invalid(
                json!({format!("alertsMap.{id}.status"): "must be read"}),
            ));
        }
    }
    let ids: Vec<String> = map.keys().cloned().collect();
    let unread = alerts::unread_of((&state.store.db).into(), &who.user_id, &ids).await?;
    let command = AlertInboxCommand::MarkRead {
        alert_ids: unread,
        at: Utc::now(),
    };
    state
        .store
        .execute::<AlertInbox>(&who.user_id, command, who.metadata())
        .await
        .map_err(|e| {
            ApiError::from_command(e, |AlertInboxError::TooMany| {
                ApiError::invalid(json!({"alertsMap": "too many alerts"}))
            })
        })?;
    let mine = alerts::statuses((&state.store.db).into(), &who.user_id, &ids).await?;
    let alerts_map: Map<String, Value> = mine
        .into_iter()
        .map(|(id, status)| (id, json!({ "status": status })))
        .collect();
    let total = alerts::total_unread((&state.store.db).into(), &who.user_id).await?;
    Ok(json!({
        "alertsMap": alerts_map,
        "viewer": {"id": who.user_id, "totalUnreadAlerts": total},
    }))
}
