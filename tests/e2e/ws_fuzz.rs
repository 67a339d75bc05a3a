//! Issue 9, item 5 (WebSocket part): a seeded fuzzer sends thousands of random and mutated
//! frames over an authenticated and an unauthenticated socket: random text and bytes, valid
//! frames of every action with fields removed, wrong types, huge numbers, deep nesting, long
//! strings, odd unicode and nulls, unknown actions, duplicate ids, fragmented frames. Every
//! text or binary frame gets exactly one reply, in order, in the contract's envelope, never a
//! 5xx; the only closes are the documented ones (an oversized frame: 413 then 1009) and the
//! protocol's own (a text frame that is not UTF-8); the server stays up throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::{unique_email, Backend, Server, TestDb, Ws};

both_stores!(random_and_mutated_frames_get_enveloped_replies);

const AUTHENTICATED_FRAMES: usize = 2000;
const UNAUTHENTICATED_FRAMES: usize = 1200;
/// Frames sent before their replies are read (replies come back in order).
const BATCH: usize = 16;
/// Normal frames stay below the server's 64 KiB limit; oversized ones go well above it.
const MAX_NORMAL_BYTES: usize = 60 * 1024;
const OVERSIZED_BYTES: usize = 70 * 1024;

const ACTIONS: &[&str] = &[
    "authenticate",
    "ping",
    "user.me",
    "user.get",
    "user.update",
    "chat.message.send",
    "chat.messages.get",
    "chat.messages.update",
    "alerts.update",
    "support.message.send",
    "support.messages.get",
    "support.messages.update",
    "call.start",
    "call.accept",
    "call.reject",
    "call.end",
    "call.signal",
];

/// One thing sent to the server.
enum Shot {
    /// A text frame (valid UTF-8): exactly one reply, echoing what the server could parse.
    Text(String),
    /// A binary frame: one 400 reply.
    Binary(Vec<u8>),
    /// A text message in several fragments: one reply, like `Text`.
    Fragmented(String, usize),
    /// Over 64 KiB, in one frame or in fragments: refused (413), then closed (1009).
    Oversized(String, bool),
    /// A text frame whose bytes are not UTF-8: the protocol says close.
    NotUtf8(Vec<u8>),
}

/// Real ids for the templates.
struct Ids {
    token: String,
    other_user: String,
    chat: String,
    message: String,
    alert: String,
    ticket: String,
}

fn templates(ids: &Ids, authenticated: bool) -> Vec<Value> {
    // The unauthenticated socket only ever sees broken tokens, so it never authenticates.
    let token = if authenticated {
        ids.token.clone()
    } else {
        format!("{}xx", &ids.token[..ids.token.len() - 12])
    };
    vec![
        json!({"action": "authenticate", "token": token, "since": 0}),
        json!({"action": "authenticate", "token": "garbage"}),
        json!({"action": "ping"}),
        json!({"action": "user.me"}),
        json!({"action": "user.get", "userId": ids.other_user}),
        json!({"action": "user.update", "name": "Fuzzy Senior", "bio": "hello", "gender": "female",
               "language": "en", "visibility": "public", "dob": "1950-01-01",
               "timezone": "Europe/Berlin", "country": "DE", "state": "BE", "city": "Berlin",
               "interests": [{"name": "chess", "emoji": "♟"}], "maxCallDuration": 600,
               "maxCallCount": 3, "pushNotification": {"enabled": true},
               "paypalEmail": "fuzz@example.com", "metas": {"color": "blue",
               "secret": {"access": 3, "value": [1, 2]}}, "metaAction": 0}),
        json!({"action": "chat.message.send", "chatId": ids.chat,
               "message": {"text": "hello"}, "clientId": "client-1"}),
        json!({"action": "chat.messages.get", "chatId": ids.chat, "pageSize": 5,
               "lastEvaluatedKey": null}),
        json!({"action": "chat.messages.update", "chatId": ids.chat,
               "messagesMap": {&ids.message: {"status": "read"}}}),
        json!({"action": "alerts.update", "alertsMap": {&ids.alert: {"status": "read"}}}),
        json!({"action": "support.message.send", "ticketId": ids.ticket,
               "message": {"text": "help me"}}),
        json!({"action": "support.messages.get", "ticketId": ids.ticket, "pageSize": 3}),
        json!({"action": "support.messages.update", "ticketId": ids.ticket,
               "messagesMap": {&ids.message: {"status": "delivered"}}}),
        json!({"action": "call.start", "chatId": ids.chat, "type": "audio"}),
        json!({"action": "call.accept", "callId": uuid::Uuid::new_v4().to_string()}),
        json!({"action": "call.reject", "callId": ids.chat}),
        json!({"action": "call.end", "callId": uuid::Uuid::new_v4().to_string()}),
        json!({"action": "call.signal", "callId": uuid::Uuid::new_v4().to_string(),
               "signal": {"type": "offer", "sdp": "v=0", "candidate": null}}),
    ]
}

