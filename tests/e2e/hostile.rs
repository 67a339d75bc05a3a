//! Hostile input (issue 9 item 5, schemathesis): the NUL character (U+0000) in the path is a
//! 404 envelope (it names nothing), in the query or anywhere in a JSON body a 400, on both
//! stores. PostgreSQL text cannot hold it: before the central guard these were 500s there (and a
//! stored one could stop the projector).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(nul_characters_are_refused_everywhere);

const PASSWORD: &str = "hostile-password-1";

async fn nul_characters_are_refused_everywhere(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (me, token, _) = server
        .sign_up(&unique_email("hostile"), PASSWORD, "senior")
        .await;
    let token = token.as_str();
    // A raw body (the escapes written by hand, exactly as a client could send them).
    let raw = |method: reqwest::Method, path: &str, body: &'static str| {
        server
            .http
            .request(method, format!("{}{path}", server.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
    };
    let answer = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        (status, body)
    };
    let refused = |status: StatusCode, body: &Value, field: &str| {
        assert_error(status, body, 400, "invalid_input");
        assert!(body["details"][field].is_string(), "{body}");
    };

    // Path (no id holds a NUL: not found, whatever the route) and query.
    for path in [
        "/v1/user/no%00such".to_string(),
        "/v1/chat/%00".to_string(),
        format!("/v1/user/{me}%00"),
        "/v1/no%00such/route".to_string(),
    ] {
        let (status, body) = server.get(&path, Some(token)).await;
        assert_error(status, &body, 404, "not_found");
        assert!(body["details"]["path"].is_string(), "{body}");
    }
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{me}%00"),
            Some(token),
            Some(json!({"bio": "hi"})),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.get("/v1/users?keyword=a%00b", Some(token)).await;
    refused(status, &body, "query");
    let (status, body) = server.get("/v1/interests?keyword=%00", None).await;
    refused(status, &body, "query");

    // JSON bodies: fields without a length check (interest names, meta keys), nested values,
    // a public route, and a body sent without a Content-Type.
    let put_me = format!("/v1/user/{me}");
    for body in [
        json!({"interests": [{"name": "tea\u{0}time", "emoji": "🍵"}]}),
        json!({"metas": {"key\u{0}": "value"}}),
        json!({"metas": {"key": "val\u{0}ue"}}),
        json!({"bio": "\u{0}"}),
    ] {
        let (status, answer) = server.call("PUT", &put_me, Some(token), Some(body)).await;
        refused(status, &answer, "body");
    }
    let (status, body) = server
        .post(
            "/v1/auth/sign-up",
            None,
            json!({"email": unique_email("nul"), "password": PASSWORD, "name": "A\u{0}", "type": "senior"}),
        )
        .await;
    refused(status, &body, "body");
    let r = server
        .http
        .post(format!("{}/v1/auth/sign-in", server.base))
        .body(r#"{"email":"a\u0000@example.com","password":"whatever-1"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    refused(status, &body, "body");

    // A chunked body (no Content-Length) is read the same way.
    let chunks: Vec<Result<&'static str, std::io::Error>> =
        vec![Ok(r#"{"metas":{"k":"#), Ok(r#""\u0000"}}"#)];
    let r = server
        .http
        .put(format!("{}{put_me}", server.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    refused(status, &body, "body");

    // A chunked body over the limit is still 413, and an escaped backslash before `u0000` is
    // text, not a NUL: accepted and stored as written.
    let big = format!(r#"{{"bio":"{}"}}"#, "x".repeat(300 * 1024));
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(16 * 1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).expect("ASCII")))
        .collect();
    let r = server
        .http
        .put(format!("{}{put_me}", server.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_error(status, &body, 413, "payload_too_large");
    let r = raw(reqwest::Method::PUT, &put_me, r#"{"bio":"a\\u0000"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["bio"], json!("a\\u0000"), "{body}");

    // Nothing was stored, and the server (its projector included) carries on.
    let (status, body) = server
        .call(
            "PUT",
            &put_me,
            Some(token),
            Some(json!({"metas": {"key": "value"}, "interests": [{"name": "Tea time", "emoji": "🍵"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get(&put_me, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!holds_nul(&body), "{body}");
    assert_eq!(body["data"]["metas"]["key"], json!("value"), "{body}");
    let (status, body) = server.get("/v1/interests", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!holds_nul(&body), "{body}");
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The guard never reads a WebSocket upgrade's stream as a body.
    let (_ws, reply) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server.ws_authenticated(token, None),
    )
    .await
    .expect("the socket authenticates");
    assert_eq!(reply["success"], json!(true), "{reply}");
}

/// Whether any key or string in `value` holds a NUL.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}
