//! Section 12 (general part): authenticate, ping, timeouts, limits, and the push feed.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::{unique_email, Backend, Incoming, Server, TestDb};

both_stores!(
    authenticate_ping_and_bad_frames,
    unauthenticated_sockets_are_closed_after_ten_seconds,
    oversized_frames_are_refused,
    user_update_reaches_every_socket_of_the_user,
    reconnect_with_since_replays_missed_pushes,
    token_in_header_or_query_authenticates,
    sigterm_sends_close_frames,
    flooding_is_rate_limited_then_closed
);

async fn authenticate_ping_and_bad_frames(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (user_id, access, _) = server
        .sign_up(&unique_email("ws"), "password-1", "senior")
        .await;
    let mut ws = server.ws().await;

    // Ping works before authentication.
    let reply = ws
        .request(json!({"action": "ping", "requestId": "p1"}))
        .await;
    assert_eq!(reply["action"], json!("ping"));
    assert_eq!(reply["requestId"], json!("p1"));
    assert_eq!(reply["statusCode"], json!(200));
    assert_eq!(reply["data"]["pong"], json!(true));
    assert!(reply["data"]["serverTime"].is_string());

    // Other actions need authentication.
    let reply = ws
        .request(json!({"action": "user.me", "requestId": 2}))
        .await;
    assert_eq!(
        (reply["statusCode"].clone(), reply["error"].clone()),
        (json!(401), json!("unauthenticated"))
    );
    assert_eq!(reply["requestId"], json!(2));

    // Bad tokens and malformed frames answer in the envelope; the socket stays usable.
    let reply = ws
        .request(json!({"action": "authenticate", "token": "garbage"}))
        .await;
    assert_eq!(reply["statusCode"], json!(401), "{reply}");
    assert!(ws.send_raw(Message::text("{not json")).await);
    let reply = ws.recv().await;
    assert_eq!(
        (reply["statusCode"].clone(), reply["error"].clone()),
        (json!(400), json!("invalid_input"))
    );
    let reply = ws.request(json!({"requestId": "x"})).await;
    assert_eq!(reply["statusCode"], json!(400), "{reply}");
    let reply = ws
        .request(json!({"action": "authenticate", "token": access, "since": "yesterday"}))
        .await;
    assert_eq!(reply["statusCode"], json!(400), "{reply}");

    let reply = ws
        .request(json!({"action": "authenticate", "token": access, "requestId": "a"}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    assert_eq!(reply["data"]["id"], json!(user_id));
    assert_eq!(reply["data"]["online"], json!(true));
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["data"]["id"], json!(user_id));
    assert_eq!(
        reply["data"]["email"].as_str().map(|e| e.contains("@")),
        Some(true)
    );
    let reply = ws.request(json!({"action": "launch.rockets"})).await;
    assert_eq!(
        (reply["statusCode"].clone(), reply["error"].clone()),
        (json!(404), json!("unknown_action"))
    );
    let reply = ws
        .request(json!({"action": "user.update", "gender": "robot"}))
        .await;
    assert_eq!(reply["statusCode"], json!(400), "{reply}");

    // The REST view agrees that the user is online while the socket is open.
    let (status, me) = server.get("/v1/auth", Some(&access)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["data"]["user"]["online"], json!(true));
}

async fn unauthenticated_sockets_are_closed_after_ten_seconds(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let mut ws = server.ws().await;
    let opened = Instant::now();
    match ws.next_within(Duration::from_secs(20)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1008)),
        other => panic!("expected a close, got {other:?}"),
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed too early: {waited:?}"
    );
}