const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "NaN",
    "null",
    "true",
    "😀👍🏽👨‍👩‍👧",
    "\u{202e}evil\u{202c}",
    "\u{0}",
    "a\u{0}b",
    "\u{feff}bom",
    "𝕏𝔂𝔃",
    "\u{10ffff}",
    "\\",
    "\"",
    "\r\n\t",
    "<script>alert(1)</script>",
    "'; DROP TABLE events; --",
    "%s%n%x",
    "../../../etc/passwd",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "2026-02-30",
    "24:61",
    "9999-12-31T23:59:59Z",
    "unlimited",
    "read",
    "delivered",
];

fn random_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| match rng.gen_range(0..4) {
            0 => rng.gen_range(' '..='~'),
            1 => rng.gen_range('\u{0}'..='\u{1f}'),
            2 => rng.gen_range('\u{80}'..='\u{7ff}'),
            _ => char::from_u32(rng.gen_range(0x800..0x10ffff)).unwrap_or('\u{fffd}'),
        })
        .collect()
}

fn deep(rng: &mut StdRng, depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = if rng.gen_bool(0.5) {
            json!([value])
        } else {
            json!({ "a": value })
        };
    }
    value
}

/// A value of the wrong kind, size or content.
fn nasty(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..16) {
        0 => Value::Null,
        1 => json!(rng.gen_bool(0.5)),
        2 => json!([0, -1, i64::MAX, i64::MIN][rng.gen_range(0..4)]),
        3 => json!(u64::MAX),
        4 => json!([1e308, -1e308, 5e-324, 0.5, -0.0][rng.gen_range(0..5)]),
        5 => json!(ODD_STRINGS[rng.gen_range(0..ODD_STRINGS.len())]),
        6 => json!(random_string(rng, 64)),
        7 => {
            let c = ["x", "é", "漢", "😀"][rng.gen_range(0..4)];
            json!(c.repeat(rng.gen_range(1_000..12_000)))
        }
        8 if depth > 0 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| nasty(rng, depth - 1))
                .collect(),
        ),
        9 if depth > 0 => Value::Object(
            (0..rng.gen_range(0..5))
                .map(|_| (random_string(rng, 12), nasty(rng, depth - 1)))
                .collect(),
        ),
        10 => {
            let depth = rng.gen_range(1..160);
            deep(rng, depth)
        }
        11 => json!((0..rng.gen_range(100..3_000)).collect::<Vec<u32>>()),
        12 => json!(uuid::Uuid::new_v4().to_string()),
        13 => json!(ACTIONS[rng.gen_range(0..ACTIONS.len())]),
        _ => json!({}),
    }
}

fn pick_key(rng: &mut StdRng, map: &Map<String, Value>) -> Option<String> {
    let keys: Vec<&String> = map.keys().collect();
    (!keys.is_empty()).then(|| keys[rng.gen_range(0..keys.len())].clone())
}

