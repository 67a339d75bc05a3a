//! Section 6: chats and messages. The lists and reads are REST; sending, paging and receipts
//! are WebSocket actions (`chat.message.send`, `chat.messages.get`, `chat.messages.update`)
//! whose logic lives here too, so both transports share one implementation.

use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use talkamie_aggregates::pair::{PairCommand, PairEvent, Receipt, MAX_TEXT_CHARS};
use talkamie_projections::chat_views;
use talkamie_projections::chats::{self, ChatList, ChatView, MessageRow};
use utoipa::IntoParams;
use uuid::Uuid;

use super::connections::execute_pair;
use super::envelope::{ok, ok_page, ApiError};
use super::pagination::{PageQuery, Pager};
use super::validate::required_text;
use crate::auth::Authenticated;
use crate::ratelimit;
use crate::state::AppState;

/// Longest `clientId` accepted.
pub const MAX_CLIENT_ID_CHARS: usize = 100;
/// Receipts one `chat.messages.update` may carry.
pub const MAX_RECEIPTS: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ChatsQuery {
    /// Part of the other person's name or of the request text
    keyword: Option<String>,
}

/// The chat `chat_id` if `user_id` is a member and the other member still exists; else 404.
pub async fn member_chat(
    state: &AppState,
    chat_id: &str,
    user_id: &str,
) -> Result<ChatView, ApiError> {
    chats::find_for_member_with_other((&state.store.db).into(), chat_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))
}

async fn render_chats(state: &AppState, views: &[ChatView]) -> Result<Vec<Value>, ApiError> {
    let others: Vec<String> = views.iter().map(|v| v.other_id.clone()).collect();
    let online = state.hub.online(&state.store.db, &others).await;
    let mut out = Vec::with_capacity(views.len());
    for view in views {
        let mut chat = chat_views::basic_chat(
            (&state.store.db).into(),
            view,
            online.contains(&view.other_id),
        )
        .await?;
        state.files.sign_urls(&mut chat);
        out.push(chat);
    }
    Ok(out)
}

/// One page of a chat list.
async fn chat_list(
    state: &AppState,
    who: &Authenticated,
    which: ChatList,
    keyword: Option<&str>,
    page: &PageQuery,
) -> Result<HttpResponse, ApiError> {
    let keyword = keyword.map(str::trim).filter(|k| !k.is_empty());
    if keyword.is_some_and(|k| k.chars().count() > 100) {
        return Err(ApiError::invalid(
            json!({"keyword": "at most 100 characters"}),
        ));
    }
    let list_name = match which {
        ChatList::All => "chats",
        ChatList::Unread => "chats-unread",
        ChatList::Pending => "chats-pending",
        ChatList::Frequent => "chats-frequent",
    };
    let fingerprint = format!("{}|{keyword:?}", who.user_id);
    let pager = Pager::new(&state.hash_key, list_name, &fingerprint, page)?;
    let after = match pager.after(page)? {
        None => None,
        Some(key) => {
            let rank = key[0].as_i64();
            let at = key[1]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            match (rank, at, key[2].as_str()) {
                (Some(rank), Some(at), Some(id)) => {
                    Some((rank, at.with_timezone(&Utc), id.to_string()))
                }
                _ => {
                    return Err(ApiError::invalid(
                        json!({"lastEvaluatedKey": "is malformed"}),
                    ))
                }
            }
        }
    };
    let now = Utc::now();
    let (mut rows, total) = chats::list(
        (&state.store.db).into(),
        &who.user_id,
        which,
        keyword,
        after,
        pager.page_size + 1,
        now,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    // The rank of `frequent` is recomputed per page; the key keeps it so pages do not overlap.
    let last = match rows.last() {
        Some(view) => {
            let rank = if which == ChatList::Frequent {
                chats::recent_activity(
                    (&state.store.db).into(),
                    &view.id,
                    now - chrono::Duration::days(30),
                )
                .await?
            } else {
                0
            };
            Some(json!([
                rank,
                view.last_activity_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                view.id
            ]))
        }
        None => None,
    };
    let data = render_chats(state, &rows).await?;
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// My chats, most recent activity first: `basic_chat[]`.
#[utoipa::path(tag = "chats", security(("bearer" = [])), params(ChatsQuery, PageQuery),
    responses((status = 200, description = "basic_chat[] with pagination")))]
