//! The contract's chat shapes (`basic_chat`, `full_chat`), rendered for one member from the
//! chats read model, for answers and for pushes alike.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::chats::{self, ChatView, MessageRow};
use crate::db::Source;
use crate::profiles::Reader;
use crate::relations::{self, iso, Relation};
use crate::users::{self, UserRecord};

/// Whether `user_id` has an open socket on any live instance (the presence table).
pub async fn online(source: Source<'_>, user_id: &str) -> Result<bool, sqlx::Error> {
    let ids = [user_id.to_string()];
    Ok(!crate::presence::online_among(source, &ids)
        .await?
        .is_empty())
}

/// `basic_chat`: `{id, type, user, timestamp, lastMessage, totalUnreadMessages, request?}`, as
/// the member `view.user_id` sees it. `online` says whether the other member is online.
pub async fn basic_chat(
    source: Source<'_>,
    view: &ChatView,
    online: bool,
) -> Result<Value, sqlx::Error> {
    basic_chat_knowing(source, view, online, None).await
}

/// `basic_chat`, given a message already read (the chat's last one is not read again).
pub async fn basic_chat_knowing(
    mut source: Source<'_>,
    view: &ChatView,
    online: bool,
    known: Option<&MessageRow>,
) -> Result<Value, sqlx::Error> {
    let other = users::find(source.reborrow(), &view.other_id).await?;
    let relations = relations::relations(
        source.reborrow(),
        &view.user_id,
        std::slice::from_ref(&view.other_id),
    )
    .await?;
    let last_message = match (&view.last_message_id, known) {
        (Some(id), Some(message)) if *id == message.id => Some(message.to_json()),
        (Some(id), _) => chats::message(source.reborrow(), id)
            .await?
            .map(|m| m.to_json()),
        (None, _) => None,
    };
    Ok(render_basic_chat(
        view,
        other.as_ref(),
        relations,
        online,
        last_message,
    ))
}

/// `basic_chat` from what it is made of: the member's view, the other member's row (`None`
/// once gone), the member's relation to them, whether they are online, the last message.
pub fn render_basic_chat(
    view: &ChatView,
    other: Option<&UserRecord>,
    relations: HashMap<String, Relation>,
    online: bool,
    last_message: Option<Value>,
) -> Value {
    let reader = Reader::user(&view.user_id, false).with_relations(relations);
    let user = match other {
        Some(other) => other.basic(&reader, online),
        None => json!({ "id": view.other_id }),
    };
    let mut chat = json!({
        "id": view.id,
        "type": view.chat_type,
        "user": user,
        "timestamp": iso(view.last_activity_at),
        "lastMessage": last_message,
        "totalUnreadMessages": view.unread_count,
        "open": view.is_open,
    });
    let request = view.request_json();
    if !request.is_null() {
        chat["request"] = request;
    }
    chat
}

/// `full_chat`: `basic_chat` plus `members`, `connectRequest` (the pair's latest),
/// `totalMessages` and `createdAt`.
pub async fn full_chat(
    mut source: Source<'_>,
    view: &ChatView,
    online: bool,
) -> Result<Value, sqlx::Error> {
    let mut chat = basic_chat(source.reborrow(), view, online).await?;
    let request = chats::latest_connect_request(source.reborrow(), &view.id).await?;
    chat["members"] = json!([{ "id": view.user_id }, { "id": view.other_id }]);
    chat["connectRequest"] = request.map(|r| r.to_json()).unwrap_or(Value::Null);
    chat["totalMessages"] = json!(view.total_messages);
    chat["createdAt"] = json!(iso(view.created_at));
    Ok(chat)
}
