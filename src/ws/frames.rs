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