#[get("/v1/chats")]
pub async fn list_chats(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<ChatsQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    chat_list(&state, &who, ChatList::All, query.keyword.as_deref(), &page).await
}

/// My chats with unread messages.
#[utoipa::path(tag = "chats", security(("bearer" = [])), params(ChatsQuery, PageQuery),
    responses((status = 200, description = "basic_chat[] with pagination")))]
#[get("/v1/chats/unread")]
pub async fn unread_chats(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<ChatsQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    chat_list(
        &state,
        &who,
        ChatList::Unread,
        query.keyword.as_deref(),
        &page,
    )
    .await
}

/// Message requests waiting for my answer and my own unanswered ones.
#[utoipa::path(tag = "chats", security(("bearer" = [])), params(ChatsQuery, PageQuery),
    responses((status = 200, description = "basic_chat[] (with request) and pagination")))]
#[get("/v1/chats/pending")]
pub async fn pending_chats(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<ChatsQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    chat_list(
        &state,
        &who,
        ChatList::Pending,
        query.keyword.as_deref(),
        &page,
    )
    .await
}

/// My chats ranked by messages in the last 30 days (chats without any are left out).
#[utoipa::path(tag = "chats", security(("bearer" = [])), params(ChatsQuery, PageQuery),
    responses((status = 200, description = "basic_chat[] with pagination")))]
#[get("/v1/chats/frequent")]
pub async fn frequent_chats(
    state: web::Data<AppState>,
    who: Authenticated,
    query: web::Query<ChatsQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    chat_list(
        &state,
        &who,
        ChatList::Frequent,
        query.keyword.as_deref(),
        &page,
    )
    .await
}

/// One chat: `full_chat` (members only; anyone else gets 404).
#[utoipa::path(tag = "chats", security(("bearer" = [])),
    params(("id" = String, Path, description = "chat id")),
    responses((status = 200, description = "full_chat"),
              (status = 404, description = "no such chat, or not yours")))]
#[get("/v1/chat/{id}")]
pub async fn get_chat(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = member_chat(&state, &id, &who.user_id).await?;
    let online = state
        .hub
        .online(&state.store.db, std::slice::from_ref(&view.other_id))
        .await
        .contains(&view.other_id);
    let mut chat = chat_views::full_chat((&state.store.db).into(), &view, online).await?;
    state.files.sign_urls(&mut chat);
    Ok(ok(chat))
}

/// A chat's messages, newest first: `basic_chat_message[]`.
#[utoipa::path(tag = "chats", security(("bearer" = [])), params(("id" = String, Path, description = "chat id"), PageQuery),
    responses((status = 200, description = "basic_chat_message[] with pagination"),
              (status = 404, description = "no such chat, or not yours")))]
#[get("/v1/chat/{id}/messages")]
pub async fn chat_messages(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (messages, pagination) = messages_page(&state, &who, &id, &page).await?;
    Ok(ok_page(messages, pagination))
}

/// A page of messages of a chat I am in, newest first, and its `pagination`.
pub async fn messages_page(
    state: &AppState,
    who: &Authenticated,
    chat_id: &str,
    page: &PageQuery,
) -> Result<(Vec<Value>, Value), ApiError> {
    let view = member_chat(state, chat_id, &who.user_id).await?;
    let pager = Pager::new(&state.hash_key, "chat-messages", chat_id, page)?;
    let before = seq_cursor(&pager, page)?;
    let mut rows = chats::messages_page(
        (&state.store.db).into(),
        chat_id,
        before,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|m| json!(m.seq));
    let messages = rows.iter().map(|m| m.to_json()).collect();
    Ok((
        messages,
        pager.pagination(last.as_ref(), has_more, view.total_messages),
    ))
}

