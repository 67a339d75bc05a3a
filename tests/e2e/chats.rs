//! Sections 5 and 6, and the chat and alert parts of section 12: connect requests, message
//! requests, chats, messages, receipts, unread counts and alerts, over REST and WebSocket.

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, read_models, unique_email, Backend, Server, TestDb, Ws};

both_stores!(
    connect_requests_follow_the_rules,
    message_requests_open_a_chat_only_when_accepted,
    messages_are_idempotent_validated_and_private,
    unread_counts_follow_send_deliver_and_read_on_two_sockets,
    alerts_are_listed_and_marked_read_on_every_socket,
    concurrent_opposite_requests_leave_exactly_one,
    chat_lists_search_rank_and_paginate,
    flooding_messages_is_rate_limited,
    message_bursts_count_every_push_in_log_order,
);

/// A signed-up user: `(id, access token)`.
async fn user(server: &Server, kind: &str) -> (String, String) {
    let (id, token, _) = server
        .sign_up(&unique_email(kind), "password-1", kind)
        .await;
    (id, token)
}

/// A senior and a volunteer who are connected; returns both and their chat id.
async fn connected_pair(server: &Server) -> ((String, String), (String, String), String) {
    let senior = user(server, "senior").await;
    let volunteer = user(server, "volunteer").await;
    let chat = server.connect(&senior, &volunteer).await;
    (senior, volunteer, chat)
}

