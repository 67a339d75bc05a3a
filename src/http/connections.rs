//! Section 5: connect requests and message requests between a senior and a volunteer.
//! Every rule lives in the Pair aggregate (one stream per pair); the handlers find the two
//! users, run the command and answer from the read models.

use actix_web::{delete, get, post, web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::pair::{Pair, PairCommand, PairError, PairEvent, Party};
use talkamie_aggregates::user::UserType;
use talkamie_projections::chat_views;
use talkamie_projections::chats::{self, ConnectRequestRow};
use talkamie_projections::profiles::Reader;
use talkamie_projections::relations;
use talkamie_projections::users::{self, UserRecord};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::envelope::{created, ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::users::me;
use crate::auth::Authenticated;
use crate::state::AppState;
use crate::store::Metadata;

/// Namespace of pair (= chat) ids.
const PAIR_NAMESPACE: Uuid = Uuid::from_u128(0x5c3a_91d2_6f0e_4b7a_b1c4_8e2d_7a90_3f11);

/// The Pair aggregate id of two users, which is also their chat's id: a UUID v5 of the
/// ordered pair, so both directions name the same stream.
pub fn pair_id(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    Uuid::new_v5(&PAIR_NAMESPACE, format!("{low}\n{high}").as_bytes()).to_string()
}

/// How a broken pair rule is answered.
pub fn pair_rejected(error: PairError) -> ApiError {
    let message = error.to_string();
    match error {
        PairError::SelfRequest => ApiError::invalid(json!({ "id": message })),
        PairError::BadText => ApiError::invalid(json!({ "text": message })),
        PairError::NotSeniorAndVolunteer => {
            ApiError::unprocessable("not_senior_and_volunteer", message)
        }
        PairError::AlreadyConnected | PairError::AlreadyChatting | PairError::RequestPending => {
            ApiError::conflict("already_exists", message)
        }
        PairError::TheyAskedFirst => ApiError::conflict("conflict", message),
        PairError::ChatNotOpen => ApiError::conflict("chat_not_open", message),
        PairError::NoPendingRequest => ApiError::not_found("pending request"),
        PairError::NotConnected => ApiError::not_found("connection"),
        PairError::NotMember => ApiError::not_found("chat"),
    }
}

pub async fn execute_pair(
    state: &AppState,
    pair: &str,
    command: PairCommand,
    metadata: Metadata,
) -> Result<Vec<PairEvent>, ApiError> {
    state
        .store
        .execute::<Pair>(pair, command, metadata)
        .await
        .map_err(|e| ApiError::from_command(e, pair_rejected))
}

fn user_type(user: &UserRecord) -> UserType {
    match user.user_type.as_str() {
        "volunteer" => UserType::Volunteer,
        "admin" => UserType::Admin,
        _ => UserType::Senior,
    }
}

fn party(user: &UserRecord) -> Party {
    Party {
        id: user.id.clone(),
        user_type: user_type(user),
    }
}

/// Me and the user `{id}` of the path. Deleted (or unknown) users are 404; myself is 400.
/// Verification is not needed to connect or chat; booking a call needs it (section 8).
async fn me_and(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<(UserRecord, UserRecord), ApiError> {
    let me = me(state, who).await?;
    if me.id == id {
        return Err(ApiError::invalid(
            json!({ "id": "you cannot send a request to yourself" }),
        ));
    }
    let other = users::find_by_id(&state.store.db, id)
        .await?
        .filter(|other| !other.is_deleted())
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok((me, other))
}

/// `basic_user` of `user` as `reader` sees it.
async fn basic_user(state: &AppState, reader: &str, user: &UserRecord) -> Result<Value, ApiError> {
    let relations = relations::relations(
        (&state.store.db).into(),
        reader,
        std::slice::from_ref(&user.id),
    )
    .await?;
    let online = state
        .hub
        .online(&state.store.db, std::slice::from_ref(&user.id))
        .await
        .contains(&user.id);
    let mut value = user.basic(
        &Reader::user(reader, false).with_relations(relations),
        online,
    );
    state.files.sign_urls(&mut value);
    Ok(value)
}

/// `connectRequest` with `user` (the other person, as `reader` sees them).
async fn connect_request_json(
    state: &AppState,
    reader: &str,
    request: &ConnectRequestRow,
) -> Result<Value, ApiError> {
    let other_id = if request.from_id == reader {
        &request.to_id
    } else {
        &request.from_id
    };
    let mut value = request.to_json();
    value["user"] = match users::find_by_id(&state.store.db, other_id).await? {
        Some(other) => basic_user(state, reader, &other).await?,
        None => json!({ "id": other_id }),
    };
    Ok(value)
}

/// The connect request a command just changed.
async fn request_of(state: &AppState, events: &[PairEvent]) -> Result<ConnectRequestRow, ApiError> {
    let id = events.iter().find_map(|event| match event {
        PairEvent::ConnectionRequested { request_id, .. }
        | PairEvent::ConnectionRequestCanceled { request_id, .. }
        | PairEvent::ConnectionRequestRejected { request_id, .. }
        | PairEvent::ConnectionAccepted { request_id, .. } => Some(request_id.clone()),
        _ => None,
    });
    let Some(id) = id else {
        return Err(ApiError::not_found("pending request"));
    };
    chats::connect_request((&state.store.db).into(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connect request"))
}

/// `basic_chat` of chat `chat_id` as `user_id` sees it.
pub async fn basic_chat(state: &AppState, chat_id: &str, user_id: &str) -> Result<Value, ApiError> {
    let view = chats::find_for_member((&state.store.db).into(), chat_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    let online = state
        .hub
        .online(&state.store.db, std::slice::from_ref(&view.other_id))
        .await
        .contains(&view.other_id);
    let mut chat = chat_views::basic_chat((&state.store.db).into(), &view, online).await?;
    state.files.sign_urls(&mut chat);
    Ok(chat)
}

/// Sends a connect request to `{id}`: `connectRequest` (201).
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user to connect with")),
    responses((status = 201, description = "connectRequest"),
              (status = 400, description = "a request to yourself"),
              (status = 404, description = "no such user (or deleted)"),
              (status = 409, description = "already_exists: a live request or a connection exists; conflict: they asked you first, accept it"),
              (status = 422, description = "not_senior_and_volunteer")))]
#[post("/v1/user/{id}/connection")]
pub async fn send_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (me, other) = me_and(&state, &who, &id).await?;
    let command = PairCommand::SendConnectionRequest {
        request_id: Uuid::new_v4().to_string(),
        from: party(&me),
        to: party(&other),
        at: Utc::now(),
    };
    let events = execute_pair(&state, &pair_id(&me.id, &other.id), command, who.metadata()).await?;
    let request = request_of(&state, &events).await?;
    Ok(created(
        connect_request_json(&state, &me.id, &request).await?,
    ))
}

/// Runs one of the answer commands on the pair of me and `{id}`; answers the request.
async fn answer_request(
    state: &AppState,
    who: &Authenticated,
    id: &str,
    command: impl FnOnce(String) -> PairCommand,
) -> Result<(Vec<PairEvent>, ConnectRequestRow), ApiError> {
    let (me, other) = me_and(state, who, id).await?;
    let events = execute_pair(
        state,
        &pair_id(&me.id, &other.id),
        command(me.id.clone()),
        who.metadata(),
    )
    .await?;
    let request = request_of(state, &events).await?;
    Ok((events, request))
}

/// Cancels my pending connect request to `{id}`: `connectRequest`.
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user I asked")),
    responses((status = 200, description = "connectRequest (canceled)"),
              (status = 404, description = "no pending request of mine")))]
#[delete("/v1/user/{id}/connection")]
pub async fn cancel_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, request) = answer_request(&state, &who, &id, |by| {
        PairCommand::CancelConnectionRequest { by, at: Utc::now() }
    })
    .await?;
    Ok(ok(
        connect_request_json(&state, &who.user_id, &request).await?
    ))
}