/// `chat.message.send`: `{chat:{id}, message}`. A retry with the same `clientId` returns the
/// first message and stores nothing.
pub async fn send_message(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let chat_id = required_text(frame, "chatId")?;
    let text = message_text(frame)?;
    let client_id = client_id(frame)?;
    let sendable = chats::find_for_sender((&state.store.db).into(), &chat_id, &who.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    store_message(state, who, chat_id, text, client_id, sendable.member_name).await
}

/// `message.text` of a send frame: 1..4000 characters (chats and support).
pub fn message_text(frame: &Value) -> Result<String, ApiError> {
    let text = match frame.get("message").and_then(|m| m.get("text")) {
        Some(Value::String(text)) => text.clone(),
        _ => {
            return Err(ApiError::invalid(
                json!({"message.text": "is required (a string)"}),
            ))
        }
    };
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            json!({"message.text": format!("must be 1 to {MAX_TEXT_CHARS} characters")}),
        ));
    }
    // PostgreSQL's JSON refuses NUL; other control characters are no text either.
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::invalid(
            json!({"message.text": "must not hold control characters"}),
        ));
    }
    Ok(text)
}

/// The optional `clientId` of a send frame (a retry with it stores nothing new).
pub fn client_id(frame: &Value) -> Result<Option<String>, ApiError> {
    match frame.get("clientId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id))
            if !id.is_empty()
                && id.chars().count() <= MAX_CLIENT_ID_CHARS
                && !id.chars().any(char::is_control) =>
        {
            Ok(Some(id.clone()))
        }
        Some(_) => Err(ApiError::invalid(
            json!({"clientId": format!("must be a string of 1 to {MAX_CLIENT_ID_CHARS} characters")}),
        )),
    }
}

/// The watermarks a receipts frame sets: for reads, then deliveries, the highest sequence
/// number among the wanted messages `seq_of` knows (the others are not the reader's to mark).
pub fn receipt_marks(
    wanted: &[(String, Receipt)],
    seq_of: impl Fn(&str) -> Option<i64>,
) -> Vec<(Receipt, u64)> {
    [Receipt::Read, Receipt::Delivered]
        .into_iter()
        .filter_map(|receipt| {
            let highest = wanted
                .iter()
                .filter(|(_, r)| *r == receipt)
                .filter_map(|(id, _)| seq_of(id))
                .max()?;
            Some((receipt, u64::try_from(highest).ok()?))
        })
        .collect()
}

/// The sequence number a messages page continues before (`lastEvaluatedKey`), chats and support.
pub fn seq_cursor(pager: &Pager, page: &PageQuery) -> Result<Option<i64>, ApiError> {
    match pager.after(page)? {
        None => Ok(None),
        Some(key) => key
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(json!({"lastEvaluatedKey": "is malformed"}))),
    }
}

/// `messagesMap: {id: {status: delivered|read}}` of a receipts frame (chats and support).
pub fn receipts(frame: &Value) -> Result<Vec<(String, Receipt)>, ApiError> {
    let Some(map) = frame.get("messagesMap").and_then(Value::as_object) else {
        return Err(ApiError::invalid(
            json!({"messagesMap": "is required: {messageId: {status: delivered|read}}"}),
        ));
    };
    if map.is_empty() || map.len() > MAX_RECEIPTS {
        return Err(ApiError::invalid(
            json!({"messagesMap": format!("must hold 1 to {MAX_RECEIPTS} messages")}),
        ));
    }
    let mut wanted: Vec<(String, Receipt)> = Vec::with_capacity(map.len());
    for (id, entry) in map {
        if id.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                json!({"messagesMap": "ids must not hold control characters"}),
            ));
        }
        let receipt = match entry.get("status").and_then(Value::as_str) {
            Some("delivered") => Receipt::Delivered,
            Some("read") => Receipt::Read,
            _ => {
                return Err(ApiError::invalid(
                    json!({format!("messagesMap.{id}.status"): "must be delivered or read"}),
                ))
            }
        };
        wanted.push((id.clone(), receipt));
    }
    Ok(wanted)
}