/// Replaces one value somewhere inside `value` (objects and arrays, any depth) with a nasty one.
fn mutate_inside(rng: &mut StdRng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.gen_bool(0.7) => {
            if let Some(key) = pick_key(rng, map) {
                if let Some(inner) = map.get_mut(&key) {
                    mutate_inside(rng, inner);
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.gen_bool(0.7) => {
            let i = rng.gen_range(0..items.len());
            mutate_inside(rng, &mut items[i]);
        }
        _ => *value = nasty(rng, 2),
    }
}

/// A text that is not quite the valid frame `text`: cut, with characters dropped, swapped in
/// or inserted.
fn mangle(rng: &mut StdRng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.gen_range(1..=4) {
        if chars.is_empty() {
            break;
        }
        let i = rng.gen_range(0..chars.len());
        let odd = [
            '{', '}', '[', ']', '"', ':', ',', '\\', '0', 'e', '-', '\u{0}', 'é', '😀',
        ];
        match rng.gen_range(0..4) {
            0 => chars.truncate(i),
            1 => {
                chars.remove(i);
            }
            2 => chars[i] = odd[rng.gen_range(0..odd.len())],
            _ => chars.insert(i, odd[rng.gen_range(0..odd.len())]),
        }
    }
    chars.into_iter().collect()
}

/// Frames no serializer writes: huge literals, duplicate keys, lone surrogates, trailing
/// garbage.
fn raw_frame(rng: &mut StdRng, ids: &Ids) -> String {
    let chat = &ids.chat;
    let frames = [
        format!(r#"{{"action":"chat.messages.get","chatId":"{chat}","pageSize":1e400}}"#),
        format!(
            r#"{{"action":"chat.messages.get","chatId":"{chat}","pageSize":123456789012345678901234567890}}"#
        ),
        r#"{"action":"ping","action":"user.me","requestId":"dup-key"}"#.to_string(),
        r#"{"action":"ping","requestId":"\ud800"}"#.to_string(),
        r#"{"action":"ping","requestId":"\u0000"}"#.to_string(),
        r#"{"action":"ping"} {"action":"ping"}"#.to_string(),
        "\u{feff}{\"action\":\"ping\"}".to_string(),
        r#"{"action":"user.update","maxCallCount":-1}"#.to_string(),
        r#"{"action":"user.update","metaAction":256}"#.to_string(),
        r#"{"action":"user.update","maxCallCount":4294967296}"#.to_string(),
        format!(
            r#"{{"action":"chat.message.send","chatId":"{chat}","message":{{"text":"a\u0000b"}}}}"#
        ),
        r#"{"action":"authenticate","token":"","since":-1}"#.to_string(),
        r#"{"action":"authenticate","token":"a.b.c","since":9223372036854775808}"#.to_string(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        format!("{}1{}", r#"{"a":"#.repeat(130), "}".repeat(130)),
        "   ".to_string(),
        String::new(),
    ];
    frames[rng.gen_range(0..frames.len())].clone()
}

fn request_id(rng: &mut StdRng, n: usize) -> Value {
    match rng.gen_range(0..10) {
        // Duplicate ids: the same one over and over.
        0..=1 => json!("dup"),
        2 => json!(n),
        3 => nasty(rng, 1),
        _ => json!(format!("r{n}")),
    }
}

/// A text frame: a template, more often than not mutated.
fn text_shot(rng: &mut StdRng, templates: &[Value], ids: &Ids, n: usize) -> String {
    let mut frame = templates[rng.gen_range(0..templates.len())].clone();
    if rng.gen_bool(0.85) {
        frame["requestId"] = request_id(rng, n);
    }
    let Value::Object(map) = &mut frame else {
        unreachable!("templates are objects")
    };
    match rng.gen_range(0..12) {
        0 => {} // as it is
        1 => {
            for _ in 0..rng.gen_range(1..=2) {
                if let Some(key) = pick_key(rng, map) {
                    map.remove(&key);
                }
            }
        }
        2 => {
            if let Some(key) = pick_key(rng, map) {
                map.insert(key, nasty(rng, 2));
            }
        }
        3 => {
            let key = if rng.gen_bool(0.5) {
                random_string(rng, 16)
            } else {
                [
                    "chatId", "userId", "callId", "ticketId", "since", "token", "pageSize",
                ][rng.gen_range(0..7)]
                .to_string()
            };
            map.insert(key, nasty(rng, 2));
        }
        4 | 5 => mutate_inside(rng, &mut frame),
        6 => {
            let action = match rng.gen_range(0..5) {
                0 => json!(random_string(rng, 20)),
                1 => json!(format!("{}.x", ACTIONS[rng.gen_range(0..ACTIONS.len())])),
                2 => json!(ACTIONS[rng.gen_range(0..ACTIONS.len())].to_uppercase()),
                3 => json!("launch.rockets"),
                _ => nasty(rng, 1),
            };
            map.insert("action".into(), action);
        }
        7 | 8 => return mangle(rng, &frame.to_string()),
        9 => return raw_frame(rng, ids),
        10 => return random_string(rng, 300),
        _ => {
            return match rng.gen_range(0..6) {
                0 => nasty(rng, 3).to_string(),
                1 => json!([frame]).to_string(),
                2 => json!(frame.to_string()).to_string(),
                _ => {
                    let depth = rng.gen_range(1..200);
                    deep(rng, depth).to_string()
                }
            }
        }
    }
    frame.to_string()
}

fn next_shot(rng: &mut StdRng, templates: &[Value], ids: &Ids, n: usize) -> Shot {
    let mut text = text_shot(rng, templates, ids, n);
    while text.len() > MAX_NORMAL_BYTES {
        text = text_shot(rng, templates, ids, n);
    }
    match rng.gen_range(0..40) {
        0 => {
            let len = rng.gen_range(0..512);
            Shot::Binary((0..len).map(|_| rng.gen()).collect())
        }
        1 => Shot::Binary(text.into_bytes()),
        2..=3 => Shot::Fragmented(text, rng.gen_range(2..5)),
        _ => Shot::Text(text),
    }
}

/// What the server sent back.
#[derive(Debug)]
enum Got {
    Json(Value),
    Closed(Option<u16>),
}

async fn next_frame(ws: &mut Ws) -> Got {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), ws.stream.next())
            .await
            .expect("the server answers within 15 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("a reply that is not JSON ({e}): {text}"));
                assert!(value.is_object(), "a reply that is not an object: {value}");
                return Got::Json(value);
            }
            Some(Ok(Message::Close(frame))) => {
                return Got::Closed(frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(Message::Binary(bytes))) => panic!("the server sent binary: {bytes:?}"),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Got::Closed(None),
        }
    }
}

