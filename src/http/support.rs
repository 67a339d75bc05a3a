//! Section 10 and 12: support tickets. A user has at most one open ticket (opened by asking
//! for it); the user and any admin write on it over the WebSocket; either side closes it.
//! The SupportDesk aggregate (one per user) keeps the rules.

use actix_web::{get, post, web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::support::{Side, SupportCommand, SupportDesk, SupportError};
use talkamie_projections::support::{self, TicketRow};
use talkamie_projections::users::UserRecord;
use utoipa::IntoParams;
use uuid::Uuid;

use super::admin::require_admin;
use super::chats::{client_id, message_text, page_query, receipt_marks, receipts, seq_cursor};
use super::envelope::{ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::schedules::users_as_seen_by;
use super::users::me;
use super::validate::required_text;
use crate::auth::Authenticated;
use crate::ratelimit;
use crate::state::AppState;

fn support_rejected(error: SupportError) -> ApiError {
    let message = error.to_string();
    match error {
        SupportError::NotFound => ApiError::not_found("ticket"),
        SupportError::Closed => ApiError::conflict("ticket_closed", message),
        SupportError::BadText => ApiError::invalid(json!({ "message.text": message })),
    }
}

async fn execute(
    state: &AppState,
    who: &Authenticated,
    owner: &str,
    command: SupportCommand,
) -> Result<usize, ApiError> {
    state
        .store
        .execute::<SupportDesk>(owner, command, who.metadata())
        .await
        .map(|events| events.len())
        .map_err(|e| ApiError::from_command(e, support_rejected))
}

/// The ticket `ticket_id` and the caller's side on it: its user, or staff for an admin.
/// Anyone else gets 404.
async fn ticket_for(
    state: &AppState,
    caller: &UserRecord,
    ticket_id: &str,
) -> Result<(TicketRow, Side), ApiError> {
    if ticket_id.chars().any(char::is_control) {
        return Err(ApiError::not_found("ticket"));
    }
    let ticket = support::ticket((&state.store.db).into(), ticket_id)
        .await?
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    if caller.user_type == "admin" {
        Ok((ticket, Side::Staff))
    } else if ticket.user_id == caller.id {
        Ok((ticket, Side::User))
    } else {
        Err(ApiError::not_found("ticket"))
    }
}

/// `full_support_ticket` of each row as `viewer` sees it.
async fn render_tickets(
    state: &AppState,
    viewer: &str,
    rows: &[TicketRow],
) -> Result<Vec<Value>, ApiError> {
    let owners: Vec<String> = rows.iter().map(|t| t.user_id.clone()).collect();
    let people = users_as_seen_by(state, viewer, &owners).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let last = match &row.last_message_id {
            Some(id) => support::message((&state.store.db).into(), id)
                .await?
                .map(|m| m.to_json()),
            None => None,
        };
        let user = people.get(&row.user_id).cloned().unwrap_or(Value::Null);
        out.push(row.to_json(user, last));
    }
    Ok(out)
}

async fn render_ticket(state: &AppState, viewer: &str, row: TicketRow) -> Result<Value, ApiError> {
    Ok(render_tickets(state, viewer, std::slice::from_ref(&row))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// My open ticket, opened now if I have none: `full_support_ticket`.
#[utoipa::path(tag = "support", security(("bearer" = [])),
    responses((status = 200, description = "full_support_ticket"),
              (status = 403, description = "admins answer tickets, they do not open them")))]
#[get("/v1/support/open/ticket")]
pub async fn open_ticket(
    state: web::Data<AppState>,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let caller = me(&state, &who).await?;
    if caller.user_type == "admin" {
        return Err(ApiError::forbidden());
    }
    let open = support::open_ticket_of((&state.store.db).into(), &who.user_id).await?;
    let ticket = match open {
        Some(ticket) => ticket,
        None => {
            let command = SupportCommand::Open {
                ticket_id: Uuid::new_v4().to_string(),
                user_id: who.user_id.clone(),
                at: Utc::now(),
            };
            execute(&state, &who, &who.user_id, command).await?;
            opened_ticket(&state, &who.user_id).await?
        }
    };
    Ok(ok(render_ticket(&state, &who.user_id, ticket).await?))
}

/// Closes `user_id`'s open ticket, if any (their account is being deleted: nobody is left to
/// answer).
pub async fn close_open_ticket_of(
    state: &AppState,
    who: &Authenticated,
    user_id: &str,
) -> Result<(), ApiError> {
    if let Some(ticket) = support::open_ticket_of((&state.store.db).into(), user_id).await? {
        let command = SupportCommand::Close {
            ticket_id: ticket.id,
            by: who.user_id.clone(),
            at: Utc::now(),
        };
        execute(state, who, user_id, command).await?;
    }
    Ok(())
}

/// The user's open ticket after an `Open`. When a racing request opened it, this one stored
/// nothing and did not wait for the read model: look again for a moment.
async fn opened_ticket(state: &AppState, user_id: &str) -> Result<TicketRow, ApiError> {
    for _ in 0..40 {
        if let Some(ticket) = support::open_ticket_of((&state.store.db).into(), user_id).await? {
            return Ok(ticket);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(ApiError::unavailable("the ticket is not readable yet"))
}

/// One page of a ticket's messages, newest first.
async fn messages_page(
    state: &AppState,
    caller: &UserRecord,
    ticket_id: &str,
    page: &PageQuery,
) -> Result<(Vec<Value>, Value), ApiError> {
    let (ticket, _) = ticket_for(state, caller, ticket_id).await?;
    let pager = Pager::new(&state.hash_key, "support-messages", &ticket.id, page)?;
    let before = seq_cursor(&pager, page)?;
    let (mut rows, total) = support::messages_page(
        (&state.store.db).into(),
        &ticket.id,
        before,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|m| json!(m.seq));
    let messages = rows.iter().map(|m| m.to_json()).collect();
    Ok((messages, pager.pagination(last.as_ref(), has_more, total)))
}

/// A ticket's messages, newest first: `basic_support_message[]` (its user and admins).
#[utoipa::path(tag = "support", security(("bearer" = [])),
    params(("id" = String, Path, description = "ticket id"), PageQuery),
    responses((status = 200, description = "basic_support_message[] with pagination"),
              (status = 404, description = "no such ticket of yours")))]
#[get("/v1/support/ticket/{id}/messages")]
pub async fn ticket_messages(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = me(&state, &who).await?;
    let (messages, pagination) = messages_page(&state, &caller, &id, &page).await?;
    Ok(ok_page(messages, pagination))
}

/// Closes a ticket (its user or an admin): the ticket. Closing a closed ticket changes nothing.
#[utoipa::path(tag = "support", security(("bearer" = [])),
    params(("id" = String, Path, description = "ticket id")),
    responses((status = 200, description = "full_support_ticket"),
              (status = 404, description = "no such ticket of yours")))]
