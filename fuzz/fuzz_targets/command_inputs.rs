//! Arbitrary bytes as the fields of a command: JSON (when the bytes are JSON) or a frame built
//! around the raw text, through the server's own validators of `chat.message.send` and
//! `chat.messages.update` (`message_text`, `client_id`, `receipts`, `required_text`), paging
//! (`page_query`, `Pager`, `seq_cursor`, `time_id_keyset`) and the REST field checks
//! (`Problems`, `is_plausible_email`, `like_pattern`). None may panic; what they accept must
//! hold what they promise; what they refuse must be a 400 `invalid_input` envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use talkamie::http::catalogs::like_pattern;
use talkamie::http::chats::{
    client_id, message_text, page_query, receipt_marks, receipts, seq_cursor, MAX_CLIENT_ID_CHARS,
    MAX_RECEIPTS,
};
use talkamie::http::envelope::ApiError;
use talkamie::http::pagination::{time_id_keyset, PageQuery, Pager, MAX_PAGE_SIZE};
use talkamie::http::profile::ProfileBody;
use talkamie::http::validate::{is_plausible_email, required_text, Problems};
use talkamie_aggregates::pair::{Receipt, MAX_TEXT_CHARS};

fn refused(error: ApiError) {
    let body = error.body();
    assert_eq!(body["success"], Value::Bool(false));
    assert_eq!(body["statusCode"], json!(400), "{body}");
    assert_eq!(body["error"], json!("invalid_input"), "{body}");
    serde_json::from_str::<Value>(&body.to_string()).expect("an error body is JSON");
}

fn text_of(frame: &Value, field: &str) -> Option<String> {
    frame.get(field).and_then(Value::as_str).map(str::to_string)
}

fn chat_validators(frame: &Value) {
    match required_text(frame, "chatId") {
        Ok(id) => assert!(!id.is_empty() && !id.contains('\0')),
        Err(e) => refused(e),
    }
    match message_text(frame) {
        Ok(text) => {
            assert!(!text.trim().is_empty());
            assert!(text.chars().count() <= MAX_TEXT_CHARS);
            assert!(!text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')));
        }
        Err(e) => refused(e),
    }
    match client_id(frame) {
        Ok(Some(id)) => {
            let n = id.chars().count();
            assert!((1..=MAX_CLIENT_ID_CHARS).contains(&n));
            assert!(!id.chars().any(char::is_control));
        }
        Ok(None) => assert!(matches!(frame.get("clientId"), None | Some(Value::Null))),
        Err(e) => refused(e),
    }
    match receipts(frame) {
        Ok(wanted) => {
            assert!((1..=MAX_RECEIPTS).contains(&wanted.len()));
            assert!(wanted
                .iter()
                .all(|(id, _)| !id.chars().any(char::is_control)));
            // Any sequence numbers, negative ones included: a watermark is the highest known
            // one of its receipt kind, and never negative.
            let seq_of = |id: &str| match id.len() % 4 {
                0 => None,
                _ => Some(id.len() as i64 - 3),
            };
            let marks = receipt_marks(&wanted, seq_of);
            assert!(marks.len() <= 2);
            for (receipt, upto) in marks {
                let highest = wanted
                    .iter()
                    .filter(|(_, r)| *r == receipt)
                    .filter_map(|(id, _)| seq_of(id))
                    .max()
                    .expect("a mark comes from a known message");
                assert_eq!(i64::try_from(upto).ok(), Some(highest));
                assert!(matches!(receipt, Receipt::Read | Receipt::Delivered));
            }
        }
        Err(e) => refused(e),
    }
}

fn paging(frame: &Value) {
    let page = match page_query(frame) {
        Ok(page) => page,
        Err(e) => return refused(e),
    };
    let filters = frame.to_string();
    let pager = match Pager::new(b"fuzz-key", "messages", &filters, &page) {
        Ok(pager) => pager,
        Err(e) => return refused(e),
    };
    assert!((1..=MAX_PAGE_SIZE).contains(&pager.page_size));
    match seq_cursor(&pager, &page) {
        Ok(_) => {}
        Err(e) => refused(e),
    }
    // A cursor this pager hands out comes back as the same sequence number.
    let seq = filters.len() as i64 * 7919 - 1000;
    let pagination = pager.pagination(Some(&json!(seq)), true, 0);
    let again = PageQuery {
        page_size: page.page_size.clone(),
        last_evaluated_key: pagination["lastEvaluatedKey"].as_str().map(str::to_string),
    };
    assert_eq!(seq_cursor(&pager, &again).ok(), Some(Some(seq)));
    if let Err(e) = time_id_keyset(Some(frame.clone())) {
        refused(e);
    }
    // The REST form of the same parameters (query strings deserialised by serde).
    let _ = serde_json::from_value::<PageQuery>(frame.clone());
}

fn rest_checks(frame: &Value) {
    let mut problems = Problems::default();
    let email = problems.email("email", &text_of(frame, "email"));
    if is_plausible_email(&email) {
        assert!(email.contains('@') && email.len() <= 254);
    }
    problems.otp_code("code", &text_of(frame, "code"));
    if let Some(name) = text_of(frame, "name") {
        problems.check_length("name", &name, 1, 60);
    }
    if let Err(e) = problems.finish() {
        refused(e);
    }
    let pattern = like_pattern(text_of(frame, "keyword").as_deref());
    assert!(pattern.starts_with('%') && pattern.ends_with('%'));
    // `user.update` frames and PATCH bodies are read by serde into this body.
    let _ = serde_json::from_value::<ProfileBody>(frame.clone());
}

fuzz_target!(|data: &[u8]| {
    let frame = match serde_json::from_slice::<Value>(data) {
        Ok(value) => value,
        // Not JSON: the raw text in every field the validators read.
        Err(_) => {
            let text = String::from_utf8_lossy(data).into_owned();
            json!({
                "chatId": text,
                "message": {"text": text},
                "clientId": text,
                "messagesMap": {text.clone(): {"status": "read"}, "m1": {"status": "delivered"}},
                "pageSize": text,
                "lastEvaluatedKey": text,
                "email": text,
                "code": text,
                "name": text,
                "keyword": text,
            })
        }
    };
    chat_validators(&frame);
    paging(&frame);
    rest_checks(&frame);
});