/// `(action, requestId)` the reply to `text` must echo: what the server can parse of it.
fn echo_of(text: &str) -> (Value, Value) {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => (
            map.get("action").cloned().unwrap_or(Value::Null),
            map.get("requestId").cloned().unwrap_or(Value::Null),
        ),
        _ => (Value::Null, Value::Null),
    }
}

#[derive(Default)]
struct Tally {
    frames: usize,
    replies: BTreeMap<u64, usize>,
    pushes: usize,
    closes: Vec<String>,
}

/// Checks a reply's envelope and its echo; returns its status code.
fn check_reply(reply: &Value, echo: &(Value, Value), sent: &str) -> u64 {
    let shown: String = sent.chars().take(300).collect();
    let context = || format!("reply {reply} to {shown}");
    let status = reply["statusCode"]
        .as_u64()
        .unwrap_or_else(|| panic!("no statusCode: {}", context()));
    assert!(status < 500, "a server error: {}", context());
    assert!(reply["message"].is_string(), "no message: {}", context());
    assert!(reply.get("action").is_some(), "no action: {}", context());
    assert!(
        reply.get("requestId").is_some(),
        "no requestId: {}",
        context()
    );
    assert_eq!(reply["action"], echo.0, "action echo: {}", context());
    assert_eq!(reply["requestId"], echo.1, "requestId echo: {}", context());
    match reply["success"].as_bool() {
        Some(true) => {
            assert_eq!(status, 200, "{}", context());
            assert!(reply.get("data").is_some(), "no data: {}", context());
        }
        Some(false) => {
            assert!(status >= 400, "{}", context());
            assert!(
                reply["error"].as_str().is_some_and(|e| !e.is_empty()),
                "no error code: {}",
                context()
            );
            assert!(
                reply["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{}",
                context()
            );
        }
        None => panic!("no success: {}", context()),
    }
    status
}

fn check_push(push: &Value) {
    assert!(push["action"].is_string(), "{push}");
    assert!(push["position"].is_i64(), "{push}");
    assert!(push.get("data").is_some(), "{push}");
    assert!(push.get("success").is_none(), "{push}");
}

/// The next reply, checking (and counting) the pushes before it.
async fn next_reply(ws: &mut Ws, tally: &mut Tally, sent: &str) -> Value {
    loop {
        match next_frame(ws).await {
            Got::Json(value) if value.get("position").is_some() => {
                check_push(&value);
                tally.pushes += 1;
            }
            Got::Json(value) => return value,
            Got::Closed(code) => panic!(
                "closed ({code:?}) instead of answering {}",
                sent.chars().take(300).collect::<String>()
            ),
        }
    }
}

/// Sends `message`; a write the server cut short is not an error (it may have closed).
async fn send(ws: &mut Ws, message: Message) -> bool {
    ws.stream.send(message).await.is_ok()
}

fn fragments(text: &[u8], parts: usize) -> Vec<Frame> {
    let size = text.len().div_ceil(parts).max(1);
    let chunks: Vec<&[u8]> = if text.is_empty() {
        vec![&[][..]]
    } else {
        text.chunks(size).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            Frame::message(chunk.to_vec(), opcode, i == last)
        })
        .collect()
}

