//! Issue 9 item 7: limits. What other files already cover is not repeated here: oversized JSON
//! bodies, garbage and `alg: none` tokens (errors.rs), oversized and flooding frames, the 10 s
//! unauthenticated and silent sockets (ws.rs), sign-in and OTP limits per email (auth.rs),
//! upload limits (files.rs), the 4001-character chat message, the 1001-character bio and the
//! chat quota over two sockets (chats.rs, profiles.rs), a deleted user's own token (profiles.rs).
//!
//! This file adds: forged, expired, re-signed and wrong-algorithm tokens, and tokens of
//! signed-out sessions and deleted users, over REST, the WebSocket `authenticate` action and
//! the upgrade's `?token=`; the per-IP limits of sign-in and OTP (another address unaffected);
//! the per-sender message quota leaving other senders alone; text limits counted in characters
//! (chat, support, name, bio); and the HTTP connection timeouts (slow request heads, silent
//! connections, idle keep-alive connections) while the server keeps answering: a later request
//! head, or a request body, sent too slowly on a kept-alive connection is closed too, while a
//! slow but moving body, a quiet WebSocket and a slow handler are left alone.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::{account, assert_error, unique_email, Backend, Server, TestDb};

both_stores!(
    forged_expired_and_stale_tokens_are_refused,
    per_ip_limits_of_sign_in_and_otp,
    the_message_quota_is_per_sender,
    text_limits_count_characters,
    later_heads_and_bodies_sent_slowly_are_closed
);

const SECRET: &str = "limits-test-secret-0123456789abcdef";

/// The claims of a token the server signed (its payload, unverified).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("sign")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `claims` valid for another 10 minutes.
fn fresh(claims: &Value) -> Value {
    let mut claims = claims.clone();
    claims["iat"] = json!(now());
    claims["exp"] = json!(now() + 600);
    claims
}

/// The token is refused with 401 `unauthenticated` over REST, in the WebSocket `authenticate`
/// action, and in the upgrade's `?token=`.
async fn assert_refused(server: &Server, what: &str, token: &str) {
    let (status, body) = server.get("/v1/auth", Some(token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "REST, {what}: {body}");
    assert_error(status, &body, 401, "unauthenticated");

    let mut ws = server.ws().await;
    let reply = ws
        .request(json!({"action": "authenticate", "token": token, "requestId": what}))
        .await;
    assert_eq!(reply["success"], json!(false), "WS, {what}: {reply}");
    assert_eq!(reply["statusCode"], json!(401), "WS, {what}: {reply}");
    assert_eq!(
        reply["error"],
        json!("unauthenticated"),
        "WS, {what}: {reply}"
    );
    // The socket is still unauthenticated: other actions are refused.
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["statusCode"], json!(401), "WS after {what}: {reply}");

    let url = format!("{}?token={token}", server.ws_url);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401, "upgrade, {what}");
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .expect("JSON error body");
            assert_eq!(body["error"], json!("unauthenticated"), "upgrade, {what}");
        }
        Err(other) => panic!("upgrade, {what}: {other}"),
        Ok(_) => panic!("upgrade, {what}: the socket was opened"),
    }
}

/// The token works over REST and WebSocket (the forging itself is right).
async fn assert_accepted(server: &Server, what: &str, token: &str) {
    let (status, body) = server.get("/v1/auth", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "REST, {what}: {body}");
    let mut ws = tokio::time::timeout(Duration::from_secs(10), server.ws())
        .await
        .expect("WebSocket connected within 10 s");
    let reply = ws
        .request(json!({"action": "authenticate", "token": token}))
        .await;
    assert_eq!(reply["statusCode"], json!(200), "WS, {what}: {reply}");
}

