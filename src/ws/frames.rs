//! Frame shapes: replies echo `action` and `requestId` around the REST envelope; pushes carry
//! their feed `position`.

use serde_json::{json, Value};
use talkamie_projections::feed::FeedRow;

use crate::http::envelope::ApiError;

/// The `action` and `requestId` of a client frame, echoed in its reply.
#[derive(Debug, Clone, Default)]
pub struct FrameId {
    pub action: Value,
    pub request_id: Value,
}

/// What an action answers: its data and, for lists, the page's `pagination`.
#[derive(Debug)]
pub struct Reply {
    pub data: Value,
    pub pagination: Option<Value>,
}

impl From<Value> for Reply {
    fn from(data: Value) -> Self {
        Reply {
            data,
            pagination: None,
        }
    }
}

/// A client text frame that passed the checks every action shares.
#[derive(Debug)]
pub struct Incoming {
    /// Echoed in the reply.
    pub id: FrameId,
    /// `action`, a string.
    pub action: String,
    /// The whole frame (a JSON object), for the action to read its fields from.
    pub frame: Value,
}

/// Parses an incoming text frame: a JSON object with a string `action` and no NUL anywhere.
/// `Err` holds the id to echo (default when the frame is no object) and the error to answer
/// with through [`error`] (boxed: it is large, and rare). Pure, so `fuzz/` drives it with
/// arbitrary bytes.
pub fn parse(text: &str) -> Result<Incoming, Box<(FrameId, ApiError)>> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            let error = ApiError::bad_request("a frame is a JSON object with an action");
            return Err(Box::new((FrameId::default(), error)));
        }
        Err(e) => {
            let error = ApiError::invalid(json!({ "frame": e.to_string() }));
            return Err(Box::new((FrameId::default(), error)));
        }
    };
    let id = FrameId {
        action: frame.get("action").cloned().unwrap_or(Value::Null),
        request_id: frame.get("requestId").cloned().unwrap_or(Value::Null),
    };
    let Some(action) = frame
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        let error = ApiError::invalid(json!({ "action": "is required (a string)" }));
        return Err(Box::new((id, error)));
    };
    // PostgreSQL text cannot hold U+0000: a NUL that reached a lookup or an event was a
    // 500, and one in a sealed field (`user.update` with `name: "a\u0000b"`) stopped the
    // projector for good (every later command answered 503). No field of any action
    // takes it, so it is refused here, for every action at once.
    if holds_nul(&frame) {
        let error = ApiError::invalid(
            json!({ "frame": "text must not contain the NUL character (U+0000)" }),
        );
        return Err(Box::new((id, error)));
    }
    Ok(Incoming { id, action, frame })
}

/// Whether any string or key anywhere in `value` holds a NUL character.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

pub fn reply(id: &FrameId, reply: Reply) -> String {
    let mut frame = json!({
        "action": id.action,
        "requestId": id.request_id,
        "success": true,
        "statusCode": 200,
        "message": "OK",
        "data": reply.data,
    });
    if let Some(pagination) = reply.pagination {
        frame["pagination"] = pagination;
    }
    frame.to_string()
}

pub fn error(id: &FrameId, error: &ApiError) -> String {
    let mut body = error.body();
    body["action"] = id.action.clone();
    body["requestId"] = id.request_id.clone();
    body.to_string()
}

pub fn push(row: &FeedRow) -> String {
    json!({ "action": row.action, "data": row.payload, "position": row.position }).to_string()
}