/// `chat.message.send`'s work after validation: a retry with the same `clientId` returns the
/// first message and stores nothing.
async fn store_message(
    state: &AppState,
    who: &Authenticated,
    chat_id: String,
    text: String,
    client_id: Option<String>,
    sender_name: Option<String>,
) -> Result<Value, ApiError> {
    if let Some(client_id) = &client_id {
        if let Some(first) =
            chats::message_by_client_id((&state.store.db).into(), &chat_id, &who.user_id, client_id)
                .await?
        {
            return Ok(json!({"chat": {"id": chat_id}, "message": first.to_json()}));
        }
    }
    ratelimit::check(&state.limits.messages_per_user, &who.user_id)?;
    let message_id = Uuid::new_v4().to_string();
    let command = PairCommand::SendMessage {
        message_id: message_id.clone(),
        sender: who.user_id.clone(),
        text,
        client_id: client_id.clone(),
        attachment: None,
        at: Utc::now(),
    };
    let events = execute_pair(state, &chat_id, command, who.metadata()).await?;
    // The answer is the message as the projector stored it, made from the event it stored
    // (the read models include it by now; reading it back would be one more query a message).
    let sent = events.into_iter().find_map(|event| match event {
        PairEvent::MessageSent {
            message_id,
            sender,
            text,
            client_id,
            attachment: None,
            seq,
            at,
        } => Some(MessageRow::sent_text(
            &chat_id,
            &message_id,
            i64::try_from(seq).unwrap_or(i64::MAX),
            &sender,
            sender_name.clone(),
            &text,
            client_id.as_deref(),
            at,
        )),
        _ => None,
    });
    let stored = match (sent, &client_id) {
        (Some(sent), _) => Some(sent),
        // A concurrent retry stored it first: answer with that one.
        (None, Some(client_id)) => {
            chats::message_by_client_id((&state.store.db).into(), &chat_id, &who.user_id, client_id)
                .await?
        }
        (None, None) => chats::message((&state.store.db).into(), &message_id).await?,
    };
    let message = stored.ok_or_else(|| ApiError::unavailable("the message is not readable yet"))?;
    Ok(json!({"chat": {"id": chat_id}, "message": message.to_json()}))
}

/// `chat.messages.get`: `({chat:{id}, messages}, pagination)`.
pub async fn get_messages(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<(Value, Value), ApiError> {
    let chat_id = required_text(frame, "chatId")?;
    let page = page_query(frame)?;
    let (messages, pagination) = messages_page(state, who, &chat_id, &page).await?;
    Ok((
        json!({"chat": {"id": chat_id}, "messages": messages}),
        pagination,
    ))
}

/// `chat.messages.update`: delivered/read receipts for messages the other member sent me.
/// Answers `{chat:{id}, messagesMap, viewer:{id, totalUnreadChats}}` with the statuses now
/// stored; ids that are not messages I received are left out.
pub async fn update_messages(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let chat_id = required_text(frame, "chatId")?;
    let wanted = receipts(frame)?;
    member_chat(state, &chat_id, &who.user_id).await?;
    let ids: Vec<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
    let seqs = chats::received_seqs((&state.store.db).into(), &chat_id, &who.user_id, &ids).await?;
    let seq_of = |id: &str| seqs.iter().find(|(i, _)| i == id).map(|(_, s)| *s);
    let now = Utc::now();
    for (receipt, upto) in receipt_marks(&wanted, seq_of) {
        let command = PairCommand::MarkMessages {
            member: who.user_id.clone(),
            receipt,
            upto,
            at: now,
        };
        execute_pair(state, &chat_id, command, who.metadata()).await?;
    }
    let received: Vec<String> = seqs.into_iter().map(|(id, _)| id).collect();
    let answer: Map<String, Value> =
        chats::messages_by_ids((&state.store.db).into(), &chat_id, &received)
            .await?
            .iter()
            .map(|m| (m.id.clone(), m.to_json()["delivery"].clone()))
            .collect();
    let unread = chats::total_unread_chats((&state.store.db).into(), &who.user_id).await?;
    Ok(json!({
        "chat": {"id": chat_id},
        "messagesMap": answer,
        "viewer": {"id": who.user_id, "totalUnreadChats": unread},
    }))
}

/// `pageSize` and `lastEvaluatedKey` of a WebSocket frame (numbers or strings).
pub fn page_query(frame: &Value) -> Result<PageQuery, ApiError> {
    let page_size = match frame.get("pageSize") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid(json!({"pageSize": "must be 1 to 100"}))),
    };
    let last_evaluated_key = match frame.get("lastEvaluatedKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                json!({"lastEvaluatedKey": "is not a key this list handed out"}),
            ))
        }
    };
    Ok(PageQuery {
        page_size,
        last_evaluated_key,
    })
}
