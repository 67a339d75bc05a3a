//! Section 1: every malformed input gets the right 4xx in the error envelope.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(malformed_requests_get_enveloped_4xx);

async fn malformed_requests_get_enveloped_4xx(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let raw = |method: reqwest::Method, path: &str| {
        server
            .http
            .request(method, format!("{}{path}", server.base))
    };
    let envelope = |response: reqwest::Response| async move {
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        (status, body)
    };

    // Invalid JSON.
    let r = raw(reqwest::Method::POST, "/v1/auth/sign-up")
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(r).await;
    assert_error(status, &body, 400, "invalid_input");

    // Missing fields, listed one by one.
    let (status, body) = server.post("/v1/auth/sign-up", None, json!({})).await;
    assert_error(status, &body, 400, "invalid_input");
    for field in ["email", "password", "name", "type"] {
        assert_eq!(body["details"][field], json!("is required"), "{body}");
    }

    // Wrong types.
    let (status, body) = server
        .post(
            "/v1/auth/sign-up",
            None,
            json!({"email": 5, "password": [1], "name": {}, "type": true}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .post("/v1/auth/sign-up", None, json!({"email": unique_email("t"), "password": "password-1", "name": "T", "type": "admin"}))
        .await;
    assert_error(status, &body, 400, "invalid_input");
    assert!(body["details"]["type"].is_string());
    let (status, body) = server.post("/v1/auth/sign-up", None, json!([1, 2])).await;
    assert_error(status, &body, 400, "invalid_input");

    // Unknown route and wrong method.
    let (status, body) = server.get("/v1/no-such-thing", None).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.get("/v1/auth/sign-up", None).await;
    assert_error(status, &body, 405, "method_not_allowed");
    let (status, body) = server
        .call("DELETE", "/v1/user/abc/password", None, None)
        .await;
    assert_error(status, &body, 405, "method_not_allowed");

    // Oversized body.
    let big = json!({"email": "a@b.co", "password": "x".repeat(300 * 1024)});
    let (status, body) = server.post("/v1/auth/sign-in", None, big).await;
    assert_error(status, &body, 413, "payload_too_large");

    // Authentication: none, garbage, wrong key, alg none.
    let (status, body) = server.get("/v1/auth", None).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server.get("/v1/auth", Some("not-a-jwt")).await;
    assert_error(status, &body, 401, "unauthenticated");
    let forged = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims =
            b64.encode(br#"{"sub":"u","sid":"s","typ":"access","iat":1,"exp":4102444800}"#);
        format!("{header}.{claims}.")
    };
    let (status, body) = server.get("/v1/auth", Some(&forged)).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server
        .post("/v1/auth/refresh", None, json!({"refresh": "nope"}))
        .await;
    assert_error(status, &body, 401, "unauthenticated");

    // OTP input.
    let (status, body) = server
        .post(
            "/v1/otp",
            None,
            json!({"email": "a@b.co", "purpose": "launch"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .post(
            "/v1/otp/verify",
            None,
            json!({"email": "a@b.co", "code": "12ab", "purpose": "verify-email"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");

    // Profile fields and the timezone header.
    let (user_id, access, _) = server
        .sign_up(&unique_email("p"), "password-1", "senior")
        .await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{user_id}"),
            Some(&access),
            Some(json!({"gender": "robot", "name": ""})),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    assert!(
        body["details"]["gender"].is_string() && body["details"]["name"].is_string(),
        "{body}"
    );
    let r = raw(reqwest::Method::GET, "/v1/auth")
        .bearer_auth(&access)
        .header("x-user-timezone-offset", "lunch")
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(r).await;
    assert_error(status, &body, 400, "invalid_input");
    let r = raw(reqwest::Method::GET, "/v1/auth")
        .bearer_auth(&access)
        .header("x-user-timezone-offset", "300")
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["user"]["timezoneOffset"], json!(300));

    // Health, readiness, docs.
    assert_eq!(server.get("/healthz", None).await.0, StatusCode::OK);
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, api) = server.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        api["paths"]["/v1/auth/sign-up"]["post"].is_object(),
        "{api}"
    );
    let docs = raw(reqwest::Method::GET, "/docs").send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
}