async fn forged_expired_and_stale_tokens_are_refused(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(&db, &[("TALKAMIE_JWT_SECRET", SECRET)]).await;
    let email = unique_email("jwt");
    let (user_id, access, refresh) = server.sign_up(&email, "password-1", "senior").await;
    let real = claims_of(&access);
    assert_eq!(real["sub"], json!(user_id));

    // Re-signed with the server's key and algorithm, the claims work: so every refusal below
    // is about the one thing changed.
    let resigned = sign(Algorithm::HS256, SECRET.as_bytes(), &fresh(&real));
    assert_accepted(&server, "re-signed", &resigned).await;

    // Expired (well past the 5 s leeway), otherwise the real claims.
    let mut expired = real.clone();
    expired["iat"] = json!(now() - 1000);
    expired["exp"] = json!(now() - 60);
    let token = sign(Algorithm::HS256, SECRET.as_bytes(), &expired);
    assert_refused(&server, "expired", &token).await;

    // No expiry at all.
    let mut endless = fresh(&real);
    endless.as_object_mut().expect("claims").remove("exp");
    let token = sign(Algorithm::HS256, SECRET.as_bytes(), &endless);
    assert_refused(&server, "no exp", &token).await;

    // HS256 with another key.
    let token = sign(Algorithm::HS256, b"not-the-server-secret", &fresh(&real));
    assert_refused(&server, "wrong key", &token).await;

    // The right key under another algorithm: the server pins HS256.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, SECRET.as_bytes(), &fresh(&real));
        assert_refused(&server, &format!("{alg:?}"), &token).await;
    }

    // `alg: none` (and `None`, and HS256 claimed with the signature left off), real claims.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(fresh(&real).to_string());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"alg":"HS256","typ":"JWT"}"#,
    ] {
        let token = format!("{}.{payload}.", b64.encode(header));
        assert_refused(&server, header, &token).await;
    }

    // A refresh token is not an access token, even re-signed with a fresh expiry.
    assert_refused(&server, "refresh token", &refresh).await;
    let token = sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &fresh(&claims_of(&refresh)),
    );
    assert_refused(&server, "re-signed refresh token", &token).await;

    // Someone else's id on my session.
    let (other_id, other_access, _) = server
        .sign_up(&unique_email("other"), "password-1", "senior")
        .await;
    let mut swapped = fresh(&real);
    swapped["sub"] = json!(other_id);
    let token = sign(Algorithm::HS256, SECRET.as_bytes(), &swapped);
    assert_refused(&server, "another sub", &token).await;

    // A signed-out session: its own token, and one forged for it with a fresh expiry.
    let (status, body) = server.sign_in(&email, "password-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, second, _) = account(&body);
    assert_accepted(&server, "second session", &second).await;
    let (status, body) = server
        .call("DELETE", "/v1/auth/sign-out", Some(&second), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(&server, "signed out", &second).await;
    let token = sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &fresh(&claims_of(&second)),
    );
    assert_refused(&server, "re-signed signed out", &token).await;
    // The first session is untouched.
    assert_accepted(&server, "first session", &access).await;

    // A deleted user: the token they had, and one forged for them with a fresh expiry.
    let other_claims = claims_of(&other_access);
    let (status, body) = server
        .call(
            "DELETE",
            &format!("/v1/user/{other_id}"),
            Some(&other_access),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(&server, "deleted user", &other_access).await;
    let token = sign(Algorithm::HS256, SECRET.as_bytes(), &fresh(&other_claims));
    assert_refused(&server, "re-signed deleted user", &token).await;
}

/// A client whose connections come from `ip` (any 127.x.y.z reaches the loopback listener).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let response = client
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.json().await.expect("JSON body");
    (status, retry_after, body)
}