#[post("/v1/support/ticket/{id}/close")]
pub async fn close_ticket(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = me(&state, &who).await?;
    let (ticket, _) = ticket_for(&state, &caller, &id).await?;
    let command = SupportCommand::Close {
        ticket_id: ticket.id.clone(),
        by: who.user_id.clone(),
        at: Utc::now(),
    };
    execute(&state, &who, &ticket.user_id, command).await?;
    let ticket = support::ticket((&state.store.db).into(), &ticket.id)
        .await?
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    Ok(ok(render_ticket(&state, &who.user_id, ticket).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TicketsQuery {
    /// `open` or `closed` (default: both)
    status: Option<String>,
}

/// Every ticket, latest activity first: `full_support_ticket[]` (admins only).
#[utoipa::path(tag = "admin", security(("bearer" = [])), params(TicketsQuery, PageQuery),
    responses((status = 200, description = "full_support_ticket[] with pagination"),
              (status = 403, description = "not an admin")))]
#[get("/v1/admin/support/tickets")]
pub async fn admin_tickets(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<TicketsQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &who).await?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s @ ("open" | "closed")) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid(
                json!({"status": "must be open or closed"}),
            ))
        }
    };
    let pager = Pager::new(&state.hash_key, "tickets", status.unwrap_or(""), &page)?;
    let after = time_id_keyset(pager.after(&page)?)?;
    let (mut rows, total) =
        support::tickets_page((&state.store.db).into(), status, after, pager.page_size + 1).await?;
    let has_more = pager.trim(&mut rows);
    let last = rows
        .last()
        .map(|t| time_id_sort_key(t.last_activity_at, &t.id));
    let data = render_tickets(&state, &who.user_id, &rows).await?;
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// `support.message.send {ticketId, message:{text}, clientId?}`: `{ticket:{id}, message}`.
/// A retry with the same `clientId` returns the first message and stores nothing.
pub async fn send_message(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let ticket_id = required_text(frame, "ticketId")?;
    let text = message_text(frame)?;
    let client_id = client_id(frame)?;
    let caller = me(state, who).await?;
    let (ticket, side) = ticket_for(state, &caller, &ticket_id).await?;
    let retried = match &client_id {
        Some(c) => {
            support::message_by_client_id((&state.store.db).into(), &ticket.id, &who.user_id, c)
                .await?
        }
        None => None,
    };
    if let Some(first) = retried {
        return Ok(json!({"ticket": {"id": ticket.id}, "message": first.to_json()}));
    }
    ratelimit::check(&state.limits.messages_per_user, &who.user_id)?;
    let message_id = Uuid::new_v4().to_string();
    let command = SupportCommand::Post {
        ticket_id: ticket.id.clone(),
        message_id: message_id.clone(),
        sender: who.user_id.clone(),
        side,
        text,
        client_id: client_id.clone(),
        at: Utc::now(),
    };
    let stored = if execute(state, who, &ticket.user_id, command).await? == 0 {
        // A concurrent retry stored it first: answer with that one.
        let client_id = client_id.unwrap_or_default();
        support::message_by_client_id(
            (&state.store.db).into(),
            &ticket.id,
            &who.user_id,
            &client_id,
        )
        .await?
    } else {
        support::message((&state.store.db).into(), &message_id).await?
    };
    let message = stored.ok_or_else(|| ApiError::unavailable("the message is not readable yet"))?;
    Ok(json!({"ticket": {"id": ticket.id}, "message": message.to_json()}))
}

