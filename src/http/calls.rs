//! Section 8: reading calls (`GET /v1/call/{id}`) and the call history. Calls themselves run
//! over the WebSocket (`crate::calls`).

use actix_web::{get, web, HttpResponse};
use talkamie_projections::calls;

use super::envelope::{ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::schedules::KeywordQuery;
use crate::auth::Authenticated;
use crate::calls::{member_call, render_calls, render_full};
use crate::state::AppState;

/// One of my calls: `full_call` (404 for anyone else's).
#[utoipa::path(tag = "calls", security(("bearer" = [])),
    params(("id" = String, Path, description = "call id")),
    responses((status = 200, description = "full_call"),
              (status = 404, description = "no such call of yours")))]
#[get("/v1/call/{id}")]
pub async fn get_call(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = member_call(&state, &id, &who.user_id).await?;
    Ok(ok(render_full(&state, &who.user_id, &row).await?))
}

/// My calls, latest first: `basic_call[]` with `direction` as I see it.
#[utoipa::path(tag = "calls", security(("bearer" = [])), params(KeywordQuery, PageQuery),
    responses((status = 200, description = "basic_call[] with pagination")))]
#[get("/v1/calls/histories")]
pub async fn call_histories(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<KeywordQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let keyword = query.keyword()?;
    let fingerprint = format!("{}|{keyword:?}", who.user_id);
    let pager = Pager::new(&state.hash_key, "calls", &fingerprint, &page)?;
    let after = time_id_keyset(pager.after(&page)?)?;
    let (mut rows, total) = calls::page(
        (&state.store.db).into(),
        &who.user_id,
        keyword,
        after,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|c| time_id_sort_key(c.started_at, &c.id));
    let data = render_calls(&state, &who.user_id, &rows).await?;
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}