async fn per_ip_limits_of_sign_in_and_otp(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 0, 2));

    // OTP: 30 at once per IP, over requests and verifications, each for another email (so the
    // per-email limit never applies).
    let mut accepted = 0;
    let limited = loop {
        assert!(accepted <= 34, "the OTP limit per IP never came");
        let email = unique_email("ip");
        let (status, retry_after, body) = if accepted % 2 == 0 {
            post(
                &here,
                &server,
                "/v1/otp",
                json!({"email": email, "purpose": "verify-email"}),
            )
            .await
        } else {
            post(
                &here,
                &server,
                "/v1/otp/verify",
                json!({"email": email, "code": "123456", "purpose": "verify-email"}),
            )
            .await
        };
        match status {
            200 | 422 => accepted += 1,
            429 => break (retry_after, body),
            other => panic!("OTP: unexpected {other}: {body}"),
        }
    };
    // 30, plus at most a few refilled (one per 6 s) on a slow machine.
    assert!((30..=33).contains(&accepted), "accepted {accepted}");
    let (retry_after, body) = limited;
    assert_error(StatusCode::TOO_MANY_REQUESTS, &body, 429, "rate_limited");
    let retry_after = retry_after.expect("Retry-After on 429");
    assert!((1..=7).contains(&retry_after), "Retry-After {retry_after}");
    // Another address is not affected, and neither is sign-in from this one.
    let (status, _, body) = post(
        &elsewhere,
        &server,
        "/v1/otp",
        json!({"email": unique_email("ip"), "purpose": "verify-email"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Sign-in: 50 at once per IP (each for another email, so the per-email limit of 10 never
    // applies). Four at a time: each wrong sign-in hashes a password.
    let attempts = futures_util::stream::iter(0..56)
        .map(|_| {
            let here = here.clone();
            let server = &server;
            async move {
                let body = json!({"email": unique_email("ip"), "password": "guess-guess"});
                post(&here, server, "/v1/auth/sign-in", body).await
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut refused = 0;
    let mut limited = Vec::new();
    for (status, retry_after, body) in attempts {
        match status {
            401 => refused += 1,
            429 => {
                assert_error(StatusCode::TOO_MANY_REQUESTS, &body, 429, "rate_limited");
                limited.push(retry_after.expect("Retry-After on 429"));
            }
            other => panic!("sign-in: unexpected {other}: {body}"),
        }
    }
    // 50, plus at most a few refilled (one per 3 s) while the hashes ran.
    assert!(
        (50..=55).contains(&refused),
        "wrong passwords answered: {refused}"
    );
    assert!(!limited.is_empty());
    assert!(limited.iter().all(|s| (1..=4).contains(s)), "{limited:?}");
    // The right password from another address signs in; from this one it waits too.
    let email = unique_email("ip-ok");
    server.sign_up(&email, "password-1", "senior").await;
    let right = json!({"email": email, "password": "password-1"});
    let (status, _, body) = post(&here, &server, "/v1/auth/sign-in", right.clone()).await;
    assert_error(
        StatusCode::from_u16(status).expect("status"),
        &body,
        429,
        "rate_limited",
    );
    let (status, _, body) = post(&elsewhere, &server, "/v1/auth/sign-in", right).await;
    assert_eq!(status, 200, "{body}");
}

async fn the_message_quota_is_per_sender(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // 1 a minute: the burst of 30, then nothing for the rest of the test.
    let server = Server::start_with(&db, &[("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "1")]).await;
    let senior = crate::ledger::user(&server, "senior").await;
    let volunteer = crate::ledger::user(&server, "volunteer").await;
    let chat = server.connect(&senior, &volunteer).await;
    let (mut s_ws, _) = server.ws_authenticated(&senior.1, None).await;
    let (mut v_ws, _) = server.ws_authenticated(&volunteer.1, None).await;
    let send = |chat: &str, text: String, client_id: String| {
        json!({"action": "chat.message.send", "chatId": chat, "message": {"text": text},
               "clientId": client_id})
    };

    for i in 0..30 {
        let reply = s_ws
            .request(send(&chat, format!("hello {i}"), format!("c-{i}")))
            .await;
        assert_eq!(reply["statusCode"], json!(200), "message {i}: {reply}");
        // Stay well under the per-socket frame limit (20/s): this is about the sender's quota.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let reply = s_ws
        .request(send(&chat, "one too many".into(), "c-30".into()))
        .await;
    assert_eq!(reply["success"], json!(false), "{reply}");
    assert_eq!(reply["statusCode"], json!(429), "{reply}");
    assert_eq!(reply["error"], json!("rate_limited"), "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    // A retry of a stored message is answered (it stores nothing, so it costs nothing).
    let reply = s_ws
        .request(send(&chat, "hello 3".into(), "c-3".into()))
        .await;
    assert_eq!(reply["statusCode"], json!(200), "{reply}");
    // A new socket of the same sender is limited too.
    let (mut s_ws2, _) = server.ws_authenticated(&senior.1, None).await;
    let reply = s_ws2
        .request(send(&chat, "other socket".into(), "c-31".into()))
        .await;
    assert_eq!(reply["statusCode"], json!(429), "{reply}");

    // The other member of the same chat is not affected.
    for i in 0..5 {
        let reply = v_ws
            .request(send(&chat, format!("reply {i}"), format!("v-{i}")))
            .await;
        assert_eq!(reply["statusCode"], json!(200), "reply {i}: {reply}");
    }
    let (_, body) = server
        .get(&format!("/v1/chat/{chat}/messages"), Some(&volunteer.1))
        .await;
    assert_eq!(body["pagination"]["totalItems"], json!(35), "{body}");
}

async fn text_limits_count_characters(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let senior = crate::ledger::user(&server, "senior").await;
    let volunteer = crate::ledger::user(&server, "volunteer").await;
    let chat = server.connect(&senior, &volunteer).await;
    let (mut ws, _) = server.ws_authenticated(&senior.1, None).await;

    // Chat messages: 4000 characters, however many bytes (4 per emoji here: 16,000 bytes).
    let reply = ws
        .request(json!({"action": "chat.message.send", "chatId": chat,
                        "message": {"text": "😀".repeat(4000)}}))
        .await;
    assert_eq!(reply["statusCode"], json!(200), "{reply}");
    assert_eq!(
        reply["data"]["message"]["text"]
            .as_str()
            .map(|t| t.chars().count()),
        Some(4000)
    );
    let reply = ws
        .request(json!({"action": "chat.message.send", "chatId": chat,
                        "message": {"text": "é".repeat(4001)}}))
        .await;
    assert_eq!(reply["statusCode"], json!(400), "{reply}");
    assert_eq!(reply["error"], json!("invalid_input"));
    assert!(reply["details"]["message.text"].is_string(), "{reply}");

    // Support messages: the same limit.
    let (status, body) = server.get("/v1/support/open/ticket", Some(&senior.1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["data"]["id"].as_str().expect("ticket id").to_string();
    let reply = ws
        .request(json!({"action": "support.message.send", "ticketId": ticket,
                        "message": {"text": "ü".repeat(4000)}}))
        .await;
    assert_eq!(reply["statusCode"], json!(200), "{reply}");
    let reply = ws
        .request(json!({"action": "support.message.send", "ticketId": ticket,
                        "message": {"text": "x".repeat(4001)}}))
        .await;
    assert_eq!(reply["statusCode"], json!(400), "{reply}");
    assert_eq!(reply["error"], json!("invalid_input"));
    assert!(reply["details"].is_object(), "{reply}");

    // Names 1-100 characters (sign-up and profile), bios up to 1000.
    let (status, body) = server
        .post(
            "/v1/auth/sign-up",
            None,
            json!({"email": unique_email("long"), "password": "password-1",
                   "name": "n".repeat(101), "type": "senior"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    assert!(body["details"]["name"].is_string(), "{body}");
    let path = format!("/v1/user/{}", senior.0);
    let (status, body) = server
        .call(
            "PUT",
            &path,
            Some(&senior.1),
            Some(json!({"name": "ñ".repeat(100), "bio": "ß".repeat(1000)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], json!("ñ".repeat(100)));
    for (field, long) in [("name", "ñ".repeat(101)), ("bio", "ß".repeat(1001))] {
        let (status, body) = server
            .call("PUT", &path, Some(&senior.1), Some(json!({ field: long })))
            .await;
        assert_error(status, &body, 400, "invalid_input");
        assert!(body["details"][field].is_string(), "{body}");
    }
}

// The HTTP connection timeouts belong to the server, not the store: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_idle_connections_are_closed() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let server = Server::start(&db).await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // An idle keep-alive connection: one request answered, then silence until the server's
    // 75 s keep-alive closes it. Runs while the rest of the test goes on.
    let idle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.expect("connect");
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("write");
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.expect("read");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
            let answered = Instant::now();
            let rest = read_until_closed(&mut conn, Duration::from_secs(100)).await;
            assert!(rest.is_empty(), "nothing more is sent: {rest:?}");
            answered.elapsed()
        })
    };

    // Slow request heads (one byte a second, never finished) and silent connections, 20 of
    // each: each gets a 408 and is closed within the 5 s request-head timeout (+1 s to close).
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ".to_vec();
    let mut slow = Vec::new();
    for i in 0..40 {
        let addr = addr.clone();
        let head = head.clone();
        slow.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut conn = TcpStream::connect(&addr).await.expect("connect");
            let (mut reader, mut writer) = conn.split();
            let dribble = async {
                if i % 2 == 1 {
                    return std::future::pending::<()>().await;
                }
                for byte in head.iter().cycle() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await
            };
            let mut answer = Vec::new();
            let read = async {
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    }
                }
            };
            tokio::select! {
                _ = dribble => {}
                _ = tokio::time::timeout(Duration::from_secs(20), read) => {}
            }
            (opened.elapsed(), answer)
        }));
    }
    // Meanwhile the server answers as usual.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, _) = server.get("/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(asked.elapsed() < Duration::from_secs(2));
        let (status, body) = server
            .post("/v1/auth/sign-in", None, json!({"email": "a@b.co"}))
            .await;
        assert_error(status, &body, 400, "invalid_input");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (i, task) in slow.into_iter().enumerate() {
        let (took, answer) = task.await.expect("slow client");
        let kind = if i % 2 == 0 { "slow head" } else { "silent" };
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(9),
            "{kind} connection closed after {took:?}"
        );
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{kind}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Still answering after all that.
    assert_eq!(server.get("/healthz", None).await.0, StatusCode::OK);

    let idle_for = idle.await.expect("idle client");
    assert!(
        idle_for >= Duration::from_secs(70) && idle_for < Duration::from_secs(85),
        "idle keep-alive connection closed after {idle_for:?}"
    );
}

/// Reads until the peer closes (or `limit` passes: a failure); returns what was read.
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("the connection stayed open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The HTTP layer releases an idle connection's buffers (vendor/actix-http/PATCH.md) and gets
/// new ones when the client speaks again. One kept-alive connection, idle between requests:
/// a request far larger than the 8 KiB read buffer (a sign-in padded with 40 KiB of JSON
/// whitespace, refused for its credentials), a response far larger than the write buffer
/// (`/openapi.json`, compared with the same document fetched on a fresh connection), and two
/// pipelined requests in one write, each answered in full and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_get_fresh_buffers_for_large_requests_and_responses() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let server = Server::start(&db).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let spec = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .expect("openapi")
        .text()
        .await
        .expect("openapi text");
    assert!(
        spec.len() > 32 * 1024,
        "the document is {} bytes",
        spec.len()
    );

    let mut conn = TcpStream::connect(&addr).await.expect("connect");
    let idle = || tokio::time::sleep(Duration::from_millis(200));
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    idle().await;
    let body = format!(
        "{{{}\"email\": \"nobody@example.com\", \"password\": \"wrong-password\"}}",
        " ".repeat(40 * 1024)
    );
    let head = format!(
        "POST /v1/auth/sign-in HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("write");
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.contains("\"success\":false"), "{answer}");

    idle().await;
    conn.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{}", &answer[..200]);
    let (_, document) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert_eq!(document, spec, "the large response arrived whole");

    idle().await;
    conn.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .expect("write");
    let first = read_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let (_, rest) = first.split_once("\r\n\r\n").expect("head");
    // The second answer may have arrived with the first.
    let second = match rest.find("HTTP/1.1 ") {
        Some(at) => rest[at..].to_string(),
        None => read_response(&mut conn).await,
    };
    assert!(second.starts_with("HTTP/1.1 404 "), "{second}");
}

/// The server's bounds in the test below: a head must end within `HEAD` s of its first byte, a
/// body may pause at most `BODY_GAP` s at a time, and in all `BODY_GAP` s plus 1 s per
/// `BODY_MIN_RATE` bytes received (production: 10 s, 30 s, 500 bytes).
const HEAD: u64 = 4;
const BODY_GAP: u64 = 3;
const BODY_MIN_RATE: u64 = 4;

/// Every request head and body of a kept-alive connection is bounded, not only the first head
/// (actix's own timer): on connections that first had a request answered, a second head sent a
/// byte a second is closed `HEAD` s after its first byte, and a body that stalls is closed
/// `BODY_GAP` s after its last byte, and a body trickled a byte a second (each pause within the
/// gap, but below the rate floor) once its credit is spent, all without an answer. A body sent
/// slowly but steadily over the floor (longer in all than any bound; with `Content-Length` or
/// chunked) is answered and the
/// connection stays usable; a WebSocket quiet for longer than both bounds (pings further apart
/// than the body gap) stays open and answers; a handler that takes longer than the body gap
/// (blocked on the store's write lock) answers. Meanwhile the server answers other clients, and
/// `/metrics` counts exactly the three closed connections.
async fn later_heads_and_bodies_sent_slowly_are_closed(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(
        &db,
        &[
            ("TALKAMIE_REQUEST_HEAD_TIMEOUT_SECS", &HEAD.to_string()),
            ("TALKAMIE_REQUEST_BODY_GAP_SECS", &BODY_GAP.to_string()),
            ("TALKAMIE_REQUEST_BODY_MIN_RATE", &BODY_MIN_RATE.to_string()),
        ],
    )
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let (user_id, token) = crate::ledger::user(&server, "senior").await;
    let (mut ws, _) = server.ws_authenticated(&token, None).await;
    let started = Instant::now();

    // (a) A second request head, one byte a second, never finished.
    let slow_head = tokio::spawn(kept_alive(addr.clone()).then_trickle_a_head());
    // (b) A POST whose body stalls after 10 of its 60 bytes.
    let stalled_body = tokio::spawn(kept_alive(addr.clone()).then_stall_a_body());
    // (b') A POST body sent a byte a second.
    let trickled_body = tokio::spawn(kept_alive(addr.clone()).then_trickle_a_body());
    // (c) Bodies sent 4 bytes every 0.6 s for ~8 s: answered, and the connection goes on.
    let steady = tokio::spawn(kept_alive(addr.clone()).then_send_a_body_slowly(false));
    let steady_chunked = tokio::spawn(kept_alive(addr.clone()).then_send_a_body_slowly(true));

    // A handler slower than the body gap: the store's write lock is held for 5 s, so updating
    // a profile waits for it (its body was sent whole at once).
    let slow_handler = {
        let http = server.http.clone();
        let url = format!("{}/v1/user/{user_id}", server.base);
        let token = token.clone();
        let store = db.connect().await;
        tokio::spawn(async move {
            let mut lock = store.begin_write().await.expect("write transaction");
            talkamie_projections::with_tx!(&mut lock, conn => {
                if store.is_postgres() {
                    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
                        .execute(conn)
                        .await
                        .expect("lock events");
                }
            });
            let asked = Instant::now();
            let update = http
                .put(url)
                .bearer_auth(token)
                .json(&json!({"bio": "patient"}))
                .send();
            let release = async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                lock.commit().await.expect("release the lock");
            };
            let (response, ()) = tokio::join!(update, release);
            let response = response.expect("the update is answered");
            (response.status(), asked.elapsed())
        })
    };

    // (d) The WebSocket: pings 5 s apart (further than the body gap and the head bound, well
    // within its own 60 s silence timeout), ~10 s in all, then a request.
    // Meanwhile the server answers other clients as usual.
    for _ in 0..2 {
        let ping = Message::Ping(b"still here".to_vec().into());
        assert!(ws.send_raw(ping).await);
        let wait = Duration::from_secs(5);
        let ((), answered) = tokio::join!(stays_open(&mut ws, wait), healthz_for(&server, wait));
        assert!(
            answered >= 5,
            "{answered} health checks answered in {wait:?}"
        );
    }
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["statusCode"], json!(200), "{reply}");
    assert_eq!(reply["data"]["id"], json!(user_id), "{reply}");

    let (took, answer) = slow_head.await.expect("slow head");
    assert!(
        answer.is_empty(),
        "slow head: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_closed_after("slow head", took, Duration::from_secs(HEAD));

    let (took, answer) = stalled_body.await.expect("stalled body");
    assert!(
        answer.is_empty(),
        "stalled body: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_closed_after("stalled body", took, Duration::from_secs(BODY_GAP));

    let (took, answer) = trickled_body.await.expect("trickled body");
    assert!(
        answer.is_empty(),
        "trickled body: {}",
        String::from_utf8_lossy(&answer)
    );
    // Bytes at 1, 2, 3 s: by 3 s the server waited 3 s of its 3 + 3/4 s credit, and the
    // fourth byte is due only at 4 s.
    let credit = Duration::from_millis(BODY_GAP * 1000 + 3 * 1000 / BODY_MIN_RATE);
    assert_closed_after("trickled body", took, credit);

    for (kind, task) in [("steady", steady), ("steady chunked", steady_chunked)] {
        let (sent_for, answer, next) = task.await.expect(kind);
        assert!(
            sent_for > Duration::from_secs(HEAD + BODY_GAP),
            "{kind}: {sent_for:?}"
        );
        // An unknown email: 401, so the whole body arrived and was read.
        assert!(answer.starts_with("HTTP/1.1 401 "), "{kind}: {answer}");
        assert!(answer.contains("\"unauthenticated\""), "{kind}: {answer}");
        assert!(
            next.starts_with("HTTP/1.1 200 "),
            "{kind}, next request: {next}"
        );
    }

    let (status, took) = slow_handler.await.expect("slow handler");
    assert_eq!(status, StatusCode::OK);
    assert!(
        took >= Duration::from_secs(BODY_GAP + 1),
        "the handler waited for the lock: {took:?}"
    );
    let (_, me) = server.get("/v1/auth", Some(&token)).await;
    assert_eq!(me["data"]["user"]["bio"], json!("patient"), "{me}");

    // Exactly the three slow connections were closed by the rules.
    let metrics = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for (rule, closed) in [("head", 1), ("body", 2)] {
        let line = format!("http_slow_clients_closed_total{{rule=\"{rule}\"}} {closed}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(40));
}

/// Panics unless the connection was closed `bound` (-0.5 s, +3 s) after the clock started.
fn assert_closed_after(what: &str, took: Duration, bound: Duration) {
    assert!(
        took + Duration::from_millis(500) >= bound && took < bound + Duration::from_secs(3),
        "{what}: closed after {took:?}, the bound is {bound:?}"
    );
}

/// Asks `/healthz` every 500 ms for `wait`; each answer must be 200. How many were answered.
async fn healthz_for(server: &Server, wait: Duration) -> u32 {
    let deadline = Instant::now() + wait;
    let mut answered = 0;
    while Instant::now() < deadline {
        let (status, body) = server.get("/healthz", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    answered
}

/// Waits `wait`, failing if the socket is closed meanwhile (frames that arrive are skipped).
async fn stays_open(ws: &mut crate::helpers::Ws, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(crate::helpers::Incoming::Closed(code)) = ws.next_within(left).await {
            panic!("the socket was closed ({code:?})");
        }
    }
}

/// A connection on which a first request was answered (so what follows is not its first head,
/// which actix bounds by itself).
struct KeptAlive {
    addr: String,
}

fn kept_alive(addr: String) -> KeptAlive {
    KeptAlive { addr }
}

impl KeptAlive {
    async fn open(&self) -> TcpStream {
        let mut conn = TcpStream::connect(&self.addr).await.expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let answer = read_response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        conn
    }

    /// Sends a head a byte a second (never ending it); returns how long after its first byte
    /// the server closed the connection, and what it answered.
    async fn then_trickle_a_head(self) -> (Duration, Vec<u8>) {
        let conn = self.open().await;
        let (mut reader, mut writer) = conn.into_split();
        let first_byte = Instant::now();
        let trickle = async move {
            let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            answer = read_until_closed_half(&mut reader, Duration::from_secs(30)) => {
                (first_byte.elapsed(), answer)
            }
            _ = trickle => unreachable!("the trickle never ends"),
        }
    }

    /// Sends a POST head and 10 of the 60 bytes of its body, then nothing; returns how long
    /// after that the server closed the connection, and what it answered.
    async fn then_stall_a_body(self) -> (Duration, Vec<u8>) {
        let mut conn = self.open().await;
        conn.write_all(
            b"POST /v1/auth/sign-in HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 60\r\n\r\n{\"email\":",
        )
        .await
        .expect("write");
        let stalled = Instant::now();
        let answer = read_until_closed(&mut conn, Duration::from_secs(30)).await;
        (stalled.elapsed(), answer)
    }

    /// Sends a POST head (`Content-Length: 60`), then a byte of its body a second; returns
    /// how long after the head the server closed the connection, and what it answered.
    async fn then_trickle_a_body(self) -> (Duration, Vec<u8>) {
        let conn = self.open().await;
        let (mut reader, mut writer) = conn.into_split();
        writer
            .write_all(
                b"POST /v1/auth/sign-in HTTP/1.1\r\nHost: t\r\n\
                  Content-Type: application/json\r\nContent-Length: 60\r\n\r\n",
            )
            .await
            .expect("write");
        let head_sent = Instant::now();
        let trickle = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            answer = read_until_closed_half(&mut reader, Duration::from_secs(30)) => {
                (head_sent.elapsed(), answer)
            }
            _ = trickle => unreachable!("the trickle never ends"),
        }
    }

    /// Sends a sign-in body 4 bytes every 0.6 s (chunked: one chunk a second); returns how long
    /// that took, the answer, and the answer to a next request on the same connection.
    async fn then_send_a_body_slowly(self, chunked: bool) -> (Duration, String, String) {
        let mut conn = self.open().await;
        let body = br#"{"email":"nobody@example.com","password":"password-1"}"#;
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let head = format!(
            "POST /v1/auth/sign-in HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             {framing}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        let sending = Instant::now();
        for piece in body.chunks(4) {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let piece = if chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                framed
            } else {
                piece.to_vec()
            };
            conn.write_all(&piece).await.expect("write body");
        }
        if chunked {
            conn.write_all(b"0\r\n\r\n").await.expect("last chunk");
        }
        let sent_for = sending.elapsed();
        let answer = read_response(&mut conn).await;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let next = read_response(&mut conn).await;
        (sent_for, answer, next)
    }
}

/// One whole response (head and `Content-Length` body) as text; fails after 30 s.
async fn read_response(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("Content-Length"))
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!(
                "no whole response in 30 s: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                panic!("closed mid-response: {}", String::from_utf8_lossy(&got))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// [`read_until_closed`] on a read half.
async fn read_until_closed_half(
    conn: &mut tokio::net::tcp::OwnedReadHalf,
    limit: Duration,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("the connection stayed open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}
