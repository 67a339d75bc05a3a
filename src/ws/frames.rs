//! Frame shapes: replies echo `action` and `requestId` around the REST envelope; pushes carry
//! their feed `position`.

use serde_json::{json, Value};
use talkamie_projections::feed::{FeedRow, RawFeedRow};

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

/// A push as it goes out: its feed position, its action and the whole frame's text, made
/// once and sent as is to every socket of its user.
#[derive(Debug)]
pub struct PushFrame {
    pub position: i64,
    pub action: String,
    pub text: String,
}

impl PushFrame {
    /// `{"action", "data", "position"}` around a payload kept as JSON text (no parse, no
    /// print: the tailer's way, once per row).
    pub fn from_raw(row: &RawFeedRow) -> PushFrame {
        let action = Value::String(row.action.clone());
        PushFrame {
            position: row.position,
            action: row.action.clone(),
            text: format!(
                r#"{{"action":{action},"data":{},"position":{}}}"#,
                row.payload.get(),
                row.position
            ),
        }
    }

    pub fn from_row(row: &FeedRow) -> PushFrame {
        PushFrame {
            position: row.position,
            action: row.action.clone(),
            text: render(&row.action, &row.payload, row.position),
        }
    }

    /// The payload, parsed (for the few pushes a socket must look into).
    pub fn data(&self) -> Value {
        serde_json::from_str::<Value>(&self.text)
            .map(|mut frame| frame["data"].take())
            .unwrap_or(Value::Null)
    }

    /// The same push with another payload (file URLs signed for this socket).
    pub fn with_data(&self, data: &Value) -> String {
        render(&self.action, data, self.position)
    }
}

fn render(action: &str, data: &Value, position: i64) -> String {
    json!({ "action": action, "data": data, "position": position }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spliced_push_reads_as_a_rendered_one() {
        let payload = json!({"chat": {"id": "c\"1"}, "message": {"text": "hé\n\u{2028}"}});
        let raw = RawFeedRow {
            position: 42,
            user_id: "u".into(),
            action: "chat.message.new".into(),
            // As PostgreSQL prints jsonb: its own spacing and key order.
            payload: serde_json::value::RawValue::from_string(
                r#"{"chat": {"id": "c\"1"}, "message": {"text": "hé\n\u2028"}}"#.into(),
            )
            .expect("raw json"),
        };
        let row = FeedRow {
            position: 42,
            user_id: "u".into(),
            action: "chat.message.new".into(),
            payload: payload.clone(),
            created_at: chrono::Utc::now(),
        };
        let spliced = PushFrame::from_raw(&raw);
        let rendered = PushFrame::from_row(&row);
        let parsed = |f: &PushFrame| serde_json::from_str::<Value>(&f.text).expect("valid JSON");
        assert_eq!(parsed(&spliced), parsed(&rendered));
        assert_eq!(spliced.data(), payload);
        assert_eq!(parsed(&spliced)["position"], json!(42));
        let signed = spliced.with_data(&json!({"x": 1}));
        assert_eq!(
            serde_json::from_str::<Value>(&signed).expect("valid JSON")["data"],
            json!({"x": 1})
        );
    }
}