/// Accepts the connect request of `{id}`: `{connectRequest, chat}` (the pair's chat, opened).
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user who asked me")),
    responses((status = 200, description = "{connectRequest, chat: basic_chat}"),
              (status = 404, description = "no pending request to me")))]
#[post("/v1/user/{id}/connection/accept")]
pub async fn accept_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, request) = answer_request(&state, &who, &id, |by| {
        PairCommand::AcceptConnectionRequest { by, at: Utc::now() }
    })
    .await?;
    let chat = basic_chat(&state, &request.chat_id, &who.user_id).await?;
    Ok(ok(json!({
        "connectRequest": connect_request_json(&state, &who.user_id, &request).await?,
        "chat": chat,
    })))
}

/// Rejects the connect request of `{id}`: `connectRequest`.
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user who asked me")),
    responses((status = 200, description = "connectRequest (rejected)"),
              (status = 404, description = "no pending request to me")))]
#[delete("/v1/user/{id}/connection/reject")]
pub async fn reject_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, request) = answer_request(&state, &who, &id, |by| {
        PairCommand::RejectConnectionRequest { by, at: Utc::now() }
    })
    .await?;
    Ok(ok(
        connect_request_json(&state, &who.user_id, &request).await?
    ))
}

/// Ends the connection (or accepted message request) with `{id}`: `{chat}`, closed. The
/// history stays; new messages and calls stop until a new request is accepted.
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user I am connected with")),
    responses((status = 200, description = "{chat: basic_chat}"),
              (status = 404, description = "not connected")))]