async fn send_fragments(ws: &mut Ws, text: &str, parts: usize) -> bool {
    for frame in fragments(text.as_bytes(), parts) {
        if !send(ws, Message::Frame(frame)).await {
            return false;
        }
    }
    true
}

async fn send_shot(ws: &mut Ws, shot: &Shot) -> bool {
    match shot {
        Shot::Text(text) | Shot::Oversized(text, false) => {
            send(ws, Message::text(text.clone())).await
        }
        Shot::Binary(bytes) => send(ws, Message::binary(bytes.clone())).await,
        Shot::Fragmented(text, parts) => send_fragments(ws, text, *parts).await,
        Shot::Oversized(text, true) => send_fragments(ws, text, 3).await,
        Shot::NotUtf8(bytes) => {
            let frame = Frame::message(bytes.clone(), OpCode::Data(Data::Text), true);
            send(ws, Message::Frame(frame)).await
        }
    }
}

/// A frame that ends the socket: the close must be the documented one. Returns the close.
async fn closing_shot(ws: &mut Ws, shot: &Shot) -> String {
    send_shot(ws, shot).await;
    let oversized = matches!(shot, Shot::Oversized(..));
    let mut refused = false;
    loop {
        match next_frame(ws).await {
            Got::Json(value) if value.get("position").is_some() => check_push(&value),
            Got::Json(value) => {
                // Replies to earlier frames are all read; only the refusal may come now.
                assert!(oversized, "a reply to a non-UTF-8 frame: {value}");
                assert_eq!(value["statusCode"], json!(413), "{value}");
                assert_eq!(value["error"], json!("payload_too_large"), "{value}");
                assert_eq!(value["success"], json!(false), "{value}");
                assert!(value["message"].is_string(), "{value}");
                refused = true;
            }
            Got::Closed(code) => {
                if oversized {
                    let fragmented = matches!(shot, Shot::Oversized(_, true));
                    assert!(
                        refused,
                        "an oversized frame (fragmented: {fragmented}) is refused with 413 \
                         before the close ({code:?})"
                    );
                    assert_eq!(code, Some(1009), "fragmented: {fragmented}");
                } else {
                    // RFC 6455 8.1: invalid UTF-8 in a text frame fails the connection.
                    assert!(
                        matches!(code, Some(1002) | Some(1007) | None),
                        "close {code:?}"
                    );
                }
                return format!("{code:?}");
            }
        }
    }
}

/// One socket's share of the run.
async fn fuzz_socket(
    server: &Server,
    ids: &Ids,
    authenticated: bool,
    frames: usize,
    seed: u64,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let templates = templates(ids, authenticated);
    let connect = || async {
        if authenticated {
            server.ws_authenticated(&ids.token, None).await.0
        } else {
            server.ws().await
        }
    };
    let mut ws = connect().await;
    let mut tally = Tally::default();
    while tally.frames < frames {
        // Now and then a frame that ends the socket; then a new one.
        if rng.gen_ratio(1, 10) {
            let shot = if rng.gen_bool(0.6) {
                let pad = "x".repeat(OVERSIZED_BYTES + rng.gen_range(0..32_000));
                let text = json!({"action": "ping", "requestId": "big", "pad": pad}).to_string();
                Shot::Oversized(text, rng.gen_bool(0.5))
            } else {
                let mut bytes = br#"{"action":"ping","requestId":""#.to_vec();
                bytes.extend([0xff, 0xfe, 0xc0, 0x80]);
                bytes.extend(b"\"}");
                Shot::NotUtf8(bytes)
            };
            tally.closes.push(closing_shot(&mut ws, &shot).await);
            tally.frames += 1;
            ws = connect().await;
            continue;
        }
        let batch: Vec<Shot> = (0..BATCH)
            .map(|i| next_shot(&mut rng, &templates, ids, tally.frames + i))
            .collect();
        for shot in &batch {
            assert!(send_shot(&mut ws, shot).await, "the socket stays open");
        }
        for shot in &batch {
            let (sent, echo) = match shot {
                Shot::Text(text) | Shot::Fragmented(text, _) => (text.clone(), echo_of(text)),
                Shot::Binary(bytes) => (
                    format!("<{} binary bytes>", bytes.len()),
                    (Value::Null, Value::Null),
                ),
                Shot::Oversized(..) | Shot::NotUtf8(_) => unreachable!("sent alone"),
            };
            let reply = next_reply(&mut ws, &mut tally, &sent).await;
            let status = check_reply(&reply, &echo, &sent);
            if let Shot::Binary(_) = shot {
                assert_eq!(status, 400, "{reply}");
            }
            if !authenticated && !matches!(status, 200 | 400 | 401 | 404) {
                panic!("an unauthenticated socket got {status}: {reply} to {sent}");
            }
            if !authenticated && status == 200 {
                assert_eq!(reply["action"], json!("ping"), "only ping works: {reply}");
            }
            *tally.replies.entry(status).or_default() += 1;
        }
        tally.frames += BATCH;
    }
    // The socket is still in order after all of it.
    let reply = ws
        .request(json!({"action": "ping", "requestId": "last"}))
        .await;
    assert_eq!(reply["data"]["pong"], json!(true), "{reply}");
    tally
}

