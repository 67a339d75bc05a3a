//! One guard for every request: the NUL character (U+0000) is refused in the path, the query
//! and JSON bodies, before any handler runs. A path with a NUL names nothing (no id can hold
//! one): 404 `not_found`, as for any unknown id. A query or body with one: 400 `invalid_input`.
//!
//! Why: PostgreSQL `text` (and `json`) cannot hold U+0000. A NUL that reached a query or an
//! insert failed there with a 500 (`GET /v1/user/no%00such`, a `keyword`, an interest name or a
//! meta key with `\u0000`), or, stored sealed, stopped the projector. Refusing it once, here,
//! covers every route and field, present and future, and answers the same on SQLite.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::HttpMessage;
use futures_util::StreamExt;
use serde_json::json;

use super::envelope::ApiError;
use super::JSON_LIMIT_BYTES;

const NUL_PROBLEM: &str = "must not contain the NUL character (U+0000)";

/// Middleware (`middleware::from_fn`): 404 for a NUL in the path, 400 in the query or a JSON
/// body.
pub async fn refuse_nul(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // The raw request line cannot carry a NUL byte; it arrives percent-encoded.
    let refused = if req.uri().path().contains("%00") {
        Some(ApiError {
            details: Some(json!({ "path": NUL_PROBLEM })),
            ..ApiError::not_found("resource")
        })
    } else if req.query_string().contains("%00") {
        Some(ApiError::invalid(json!({ "query": NUL_PROBLEM })))
    } else if body_is_json(&req) && json_has_nul(&mut req).await {
        Some(ApiError::invalid(json!({ "body": NUL_PROBLEM })))
    } else {
        None
    };
    if let Some(refused) = refused {
        return Ok(req.error_response(refused));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Bodies parsed as JSON: `application/json`, `*+json`, or no Content-Type at all (the JSON
/// extractor does not require one), on the methods that take a body. File uploads carry bytes,
/// not JSON, and a WebSocket upgrade's "body" is the socket itself: both are left alone.
fn body_is_json(req: &ServiceRequest) -> bool {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) || req.head().upgrade()
        || req.path().starts_with("/v1/files/")
    {
        return false;
    }
    match req.headers().get(CONTENT_TYPE) {
        None => true,
        Some(value) => value
            .to_str()
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false),
    }
}

/// Reads the body (up to the JSON limit), puts it back for the handler unchanged, and says
/// whether it holds a NUL. A body over the limit is handed on unread: the JSON extractor
/// answers it with 413.
async fn json_has_nul(req: &mut ServiceRequest) -> bool {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared == Some(0) || declared.is_some_and(|n| n > JSON_LIMIT_BYTES) {
        return false;
    }
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > JSON_LIMIT_BYTES {
                    let head = futures_util::stream::once(async move { Ok(body.freeze()) });
                    req.set_payload(Payload::Stream {
                        payload: Box::pin(head.chain(payload)),
                    });
                    return false;
                }
            }
            Err(error) => {
                // Hand the failure on to the extractor, which answers it as it always did.
                let parts: [Result<Bytes, _>; 2] = [Ok(body.freeze()), Err(error)];
                req.set_payload(Payload::Stream {
                    payload: Box::pin(futures_util::stream::iter(parts)),
                });
                return false;
            }
        }
    }
    let body = body.freeze();
    let nul = has_nul(&body);
    req.set_payload(Payload::from(body));
    nul
}

/// A raw NUL byte, or a `\u0000` escape (an escaped backslash followed by `u0000` is text).
fn has_nul(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0 => return true,
            b'\\' => {
                if body[i + 1..].starts_with(b"u0000") {
                    return true;
                }
                // Skip the escaped character, so `\\` never starts another escape.
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_nul;

    #[test]
    fn finds_nul_escapes_only() {
        assert!(has_nul(br#"{"name":"a\u0000b"}"#));
        assert!(has_nul(br#"{"metas":{"k\u0000":"v"}}"#));
        assert!(has_nul(br#"{"a":"\\\u0000"}"#));
        assert!(has_nul(b"{\"a\":\"\0\"}"));
        assert!(!has_nul(br#"{"a":"\\u0000"}"#));
        assert!(!has_nul(br#"{"a":"\u0001 \n \\"}"#));
        assert!(!has_nul(br#"{"a":"trailing\"#));
        assert!(!has_nul(b""));
    }
}