#[delete("/v1/user/{id}/connection/disconnect")]
pub async fn disconnect(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (me, other) = me_and(&state, &who, &id).await?;
    let chat_id = pair_id(&me.id, &other.id);
    let command = PairCommand::Disconnect {
        by: me.id.clone(),
        at: Utc::now(),
    };
    execute_pair(&state, &chat_id, command, who.metadata()).await?;
    Ok(ok(
        json!({ "chat": basic_chat(&state, &chat_id, &me.id).await? }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PendingQuery {
    /// `received` (default): requests waiting for my answer; `sent`: mine, unanswered
    direction: Option<String>,
}

/// Pending connect requests: `connectRequest[]` with `user`, newest first.
#[utoipa::path(tag = "connections", security(("bearer" = [])), params(PendingQuery, PageQuery),
    responses((status = 200, description = "connectRequest[] with pagination"),
              (status = 400, description = "bad direction or page parameters")))]
#[get("/v1/connections/pending")]
pub async fn pending(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<PendingQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let received = match query.direction.as_deref() {
        None | Some("") | Some("received") => true,
        Some("sent") => false,
        Some(_) => {
            return Err(ApiError::invalid(
                json!({ "direction": "must be received or sent" }),
            ))
        }
    };
    let pager = Pager::new(
        &state.hash_key,
        "connections-pending",
        &format!("{}|{received}", who.user_id),
        &page,
    )?;
    let after = time_id_keyset(pager.after(&page)?)?;
    let (mut rows, total) = chats::pending_requests(
        (&state.store.db).into(),
        &who.user_id,
        received,
        after,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|r| time_id_sort_key(r.created_at, &r.id));
    let mut data = Vec::with_capacity(rows.len());
    for request in &rows {
        data.push(connect_request_json(&state, &who.user_id, request).await?);
    }
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// The users I am connected with: `basic_user[]`, most recent connection first.
#[utoipa::path(tag = "connections", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_user[] with pagination")))]
#[get("/v1/connections/users")]
pub async fn connected_users(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let pager = Pager::new(&state.hash_key, "connections-users", &who.user_id, &page)?;
    let after = time_id_keyset(pager.after(&page)?)?;
    let (mut rows, total) = chats::connections_page(
        (&state.store.db).into(),
        &who.user_id,
        after,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|(id, since)| time_id_sort_key(*since, id));
    let mut data = Vec::with_capacity(rows.len());
    for (other_id, _) in &rows {
        if let Some(user) = users::find_by_id(&state.store.db, other_id).await? {
            data.push(basic_user(&state, &who.user_id, &user).await?);
        }
    }
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageRequestBody {
    /// 1..4000 characters
    text: Option<String>,
}

/// Sends a first message to someone I am not connected with: `{chat, message}` (201).
#[utoipa::path(tag = "connections", security(("bearer" = [])), request_body = MessageRequestBody,
    params(("id" = String, Path, description = "the user to write to")),
    responses((status = 201, description = "{chat: basic_chat, message: basic_chat_message}"),
              (status = 400, description = "text missing, empty or over 4000 characters"),
              (status = 404, description = "no such user (or deleted)"),
              (status = 409, description = "a live request exists, or you can already message each other"),
              (status = 422, description = "not_senior_and_volunteer")))]
#[post("/v1/user/{id}/message/request")]
pub async fn send_message_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    body: web::Json<MessageRequestBody>,
) -> Result<HttpResponse, ApiError> {
    let text = body.text.clone().unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            json!({ "text": "is required (1 to 4000 characters)" }),
        ));
    }
    let (me, other) = me_and(&state, &who, &id).await?;
    let chat_id = pair_id(&me.id, &other.id);
    let message_id = Uuid::new_v4().to_string();
    let command = PairCommand::SendMessageRequest {
        request_id: Uuid::new_v4().to_string(),
        message_id: message_id.clone(),
        from: party(&me),
        to: party(&other),
        text,
        at: Utc::now(),
    };
    execute_pair(&state, &chat_id, command, who.metadata()).await?;
    let message = chats::message((&state.store.db).into(), &message_id)
        .await?
        .map(|m| m.to_json());
    Ok(created(json!({
        "chat": basic_chat(&state, &chat_id, &me.id).await?,
        "message": message,
    })))
}