async fn random_and_mutated_frames_get_enveloped_replies(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // Limits that would only refuse the fuzzer's pace are lifted, so frames reach the actions.
    let server = Server::start_with(
        &db,
        &[
            ("TALKAMIE_WS_FRAMES_PER_SECOND", "100000"),
            ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000"),
            ("TALKAMIE_WS_AUTH_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    let (senior_id, senior_token, _) = server
        .sign_up(&unique_email("fuzz"), "password-1", "senior")
        .await;
    let (volunteer_id, volunteer_token, _) = server
        .sign_up(&unique_email("fuzz"), "password-1", "volunteer")
        .await;
    let chat = server
        .connect(
            &(senior_id.clone(), senior_token.clone()),
            &(volunteer_id.clone(), volunteer_token.clone()),
        )
        .await;
    let (mut volunteer_ws, _) = server.ws_authenticated(&volunteer_token, None).await;
    let reply = volunteer_ws
        .request(json!({"action": "chat.message.send", "chatId": chat,
                        "message": {"text": "hi from the volunteer"}}))
        .await;
    let message = reply["data"]["message"]["id"]
        .as_str()
        .expect("message id")
        .to_string();
    let (_, body) = server.get("/v1/alerts", Some(&senior_token)).await;
    let alert = body["data"][0]["id"]
        .as_str()
        .expect("an alert")
        .to_string();
    let (status, body) = server
        .get("/v1/support/open/ticket", Some(&senior_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["data"]["id"].as_str().expect("ticket").to_string();
    let ids = Ids {
        token: senior_token.clone(),
        other_user: volunteer_id,
        chat,
        message,
        alert,
        ticket,
    };

    let started = Instant::now();
    let (authed, unauthed) = tokio::join!(
        fuzz_socket(&server, &ids, true, AUTHENTICATED_FRAMES, 0x9_5_1),
        fuzz_socket(&server, &ids, false, UNAUTHENTICATED_FRAMES, 0x9_5_2),
    );
    for (name, tally) in [("authenticated", &authed), ("unauthenticated", &unauthed)] {
        eprintln!(
            "ws fuzz {backend:?} {name}: {} frames, replies by status {:?}, {} pushes, \
             closes {:?}, {:?} in all",
            tally.frames,
            tally.replies,
            tally.pushes,
            tally.closes,
            started.elapsed()
        );
    }
    assert!(authed.frames >= AUTHENTICATED_FRAMES);
    assert!(unauthed.frames >= UNAUTHENTICATED_FRAMES);
    assert!(
        authed.replies.get(&200).is_some_and(|n| *n > 50),
        "the authenticated socket reached the actions: {:?}",
        authed.replies
    );

    // Still up and still itself.
    let (status, body) = server.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get("/v1/auth", Some(&senior_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (mut ws, _) = server.ws_authenticated(&volunteer_token, None).await;
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    // A graceful exit: the process never crashed.
    server.stop().await;
}