/// `support.messages.get {ticketId, pageSize?, lastEvaluatedKey?}`:
/// `({ticket:{id}, messages}, pagination)`.
pub async fn get_messages(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<(Value, Value), ApiError> {
    let ticket_id = required_text(frame, "ticketId")?;
    let page = page_query(frame)?;
    let caller = me(state, who).await?;
    let (messages, pagination) = messages_page(state, &caller, &ticket_id, &page).await?;
    Ok((
        json!({"ticket": {"id": ticket_id}, "messages": messages}),
        pagination,
    ))
}

/// `support.messages.update {ticketId, messagesMap}`: delivered/read receipts for messages of
/// the other side (the user marks the staff's, an admin the user's). Answers
/// `{ticket:{id}, messagesMap}` with the statuses now stored; other ids are left out.
pub async fn update_messages(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let ticket_id = required_text(frame, "ticketId")?;
    let wanted = receipts(frame)?;
    let caller = me(state, who).await?;
    let (ticket, side) = ticket_for(state, &caller, &ticket_id).await?;
    let writer = side.other();
    let ids: Vec<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
    let theirs =
        support::messages_of_side((&state.store.db).into(), &ticket.id, writer, &ids).await?;
    let seq_of = |id: &str| theirs.iter().find(|m| m.id == id).map(|m| m.seq);
    let now = Utc::now();
    for (receipt, upto) in receipt_marks(&wanted, seq_of) {
        let command = SupportCommand::Mark {
            ticket_id: ticket.id.clone(),
            side,
            receipt,
            upto,
            at: now,
        };
        execute(state, who, &ticket.user_id, command).await?;
    }
    let now_stored =
        support::messages_of_side((&state.store.db).into(), &ticket.id, writer, &ids).await?;
    let map: serde_json::Map<String, Value> = now_stored
        .iter()
        .map(|m| (m.id.clone(), m.to_json()["delivery"].clone()))
        .collect();
    Ok(json!({"ticket": {"id": ticket.id}, "messagesMap": map}))
}