/// Runs a message-request answer on the pair of me and `{id}`; answers `{chat}`.
async fn answer_message_request(
    state: &AppState,
    who: &Authenticated,
    id: &str,
    command: impl FnOnce(String) -> PairCommand,
) -> Result<HttpResponse, ApiError> {
    let (me, other) = me_and(state, who, id).await?;
    let chat_id = pair_id(&me.id, &other.id);
    execute_pair(state, &chat_id, command(me.id.clone()), who.metadata()).await?;
    Ok(ok(
        json!({ "chat": basic_chat(state, &chat_id, &me.id).await? }),
    ))
}

/// Cancels my pending message request to `{id}`: `{chat}`.
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user I wrote to")),
    responses((status = 200, description = "{chat: basic_chat}"),
              (status = 404, description = "no pending message request of mine")))]
#[delete("/v1/user/{id}/message/request")]
pub async fn cancel_message_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    answer_message_request(&state, &who, &id, |by| PairCommand::CancelMessageRequest {
        by,
        at: Utc::now(),
    })
    .await
}

/// Accepts the message request of `{id}`: `{chat}` (now open for messages).
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user who wrote to me")),
    responses((status = 200, description = "{chat: basic_chat} with request.status accepted"),
              (status = 404, description = "no pending message request to me")))]
#[post("/v1/user/{id}/message/request/accept")]
pub async fn accept_message_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    answer_message_request(&state, &who, &id, |by| PairCommand::AcceptMessageRequest {
        by,
        at: Utc::now(),
    })
    .await
}

/// Rejects the message request of `{id}`: `{chat}`.
#[utoipa::path(tag = "connections", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user who wrote to me")),
    responses((status = 200, description = "{chat: basic_chat} with request.status rejected"),
              (status = 404, description = "no pending message request to me")))]
#[delete("/v1/user/{id}/message/request/reject")]
pub async fn reject_message_request(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    answer_message_request(&state, &who, &id, |by| PairCommand::RejectMessageRequest {
        by,
        at: Utc::now(),
    })
    .await
}