async fn oversized_frames_are_refused(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (_, access, _) = server
        .sign_up(&unique_email("big"), "password-1", "senior")
        .await;
    let (mut ws, _) = server.ws_authenticated(&access, None).await;
    // Just under the limit is fine.
    let fits = json!({"action": "ping", "pad": "x".repeat(60 * 1024)});
    let reply = ws.request(fits).await;
    assert_eq!(reply["statusCode"], json!(200));
    let too_big = json!({"action": "ping", "pad": "x".repeat(70 * 1024)}).to_string();
    ws.send_raw(Message::text(too_big)).await;
    let mut saw_413 = false;
    loop {
        match ws.next_within(Duration::from_secs(10)).await {
            Some(Incoming::Json(frame)) => {
                assert_eq!(frame["statusCode"], json!(413), "{frame}");
                assert_eq!(frame["error"], json!("payload_too_large"));
                saw_413 = true;
            }
            Some(Incoming::Closed(code)) => {
                assert_eq!(code, Some(1009));
                break;
            }
            None => panic!("no answer to an oversized frame"),
        }
    }
    assert!(saw_413);
}

async fn user_update_reaches_every_socket_of_the_user(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (user_id, access, _) = server
        .sign_up(&unique_email("two"), "password-1", "senior")
        .await;
    let (mut first, _) = server.ws_authenticated(&access, None).await;
    let (mut second, _) = server.ws_authenticated(&access, None).await;
    // Another user's change never reaches these sockets.
    let (other_id, other_access, _) = server
        .sign_up(&unique_email("other"), "password-1", "senior")
        .await;
    let (status, _) = server
        .call(
            "PUT",
            &format!("/v1/user/{other_id}"),
            Some(&other_access),
            Some(json!({"bio": "not yours"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A change over the first socket is pushed to both.
    let reply = first
        .request(json!({"action": "user.update", "bio": "Loves chess", "requestId": "u"}))
        .await;
    assert_eq!(reply["data"]["bio"], json!("Loves chess"), "{reply}");
    for ws in [&mut first, &mut second] {
        let push = ws.push("user.update").await;
        assert_eq!(push["data"]["user"]["id"], json!(user_id));
        assert_eq!(push["data"]["user"]["bio"], json!("Loves chess"));
        assert!(push["position"].as_i64().is_some_and(|p| p > 0));
    }
    // And so is a change over REST.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/v1/user/{user_id}"),
            Some(&access),
            Some(json!({"name": "Ann Again"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let a = first.push("user.update").await;
    let b = second.push("user.update").await;
    assert_eq!(a["data"]["user"]["name"], json!("Ann Again"));
    assert_eq!(a["position"], b["position"]);
}

async fn reconnect_with_since_replays_missed_pushes(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (user_id, access, _) = server
        .sign_up(&unique_email("since"), "password-1", "senior")
        .await;
    let (mut ws, _) = server.ws_authenticated(&access, None).await;
    let path = format!("/v1/user/{user_id}");
    server
        .call("PUT", &path, Some(&access), Some(json!({"bio": "one"})))
        .await;
    let seen = ws.push("user.update").await["position"].as_i64().unwrap();
    drop(ws);

    // Offline: two changes.
    for bio in ["two", "three"] {
        let (status, _) = server
            .call("PUT", &path, Some(&access), Some(json!({"bio": bio})))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (mut ws, reply) = server.ws_authenticated(&access, Some(seen)).await;
    assert_eq!(reply["data"]["bio"], json!("three"));
    let two = ws.push("user.update").await;
    let three = ws.push("user.update").await;
    assert_eq!(two["data"]["user"]["bio"], json!("two"));
    assert_eq!(three["data"]["user"]["bio"], json!("three"));
    assert!(seen < two["position"].as_i64().unwrap());
    assert!(two["position"].as_i64() < three["position"].as_i64());
    // Exactly once: nothing else is pending, and new pushes still arrive live.
    assert!(ws.next_within(Duration::from_millis(1500)).await.is_none());
    server
        .call("PUT", &path, Some(&access), Some(json!({"bio": "four"})))
        .await;
    let four = ws.push("user.update").await;
    assert_eq!(four["data"]["user"]["bio"], json!("four"));
}

async fn token_in_header_or_query_authenticates(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (user_id, access, _) = server
        .sign_up(&unique_email("hdr"), "password-1", "senior")
        .await;

    let url = format!("{}?token={access}", server.ws_url);
    let (stream, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("query token");
    let mut ws = crate::helpers::Ws { stream };
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["data"]["id"], json!(user_id));

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {access}").parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("header token");
    let mut ws = crate::helpers::Ws { stream };
    let reply = ws.request(json!({"action": "user.me"})).await;
    assert_eq!(reply["data"]["id"], json!(user_id));

    // A bad token in the query is refused before the upgrade.
    let url = format!("{}?token=bad", server.ws_url);
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

async fn sigterm_sends_close_frames(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (_, access, _) = server
        .sign_up(&unique_email("term"), "password-1", "senior")
        .await;
    let (mut ws, _) = server.ws_authenticated(&access, None).await;
    let stopping = tokio::spawn(server.stop());
    match ws.next_within(Duration::from_secs(20)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1001)),
        other => panic!("expected a close frame, got {other:?}"),
    }
    stopping.await.expect("server exited cleanly");
}

async fn flooding_is_rate_limited_then_closed(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let mut ws = server.ws().await;
    for _ in 0..200 {
        if !ws
            .send_raw(Message::text(json!({"action": "ping"}).to_string()))
            .await
        {
            break;
        }
    }
    let mut limited = 0;
    let closed = loop {
        match ws.next_within(Duration::from_secs(10)).await {
            Some(Incoming::Json(frame)) => {
                if frame["statusCode"] == json!(429) {
                    assert_eq!(frame["error"], json!("rate_limited"));
                    limited += 1;
                }
            }
            Some(Incoming::Closed(code)) => break code,
            None => panic!("a flooding socket is closed"),
        }
    };
    assert!(limited > 0);
    assert_eq!(closed, Some(1008));
}

both_stores!(
    signing_out_closes_that_sessions_sockets_only,
    silent_sockets_are_closed
);

async fn signing_out_closes_that_sessions_sockets_only(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("out");
    let (_, phone, _) = server.sign_up(&email, "password-1", "senior").await;
    let (_, body) = server.sign_in(&email, "password-1").await;
    let (_, laptop, _) = crate::helpers::account(&body);
    let (mut phone_ws, _) = server.ws_authenticated(&phone, None).await;
    let (mut laptop_ws, _) = server.ws_authenticated(&laptop, None).await;

    let (status, _) = server
        .call("DELETE", "/v1/auth/sign-out", Some(&phone), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = phone_ws.push("session.ended").await;
    assert_eq!(ended["data"]["reason"], json!("sign-out"));
    match phone_ws.next_within(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1008)),
        other => panic!("expected the signed-out socket to close, got {other:?}"),
    }
    // The other session's socket hears nothing and keeps working.
    assert!(laptop_ws
        .next_within(Duration::from_millis(1500))
        .await
        .is_none());
    let reply = laptop_ws.request(json!({"action": "ping"})).await;
    assert_eq!(reply["statusCode"], json!(200));
}

async fn silent_sockets_are_closed(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // The 60 s default is configurable; 2 s keeps the test short.
    let server = Server::start_with(&db, &[("TALKAMIE_WS_IDLE_TIMEOUT_SECS", "2")]).await;
    let (_, access, _) = server
        .sign_up(&unique_email("idle"), "password-1", "senior")
        .await;
    let (mut ws, _) = server.ws_authenticated(&access, None).await;
    // Talking keeps it open...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let reply = ws.request(json!({"action": "ping"})).await;
        assert_eq!(reply["statusCode"], json!(200));
    }
    // ...silence closes it.
    let silent = Instant::now();
    match ws.next_within(Duration::from_secs(10)).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1000)),
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(silent.elapsed() >= Duration::from_millis(1500));
}
