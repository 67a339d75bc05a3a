//! Arbitrary bytes as an incoming WebSocket text frame, through the server's own parser
//! (`talkamie::ws::frames::parse`). It must never panic; a refused frame must answer with the
//! error envelope echoing `action` and `requestId`, an accepted one must be a JSON object with
//! a string `action` and no NUL anywhere.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use talkamie::ws::frames::{self, FrameId, Reply};

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Equal. The server parses with serde_json's `float_roundtrip`, so even a numeric
/// `requestId` of more than 15 significant digits must come back exactly (it once came back one
/// ulp off: `fuzz/corpus/ws_frame/float_request_id.json`).
fn same(a: &Value, b: &Value) -> bool {
    a == b
}

fn check_error_envelope(id: &FrameId, text: &str) {
    let body: Value = serde_json::from_str(text).expect("an error frame is JSON");
    assert_eq!(body["success"], Value::Bool(false), "{text}");
    let status = body["statusCode"].as_u64().expect("statusCode is a number");
    assert!((400..600).contains(&status), "{text}");
    assert!(body["message"].is_string(), "{text}");
    assert!(body["error"].is_string(), "{text}");
    assert!(same(&body["action"], &id.action), "{text}");
    assert!(same(&body["requestId"], &id.request_id), "{text}");
}

fuzz_target!(|data: &[u8]| {
    // actix-ws hands over text frames as UTF-8 only; invalid bytes become U+FFFD here so the
    // input is not wasted.
    let text = String::from_utf8_lossy(data);
    match frames::parse(&text) {
        Ok(incoming) => {
            let Value::Object(map) = &incoming.frame else {
                panic!("accepted a frame that is no object: {text}");
            };
            assert_eq!(
                map.get("action").and_then(Value::as_str),
                Some(incoming.action.as_str())
            );
            assert_eq!(incoming.id.action, map["action"]);
            assert_eq!(
                incoming.id.request_id,
                map.get("requestId").cloned().unwrap_or(Value::Null)
            );
            assert!(!holds_nul(&incoming.frame), "accepted a NUL: {text}");
            // The success reply around any data must be JSON echoing the id.
            let reply = frames::reply(&incoming.id, Reply::from(incoming.frame.clone()));
            let reply: Value = serde_json::from_str(&reply).expect("a reply is JSON");
            assert_eq!(reply["success"], Value::Bool(true));
            assert!(same(&reply["action"], &incoming.id.action));
            assert!(same(&reply["requestId"], &incoming.id.request_id));
        }
        Err(refused) => {
            let (id, error) = *refused;
            check_error_envelope(&id, &frames::error(&id, &error));
        }
    }
});
