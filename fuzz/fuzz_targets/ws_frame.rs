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

/// Equal, except that floats may differ in their last bits: serde_json (without its
/// `float_roundtrip` feature, as the server builds it) parses some long decimals one ulp off,
/// here when reading the reply back and in the server when reading the frame, so a numeric
/// `requestId` of more than 15 significant digits may come back one ulp off.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
            }
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
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