async fn send(ws: &mut Ws, chat: &str, text: &str, client_id: Option<&str>) -> Value {
    let mut frame = json!({"action": "chat.message.send", "requestId": text,
                           "chatId": chat, "message": {"text": text}});
    if let Some(id) = client_id {
        frame["clientId"] = json!(id);
    }
    ws.request(frame).await
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

async fn connect_requests_follow_the_rules(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (s, s_token) = user(&server, "senior").await;
    let (s2, _) = user(&server, "senior").await;
    let (v, v_token) = user(&server, "volunteer").await;
    let (mut v_ws, _) = server.ws_authenticated(&v_token, None).await;
    let path = |id: &str, tail: &str| format!("/v1/user/{id}/connection{tail}");

    // Bad targets.
    let (status, body) = server
        .call("POST", &path(&s, ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .call("POST", &path(&s2, ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 422, "not_senior_and_volunteer");
    let (status, body) = server
        .call("POST", &path("no-such-user", ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.call("POST", &path(&v, ""), None, None).await;
    assert_error(status, &body, 401, "unauthenticated");

    // Send: the volunteer hears of it at once.
    let (status, body) = server
        .call("POST", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let request = &body["data"];
    assert_eq!(request["status"], json!("pending"));
    assert_eq!(request["from"]["id"], json!(s));
    assert_eq!(request["to"]["id"], json!(v));
    assert_eq!(request["user"]["id"], json!(v));
    let alert = v_ws.push("alert.new").await;
    assert_eq!(alert["data"]["alert"]["type"], json!("connect-request"));
    assert_eq!(
        alert["data"]["alert"]["connectRequest"]["id"],
        request["id"]
    );
    assert_eq!(alert["data"]["alert"]["status"], json!("unread"));
    let update = v_ws.push("user.update").await;
    assert_eq!(update["data"]["user"]["totalPendingRequests"], json!(1));

    // One live request per pair.
    let (status, body) = server
        .call("POST", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 409, "already_exists");
    let (status, body) = server
        .call("POST", &path(&s, ""), Some(&v_token), None)
        .await;
    assert_error(status, &body, 409, "conflict");

    // Pending lists, both directions.
    let (_, body) = server.get("/v1/connections/pending", Some(&v_token)).await;
    assert_eq!(ids(&body), vec![request["id"].as_str().unwrap()]);
    assert_eq!(body["data"][0]["user"]["id"], json!(s));
    assert_eq!(body["pagination"]["totalItems"], json!(1));
    let (_, body) = server
        .get("/v1/connections/pending?direction=sent", Some(&s_token))
        .await;
    assert_eq!(body["data"][0]["to"]["id"], json!(v));
    let (_, body) = server
        .get("/v1/connections/pending?direction=sent", Some(&v_token))
        .await;
    assert_eq!(body["data"], json!([]));
    let (status, body) = server
        .get("/v1/connections/pending?direction=up", Some(&v_token))
        .await;
    assert_error(status, &body, 400, "invalid_input");

    // Only the recipient answers, only the sender cancels.
    let (status, body) = server
        .call("POST", &path(&v, "/accept"), Some(&s_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server
        .call("DELETE", &path(&s, ""), Some(&v_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");

    // Cancel: the volunteer's alert follows the request.
    let (status, body) = server
        .call("DELETE", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], json!("canceled"));
    let update = v_ws.push("alert.update").await;
    assert_eq!(
        update["data"]["alert"]["connectRequest"]["status"],
        json!("canceled")
    );
    let (_, body) = server.get("/v1/connections/pending", Some(&v_token)).await;
    assert_eq!(body["data"], json!([]));

    // Reject, then ask again and accept.
    server
        .call("POST", &path(&v, ""), Some(&s_token), None)
        .await;
    let (status, body) = server
        .call("DELETE", &path(&s, "/reject"), Some(&v_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], json!("rejected"));
    let (status, _) = server
        .call("POST", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (mut s_ws, _) = server.ws_authenticated(&s_token, None).await;
    let (status, body) = server
        .call("POST", &path(&s, "/accept"), Some(&v_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["connectRequest"]["status"], json!("accepted"));
    let chat = body["data"]["chat"].clone();
    assert_eq!(chat["type"], json!("connect"));
    assert_eq!(chat["user"]["id"], json!(s));
    let chat_id = chat["id"].as_str().unwrap().to_string();
    let alert = s_ws.push("alert.new").await;
    assert_eq!(
        alert["data"]["alert"]["connectRequest"]["status"],
        json!("accepted")
    );
    assert_eq!(
        s_ws.push("chat.update").await["data"]["chat"]["id"],
        json!(chat_id)
    );

    // Connected: lists, viewer relation, counters, no more requests.
    let (_, body) = server.get("/v1/connections/users", Some(&s_token)).await;
    assert_eq!(ids(&body), vec![v.clone()]);
    // (Seniors do not see unverified volunteers' profiles; the volunteer sees the senior.)
    let (_, body) = server.get(&format!("/v1/user/{s}"), Some(&v_token)).await;
    assert_eq!(
        body["data"]["viewer"]["chat"]["id"],
        json!(chat_id),
        "{body}"
    );
    assert_eq!(
        body["data"]["viewer"]["connectRequest"]["status"],
        json!("accepted")
    );
    assert_eq!(body["data"]["totalConnections"], json!(1));
    let (_, body) = server.get(&format!("/v1/user/{s}"), Some(&s_token)).await;
    assert_eq!(body["data"]["totalConnections"], json!(1));
    assert_eq!(body["data"]["totalPendingRequests"], json!(0));
    let (status, body) = server
        .call("POST", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 409, "already_exists");

    // Disconnect: history stays, messages stop.
    let (status, body) = server
        .call("DELETE", &path(&s, "/disconnect"), Some(&v_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["chat"]["open"], json!(false));
    let (status, body) = server
        .call("DELETE", &path(&s, "/disconnect"), Some(&v_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (_, body) = server.get("/v1/connections/users", Some(&s_token)).await;
    assert_eq!(body["data"], json!([]));
    let reply = send(&mut s_ws, &chat_id, "still there?", None).await;
    assert_eq!(reply["statusCode"], json!(409), "{reply}");
    assert_eq!(reply["error"], json!("chat_not_open"));
    let (status, _) = server
        .get(&format!("/v1/chat/{chat_id}"), Some(&s_token))
        .await;
    assert_eq!(status, StatusCode::OK, "the history stays readable");

    // A deleted user is 404 to requests, and their pending requests and connections go.
    let (v2, v2_token) = user(&server, "volunteer").await;
    server
        .call("POST", &path(&s, ""), Some(&v2_token), None)
        .await;
    let (_, body) = server.get(&format!("/v1/user/{s}"), Some(&s_token)).await;
    assert_eq!(body["data"]["totalPendingRequests"], json!(1));
    let (status, body) = server
        .call("DELETE", &format!("/v1/user/{v2}"), Some(&v2_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call("POST", &path(&v2, ""), Some(&s_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");
    let (_, body) = server.get("/v1/connections/pending", Some(&s_token)).await;
    assert_eq!(body["data"], json!([]));
    let (_, body) = server.get(&format!("/v1/user/{s}"), Some(&s_token)).await;
    assert_eq!(body["data"]["totalPendingRequests"], json!(0));
}

async fn message_requests_open_a_chat_only_when_accepted(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (s, s_token) = user(&server, "senior").await;
    let (v, v_token) = user(&server, "volunteer").await;
    let (mut v_ws, _) = server.ws_authenticated(&v_token, None).await;
    let (mut s_ws, _) = server.ws_authenticated(&s_token, None).await;
    let path = |id: &str, tail: &str| format!("/v1/user/{id}/message/request{tail}");

    for bad in [
        json!({}),
        json!({"text": "  "}),
        json!({"text": "x".repeat(4001)}),
    ] {
        let (status, body) = server.post(&path(&v, ""), Some(&s_token), bad).await;
        assert_error(status, &body, 400, "invalid_input");
    }
    let (status, body) = server
        .post(
            &path(&v, ""),
            Some(&s_token),
            json!({"text": "Hello, I love gardening!"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let chat_id = body["data"]["chat"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["chat"]["type"], json!("message"));
    assert_eq!(body["data"]["chat"]["request"]["status"], json!("pending"));
    assert_eq!(body["data"]["message"]["isRequest"], json!(true));
    assert_eq!(body["data"]["message"]["sender"]["id"], json!(s));

    // The volunteer gets an alert, the message and the pending chat.
    let alert = v_ws.push("alert.new").await;
    assert_eq!(alert["data"]["alert"]["type"], json!("message-request"));
    assert_eq!(alert["data"]["alert"]["chat"]["id"], json!(chat_id));
    let pushed = v_ws.push("chat.message.new").await;
    assert_eq!(
        pushed["data"]["message"]["text"],
        json!("Hello, I love gardening!")
    );
    assert_eq!(pushed["data"]["viewer"]["totalUnreadChats"], json!(1));
    let (_, body) = server.get("/v1/chats/pending", Some(&v_token)).await;
    assert_eq!(ids(&body), vec![chat_id.clone()]);
    assert_eq!(body["data"][0]["request"]["sender"]["id"], json!(s));
    let (_, body) = server.get("/v1/chats/pending", Some(&s_token)).await;
    assert_eq!(
        ids(&body),
        vec![chat_id.clone()],
        "my own unanswered request"
    );
    let (_, body) = server.get(&format!("/v1/user/{s}"), Some(&v_token)).await;
    assert_eq!(
        body["data"]["viewer"]["chat"]["id"],
        json!(chat_id),
        "{body}"
    );
    assert_eq!(
        body["data"]["viewer"]["chat"]["request"]["status"],
        json!("pending")
    );

    // Only that one message until accepted; no second request either way.
    let reply = send(&mut s_ws, &chat_id, "are you there?", None).await;
    assert_eq!(reply["statusCode"], json!(409), "{reply}");
    let reply = send(&mut v_ws, &chat_id, "hi", None).await;
    assert_eq!(reply["statusCode"], json!(409), "{reply}");
    let (status, body) = server
        .post(&path(&s, ""), Some(&v_token), json!({"text": "hi"}))
        .await;
    assert_error(status, &body, 409, "conflict");
    let (status, body) = server
        .call(
            "POST",
            &format!("/v1/user/{v}/connection"),
            Some(&s_token),
            None,
        )
        .await;
    assert_error(status, &body, 409, "already_exists");

    // Cancel and ask again; reject; ask again and accept.
    let (status, body) = server
        .call("DELETE", &path(&v, ""), Some(&s_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["chat"]["request"]["status"], json!("canceled"));
    let (status, _) = server
        .post(
            &path(&v, ""),
            Some(&s_token),
            json!({"text": "Hello again"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .call("DELETE", &path(&s, "/reject"), Some(&v_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["chat"]["request"]["status"], json!("rejected"));
    let (status, _) = server
        .post(
            &path(&v, ""),
            Some(&s_token),
            json!({"text": "Third time lucky"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server
        .call("POST", &path(&s, "/accept"), Some(&v_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["chat"]["id"],
        json!(chat_id),
        "one chat per pair"
    );
    assert_eq!(body["data"]["chat"]["request"]["status"], json!("accepted"));
    let (status, body) = server
        .call("POST", &path(&s, "/accept"), Some(&v_token), None)
        .await;
    assert_error(status, &body, 404, "not_found");

    // Now both may write; the senior hears of the acceptance.
    let update = s_ws.push("chat.update").await;
    assert_eq!(update["data"]["chat"]["id"], json!(chat_id));
    let reply = send(&mut v_ws, &chat_id, "Welcome!", None).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let reply = send(&mut s_ws, &chat_id, "Thank you", None).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let (_, body) = server
        .get(&format!("/v1/chat/{chat_id}/messages"), Some(&s_token))
        .await;
    let texts: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            "Thank you",
            "Welcome!",
            "Third time lucky",
            "Hello again",
            "Hello, I love gardening!"
        ]
    );
    let (_, body) = server.get("/v1/chats/pending", Some(&v_token)).await;
    assert_eq!(body["data"], json!([]));
}

async fn messages_are_idempotent_validated_and_private(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let ((s, s_token), (_, v_token), chat) = connected_pair(&server).await;
    let (_, stranger) = user(&server, "senior").await;
    let (mut s_ws, _) = server.ws_authenticated(&s_token, None).await;
    let (mut v_ws, _) = server.ws_authenticated(&v_token, None).await;

    // A retry with the same clientId answers the first message and stores nothing new.
    let first = send(&mut s_ws, &chat, "Good morning", Some("c-1")).await;
    assert_eq!(first["success"], json!(true), "{first}");
    assert_eq!(first["data"]["chat"]["id"], json!(chat));
    let message = first["data"]["message"].clone();
    assert_eq!(message["clientId"], json!("c-1"));
    assert_eq!(message["delivery"]["status"], json!("sent"));
    assert_eq!(message["sender"]["id"], json!(s));
    let again = send(&mut s_ws, &chat, "Good morning", Some("c-1")).await;
    assert_eq!(
        again["data"]["message"], message,
        "the retry answers the stored message"
    );
    let pushed = v_ws.push("chat.message.new").await;
    assert_eq!(pushed["data"]["message"], message);
    let (_, body) = server
        .get(&format!("/v1/chat/{chat}/messages"), Some(&v_token))
        .await;
    assert_eq!(body["pagination"]["totalItems"], json!(1));
    // The answer (made from the event) is the message as the read model stores it.
    assert_eq!(body["data"][0], message);

    // Bad input, each refused in the envelope with nothing stored.
    let bad_frames = [
        json!({"action": "chat.message.send", "chatId": chat, "message": {"text": ""}}),
        json!({"action": "chat.message.send", "chatId": chat, "message": {"text": "x".repeat(4001)}}),
        json!({"action": "chat.message.send", "chatId": chat}),
        json!({"action": "chat.message.send", "message": {"text": "hi"}}),
        json!({"action": "chat.message.send", "chatId": chat, "message": {"text": "hi"}, "clientId": 7}),
        json!({"action": "chat.messages.update", "chatId": chat, "messagesMap": {"x": {"status": "seen"}}}),
        json!({"action": "chat.messages.update", "chatId": chat}),
        json!({"action": "chat.messages.get", "chatId": chat, "pageSize": 0}),
    ];
    for frame in bad_frames {
        let reply = s_ws.request(frame.clone()).await;
        assert_eq!(reply["statusCode"], json!(400), "{frame} -> {reply}");
        assert_eq!(reply["error"], json!("invalid_input"), "{reply}");
    }
    let reply = send(&mut s_ws, "no-such-chat", "hi", None).await;
    assert_eq!(reply["statusCode"], json!(404), "{reply}");
    let (_, body) = server
        .get(&format!("/v1/chat/{chat}/messages"), Some(&v_token))
        .await;
    assert_eq!(body["pagination"]["totalItems"], json!(1));

    // No one reads or writes a chat they are not in, over REST or WebSocket.
    for path in [
        format!("/v1/chat/{chat}"),
        format!("/v1/chat/{chat}/messages"),
    ] {
        let (status, body) = server.get(&path, Some(&stranger)).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (mut x_ws, _) = server.ws_authenticated(&stranger, None).await;
    for frame in [
        json!({"action": "chat.message.send", "chatId": chat, "message": {"text": "let me in"}}),
        json!({"action": "chat.messages.get", "chatId": chat}),
        json!({"action": "chat.messages.update", "chatId": chat, "messagesMap": {message["id"].as_str().unwrap(): {"status": "read"}}}),
    ] {
        let reply = x_ws.request(frame).await;
        assert_eq!(reply["statusCode"], json!(404), "{reply}");
    }
    let (_, body) = server.get("/v1/chats", Some(&stranger)).await;
    assert_eq!(body["data"], json!([]));

    // The full chat for a member.
    let (status, body) = server
        .get(&format!("/v1/chat/{chat}"), Some(&v_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["user"]["id"], json!(s));
    assert_eq!(body["data"]["lastMessage"]["id"], message["id"]);
    assert_eq!(body["data"]["totalMessages"], json!(1));
    assert_eq!(body["data"]["connectRequest"]["status"], json!("accepted"));

    // Messages over WebSocket, paginated newest first.
    for i in 0..4 {
        let reply = send(&mut v_ws, &chat, &format!("reply {i}"), None).await;
        assert_eq!(reply["success"], json!(true), "{reply}");
    }
    let reply = s_ws
        .request(json!({"action": "chat.messages.get", "chatId": chat, "pageSize": 3}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let page: Vec<&str> = reply["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec!["reply 3", "reply 2", "reply 1"]);
    assert_eq!(reply["pagination"]["totalItems"], json!(5));
    let key = reply["pagination"]["lastEvaluatedKey"].clone();
    let reply = s_ws
        .request(json!({"action": "chat.messages.get", "chatId": chat, "pageSize": 3, "lastEvaluatedKey": key}))
        .await;
    let page: Vec<&str> = reply["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec!["reply 0", "Good morning"]);
    assert!(reply["pagination"].get("lastEvaluatedKey").is_none());
}

async fn unread_counts_follow_send_deliver_and_read_on_two_sockets(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let ((_, s_token), (_, v_token), chat) = connected_pair(&server).await;
    let (mut s_ws, _) = server.ws_authenticated(&s_token, None).await;
    let (mut v_one, _) = server.ws_authenticated(&v_token, None).await;
    let (mut v_two, _) = server.ws_authenticated(&v_token, None).await;

    let mut sent = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let reply = send(&mut s_ws, &chat, text, None).await;
        sent.push(reply["data"]["message"]["id"].as_str().unwrap().to_string());
        for ws in [&mut v_one, &mut v_two] {
            let pushed = ws.push("chat.message.new").await;
            assert_eq!(pushed["data"]["message"]["text"], json!(text));
            assert_eq!(pushed["data"]["chat"]["totalUnreadMessages"], json!(i + 1));
            assert_eq!(pushed["data"]["viewer"]["totalUnreadChats"], json!(1));
        }
    }
    let (_, body) = server.get("/v1/chats/unread", Some(&v_token)).await;
    assert_eq!(ids(&body), vec![chat.clone()]);
    assert_eq!(body["data"][0]["totalUnreadMessages"], json!(3));

    // Delivered on socket one: the sender sees it.
    let reply = v_one
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&sent[2]: {"status": "delivered"}}}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    assert_eq!(
        reply["data"]["messagesMap"][&sent[2]]["status"],
        json!("delivered")
    );
    assert_eq!(reply["data"]["viewer"]["totalUnreadChats"], json!(1));
    let update = s_ws.push("chat.messages.update").await;
    let delivered: HashSet<&String> = update["data"]["messagesMap"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        delivered,
        sent.iter().collect(),
        "delivery covers earlier messages"
    );
    assert_eq!(
        update["data"]["messagesMap"][&sent[0]]["status"],
        json!("delivered")
    );

    // Read up to "two" on socket two: one unread left, on both sockets.
    let reply = v_two
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&sent[1]: {"status": "read"}}}))
        .await;
    assert_eq!(reply["data"]["viewer"]["totalUnreadChats"], json!(1));
    let update = s_ws.push("chat.messages.update").await;
    assert_eq!(
        update["data"]["messagesMap"][&sent[0]]["status"],
        json!("read")
    );
    assert_eq!(
        update["data"]["messagesMap"][&sent[1]]["status"],
        json!("read")
    );
    assert!(update["data"]["messagesMap"].get(&sent[2]).is_none());
    let unread_is = |n: i64| {
        let chat = chat.clone();
        move |v: &Value| v["data"]["chatsMap"][&chat]["totalUnreadMessages"] == json!(n)
    };
    let list = v_one.push_where("chats.update", unread_is(1)).await;
    assert_eq!(list["data"]["viewer"]["totalUnreadChats"], json!(1));

    // Reading an older message changes nothing; reading the last clears the chat.
    let reply = v_one
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&sent[0]: {"status": "read"}}}))
        .await;
    assert_eq!(
        reply["data"]["messagesMap"][&sent[0]]["status"],
        json!("read")
    );
    let reply = v_one
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&sent[2]: {"status": "read"}}}))
        .await;
    assert_eq!(reply["data"]["viewer"]["totalUnreadChats"], json!(0));
    v_two.push_where("chats.update", unread_is(1)).await;
    let list = v_two.push_where("chats.update", unread_is(0)).await;
    assert_eq!(list["data"]["viewer"]["totalUnreadChats"], json!(0));
    let (_, body) = server.get("/v1/chats/unread", Some(&v_token)).await;
    assert_eq!(body["data"], json!([]));
    let (_, body) = server.get("/v1/auth", Some(&v_token)).await;
    assert_eq!(body["data"]["user"]["totalUnreadChats"], json!(0), "{body}");
    let (_, body) = server
        .get(&format!("/v1/chat/{chat}/messages"), Some(&s_token))
        .await;
    for message in body["data"].as_array().unwrap() {
        assert_eq!(message["delivery"]["status"], json!("read"), "{message}");
    }

    // My own messages are not mine to mark.
    let reply = s_ws
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&sent[0]: {"status": "read"}}}))
        .await;
    assert_eq!(reply["data"]["messagesMap"], json!({}));
}

async fn alerts_are_listed_and_marked_read_on_every_socket(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (_, s_token) = user(&server, "senior").await;
    let (v, v_token) = user(&server, "volunteer").await;
    let (_, other_token) = user(&server, "volunteer").await;
    server
        .call(
            "POST",
            &format!("/v1/user/{v}/connection"),
            Some(&s_token),
            None,
        )
        .await;
    let (status, body) = server.get("/v1/alerts", Some(&v_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pagination"]["totalItems"], json!(1));
    let alert = body["data"][0].clone();
    assert_eq!(alert["type"], json!("connect-request"));
    assert_eq!(alert["status"], json!("unread"));
    assert!(alert["timestamp"].is_string());
    let alert_id = alert["id"].as_str().unwrap().to_string();
    let (_, body) = server.get("/v1/auth", Some(&v_token)).await;
    assert_eq!(body["data"]["user"]["totalUnreadAlerts"], json!(1));

    let (mut one, _) = server.ws_authenticated(&v_token, None).await;
    let (mut two, _) = server.ws_authenticated(&v_token, None).await;
    for bad in [
        json!({"action": "alerts.update"}),
        json!({"action": "alerts.update", "alertsMap": {}}),
        json!({"action": "alerts.update", "alertsMap": {&alert_id: {"status": "unread"}}}),
    ] {
        let reply = one.request(bad).await;
        assert_eq!(reply["statusCode"], json!(400), "{reply}");
    }
    // Someone else cannot mark my alert.
    let (mut other, _) = server.ws_authenticated(&other_token, None).await;
    let reply = other
        .request(json!({"action": "alerts.update", "alertsMap": {&alert_id: {"status": "read"}}}))
        .await;
    assert_eq!(reply["data"]["alertsMap"], json!({}), "{reply}");
    let (_, body) = server.get("/v1/alerts", Some(&v_token)).await;
    assert_eq!(body["data"][0]["status"], json!("unread"));

    let reply = one
        .request(json!({"action": "alerts.update", "alertsMap": {&alert_id: {"status": "read"}}}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    assert_eq!(
        reply["data"]["alertsMap"][&alert_id]["status"],
        json!("read")
    );
    assert_eq!(reply["data"]["viewer"]["totalUnreadAlerts"], json!(0));
    let pushed = two.push("alerts.update").await;
    assert_eq!(
        pushed["data"]["alertsMap"][&alert_id]["status"],
        json!("read")
    );
    assert_eq!(pushed["data"]["viewer"]["totalUnreadAlerts"], json!(0));
    let (_, body) = server.get("/v1/alerts", Some(&v_token)).await;
    assert_eq!(body["data"][0]["status"], json!("read"));
    let (_, body) = server.get("/v1/auth", Some(&v_token)).await;
    assert_eq!(body["data"]["user"]["totalUnreadAlerts"], json!(0));

    // Rebuilding the read models keeps ids and read marks.
    server.stop().await;
    let (ok, _, stderr) = db.cli(&["projections", "rebuild"]);
    assert!(ok, "{stderr}");
    let server = Server::start(&db).await;
    let (_, body) = server.get("/v1/alerts", Some(&v_token)).await;
    assert_eq!(body["data"][0]["id"], json!(alert_id));
    assert_eq!(body["data"][0]["status"], json!("read"));
}

async fn concurrent_opposite_requests_leave_exactly_one(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    for _ in 0..5 {
        let (s, s_token) = user(&server, "senior").await;
        let (v, v_token) = user(&server, "volunteer").await;
        let mut racers = Vec::new();
        for i in 0..6 {
            let (target, token) = if i % 2 == 0 {
                (v.clone(), s_token.clone())
            } else {
                (s.clone(), v_token.clone())
            };
            let http = server.http.clone();
            let url = format!("{}/v1/user/{target}/connection", server.base);
            racers.push(tokio::spawn(async move {
                let response = http.post(url).bearer_auth(token).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (status, body)
            }));
        }
        let mut created = 0;
        for racer in racers {
            let (status, body) = racer.await.unwrap();
            match status.as_u16() {
                201 => created += 1,
                409 => assert!(
                    ["already_exists", "conflict"].contains(&body["error"].as_str().unwrap()),
                    "{body}"
                ),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(created, 1, "exactly one live request");
        let (_, received) = server.get("/v1/connections/pending", Some(&v_token)).await;
        let (_, sent) = server.get("/v1/connections/pending", Some(&s_token)).await;
        let total = received["pagination"]["totalItems"].as_i64().unwrap()
            + sent["pagination"]["totalItems"].as_i64().unwrap();
        assert_eq!(total, 1);
    }
}

async fn chat_lists_search_rank_and_paginate(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (s, s_token) = user(&server, "senior").await;
    let (mut s_ws, _) = server.ws_authenticated(&s_token, None).await;
    let mut chats = Vec::new();
    for (i, name) in ["Alice Garden", "Bruno Chess", "Carla Garden"]
        .iter()
        .enumerate()
    {
        let (v, v_token) = user(&server, "volunteer").await;
        let (status, _) = server
            .call(
                "PUT",
                &format!("/v1/user/{v}"),
                Some(&v_token),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        server
            .call(
                "POST",
                &format!("/v1/user/{v}/connection"),
                Some(&s_token),
                None,
            )
            .await;
        let (_, body) = server
            .call(
                "POST",
                &format!("/v1/user/{s}/connection/accept"),
                Some(&v_token),
                None,
            )
            .await;
        let chat = body["data"]["chat"]["id"].as_str().unwrap().to_string();
        // Bruno gets the most messages, then Alice; Carla none.
        for n in 0..[2, 3, 0][i] {
            let reply = send(&mut s_ws, &chat, &format!("msg {n}"), None).await;
            assert_eq!(reply["success"], json!(true), "{reply}");
        }
        chats.push(chat);
    }
    // Most recent activity first: Carla's chat opened last, Bruno's before it, then Alice's.
    let (_, body) = server.get("/v1/chats", Some(&s_token)).await;
    assert_eq!(
        ids(&body),
        vec![chats[2].clone(), chats[1].clone(), chats[0].clone()]
    );
    assert_eq!(body["pagination"]["totalItems"], json!(3));
    assert_eq!(body["data"][0]["lastMessage"], json!(null));
    assert_eq!(body["data"][1]["lastMessage"]["text"], json!("msg 2"));
    assert_eq!(body["data"][1]["user"]["name"], json!("Bruno Chess"));

    let (_, body) = server.get("/v1/chats?keyword=garden", Some(&s_token)).await;
    assert_eq!(ids(&body), vec![chats[2].clone(), chats[0].clone()]);

    let (_, body) = server.get("/v1/chats/frequent", Some(&s_token)).await;
    assert_eq!(ids(&body), vec![chats[1].clone(), chats[0].clone()]);

    // Pages of one, each chat once.
    let mut seen = Vec::new();
    let mut path = "/v1/chats?pageSize=1".to_string();
    loop {
        let (status, body) = server.get(&path, Some(&s_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.extend(ids(&body));
        match body["pagination"]["lastEvaluatedKey"].as_str() {
            Some(key) => path = format!("/v1/chats?pageSize=1&lastEvaluatedKey={key}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![chats[2].clone(), chats[1].clone(), chats[0].clone()]
    );
    let (status, body) = server
        .get("/v1/chats?lastEvaluatedKey=forged.key", Some(&s_token))
        .await;
    assert_error(status, &body, 400, "invalid_input");
}

async fn flooding_messages_is_rate_limited(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // One message a minute after the burst of 30: the outcome does not depend on how fast a
    // loaded machine sends the 50 (at the default 120 a minute, 50 sends spread over 21 s
    // refilled the bucket and none was limited).
    let server = Server::start_with(&db, &[("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "1")]).await;
    let ((_, s_token), (_, v_token), chat) = connected_pair(&server).await;
    // Two sockets: the per-user limit holds across them (each socket alone stays under its own
    // frame limit).
    let (mut one, _) = server.ws_authenticated(&s_token, None).await;
    let (mut two, _) = server.ws_authenticated(&s_token, None).await;
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..25 {
        for ws in [&mut one, &mut two] {
            let reply = send(ws, &chat, &format!("spam {i}"), None).await;
            match reply["statusCode"].as_u64() {
                Some(200) => accepted += 1,
                Some(429) => {
                    assert_eq!(reply["error"], json!("rate_limited"));
                    limited += 1
                }
                other => panic!("unexpected {other:?}: {reply}"),
            }
        }
    }
    assert!(limited > 0, "flooding is refused");
    assert!(
        (30..=31).contains(&accepted),
        "the burst of 30 is allowed, then about one a minute: {accepted}"
    );
    let (_, body) = server
        .get(&format!("/v1/chat/{chat}/messages"), Some(&v_token))
        .await;
    assert_eq!(
        body["pagination"]["totalItems"],
        json!(accepted),
        "only accepted messages are stored"
    );
}

/// Many sockets sending at once make the projector apply runs of messages as a set: every
/// push must still show the counts the messages left one at a time, in log order. Four users,
/// each in two chats (S1-V1, S1-V2, S2-V1, S2-V2), send 15 messages into each of their chats
/// from three sockets at once; a fifth socket per user only listens. Each listener's pushes are
/// checked against a replay of its own push stream (which is in log order): per chat, the
/// unread count grows by one per message received and stays put for its own; the unread chat
/// total is the number of its chats with something unread; every received message is followed
/// by the recipient's `chats.update` showing it as the last message with the same counts.
/// Then the read models, and a rebuild of them, agree.
async fn message_bursts_count_every_push_in_log_order(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let env = [
        ("TALKAMIE_WS_FRAMES_PER_SECOND", "1000"),
        ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000"),
    ];
    let server = Server::start_with(&db, &env).await;
    let seniors = [user(&server, "senior").await, user(&server, "senior").await];
    let volunteers = [
        user(&server, "volunteer").await,
        user(&server, "volunteer").await,
    ];
    // chats[(senior, volunteer)] and each user's chats.
    let mut chats: Vec<(usize, usize, String)> = Vec::new();
    for (s, senior) in seniors.iter().enumerate() {
        for (v, volunteer) in volunteers.iter().enumerate() {
            chats.push((s, v, server.connect(senior, volunteer).await));
        }
    }
    let people: Vec<&(String, String)> = seniors.iter().chain(volunteers.iter()).collect();
    let chats_of = |person: usize| -> Vec<String> {
        chats
            .iter()
            .filter(|(s, v, _)| *s == person || *v + 2 == person)
            .map(|(_, _, chat)| chat.clone())
            .collect()
    };
    let mut listeners = Vec::new();
    for person in &people {
        listeners.push(server.ws_authenticated(&person.1, None).await.0);
    }

    const PER_CHAT: usize = 15;
    let mut senders = Vec::new();
    for (person, (_, token)) in people.iter().enumerate() {
        for socket in 0..3 {
            let (mut ws, _) = server.ws_authenticated(token, None).await;
            let mine = chats_of(person);
            senders.push(tokio::spawn(async move {
                // Frames go out without waiting for answers; the answers are counted after.
                let mut sent = 0;
                for i in 0..PER_CHAT {
                    for chat in &mine {
                        if i % 3 != socket {
                            continue;
                        }
                        ws.send(json!({"action": "chat.message.send", "requestId": sent,
                                       "chatId": chat, "message": {"text": format!("{i}")}}))
                            .await;
                        sent += 1;
                    }
                }
                let mut answered = 0;
                while answered < sent {
                    let frame = ws.recv().await;
                    if frame.get("position").is_none() {
                        assert_eq!(frame["success"], json!(true), "{frame}");
                        answered += 1;
                    }
                }
                sent
            }));
        }
    }
    let mut total = 0;
    for sender in senders {
        total += sender.await.expect("sender");
    }
    assert_eq!(total, 4 * 2 * PER_CHAT);

    for (person, listener) in listeners.iter_mut().enumerate() {
        let me = &people[person].0;
        let mut unread: HashMap<String, i64> =
            chats_of(person).into_iter().map(|chat| (chat, 0)).collect();
        let mut received_news = 0;
        let mut last_listed: HashMap<String, Value> = HashMap::new();
        let mut seen = 0;
        while seen < 2 * 2 * PER_CHAT {
            let push = listener.recv().await;
            if push["action"] != json!("chat.message.new") {
                continue;
            }
            seen += 1;
            let data = &push["data"];
            let chat = data["chat"]["id"].as_str().expect("chat id").to_string();
            let from_me = data["message"]["sender"]["id"] == json!(me);
            let count = unread.get_mut(&chat).expect("one of my chats");
            if !from_me {
                *count += 1;
            }
            let expected_count = *count;
            let unread_chats = unread.values().filter(|n| **n > 0).count();
            assert_eq!(
                data["chat"]["totalUnreadMessages"],
                json!(expected_count),
                "{push}"
            );
            assert_eq!(
                data["viewer"]["totalUnreadChats"],
                json!(unread_chats),
                "{push}"
            );
            assert_eq!(data["viewer"]["id"], json!(me));
            assert_eq!(data["message"]["delivery"]["status"], json!("sent"));
            if from_me {
                continue;
            }
            // The recipient's chat list learns it right after, with the same counts.
            let list = listener.recv().await;
            assert_eq!(list["action"], json!("chats.update"), "{list}");
            let listed = &list["data"]["chatsMap"][&chat];
            assert_eq!(listed["lastMessage"], data["message"], "{list}");
            assert_eq!(listed["totalUnreadMessages"], json!(expected_count));
            assert_eq!(
                list["data"]["viewer"]["totalUnreadChats"],
                json!(unread_chats)
            );
            assert_ne!(listed["user"]["id"], json!(me));
            assert!(listed["user"]["name"].is_string(), "{list}");
            last_listed.insert(chat, listed.clone());
            received_news += 1;
        }
        assert_eq!(received_news, 2 * PER_CHAT);
        assert!(unread.values().all(|n| *n == PER_CHAT as i64), "{unread:?}");
        let (_, body) = server
            .get("/v1/chats/unread", Some(&people[person].1))
            .await;
        for chat in body["data"].as_array().expect("chats") {
            assert_eq!(chat["totalUnreadMessages"], json!(PER_CHAT), "{chat}");
        }
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
        // The pushed chats show the other person as the chat list renders them.
        let (_, body) = server.get("/v1/chats", Some(&people[person].1)).await;
        for chat in body["data"].as_array().expect("chats") {
            let pushed = &last_listed[chat["id"].as_str().expect("chat id")];
            // Everyone kept a socket open: the last push of the burst shows the other online.
            assert_eq!(pushed["user"]["online"], json!(true), "{pushed}");
            let without_presence = |user: &Value| {
                let mut user = user.clone();
                user.as_object_mut().map(|u| u.remove("online"));
                user
            };
            assert_eq!(
                without_presence(&pushed["user"]),
                without_presence(&chat["user"])
            );
        }
    }

    // The projector took some messages in runs of more than one.
    let (_, text) = crate::metrics::scrape(&server).await;
    let samples = crate::metrics::parse(&text);
    let in_runs = crate::metrics::value(&samples, "projector_events_total", &[("path", "run")]);
    let runs = crate::metrics::value(&samples, "projector_message_runs_total", &[]);
    assert!(
        matches!((in_runs, runs), (Some(events), Some(runs)) if events > runs),
        "{in_runs:?} messages in {runs:?} runs"
    );

    // A rebuild (which also takes the messages in runs) gives the same read models.
    server.stop().await;
    let store = db.connect().await;
    let live = read_models(&store).await;
    let (ok, _, stderr) = db.cli(&["projections", "rebuild"]);
    assert!(ok, "{stderr}");
    assert_eq!(read_models(&store).await, live);
}
