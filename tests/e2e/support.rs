//! Section 10 and 12: support. A user has one open ticket (asking for it opens it); the user
//! and an admin talk over two sockets (`support.message.new`, receipts as
//! `support.messages.update`); either side closes it; admins list every ticket.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, Backend, Server, TestDb, Ws};
use crate::ledger::user;

both_stores!(a_user_and_an_admin_talk_on_one_open_ticket);

fn error_of(reply: &Value) -> (u64, String) {
    assert_eq!(reply["success"], json!(false), "{reply}");
    (
        reply["statusCode"].as_u64().unwrap_or(0),
        reply["error"].as_str().unwrap_or("").to_string(),
    )
}

async fn send(ws: &mut Ws, ticket_id: &str, text: &str, client_id: Option<&str>) -> Value {
    let mut frame =
        json!({"action": "support.message.send", "ticketId": ticket_id, "message": {"text": text}});
    if let Some(client_id) = client_id {
        frame["clientId"] = json!(client_id);
    }
    ws.request(frame).await
}

async fn a_user_and_an_admin_talk_on_one_open_ticket(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (_, admin) = server.admin(&db).await;
    let senior = user(&server, "senior").await;
    let stranger = user(&server, "volunteer").await;

    // Asking opens the ticket; asking again returns the same one.
    let (status, body) = server.get("/v1/support/open/ticket", Some(&senior.1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["data"].clone();
    let ticket_id = ticket["id"].as_str().expect("ticket id").to_string();
    assert_eq!(ticket["status"], json!("open"));
    assert_eq!(ticket["user"]["id"], json!(senior.0));
    assert_eq!(ticket["lastMessage"], Value::Null);
    let (_, again) = server.get("/v1/support/open/ticket", Some(&senior.1)).await;
    assert_eq!(again["data"]["id"], json!(ticket_id));
    let (_, me) = server.get("/v1/auth", Some(&senior.1)).await;
    assert_eq!(
        me["data"]["user"]["support"]["ticket"]["id"],
        json!(ticket_id),
        "{me}"
    );
    // Admins answer tickets; they do not open them.
    let (status, body) = server.get("/v1/support/open/ticket", Some(&admin)).await;
    assert_error(status, &body, 403, "forbidden");

    let (mut user_ws, _) = server.ws_authenticated(&senior.1, None).await;
    let (mut admin_ws, _) = server.ws_authenticated(&admin, None).await;
    let (mut stranger_ws, _) = server.ws_authenticated(&stranger.1, None).await;

    // The user writes; the admin's socket gets it.
    let reply = send(
        &mut user_ws,
        &ticket_id,
        "My calls drop after a minute",
        Some("c1"),
    )
    .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let question = reply["data"]["message"].clone();
    assert_eq!(reply["data"]["ticket"]["id"], json!(ticket_id));
    assert_eq!(question["sender"]["id"], json!(senior.0));
    assert_eq!(question["sender"]["role"], json!("user"));
    assert_eq!(question["delivery"]["status"], json!("sent"));
    let pushed = admin_ws.push("support.message.new").await;
    assert_eq!(pushed["data"]["message"]["id"], question["id"]);
    assert_eq!(pushed["data"]["ticket"]["id"], json!(ticket_id));
    // A retry with the same clientId stores nothing new.
    let retry = send(
        &mut user_ws,
        &ticket_id,
        "My calls drop after a minute",
        Some("c1"),
    )
    .await;
    assert_eq!(retry["data"]["message"]["id"], question["id"]);

    // The admin answers; the user's socket gets it, and reads it.
    let reply = send(&mut admin_ws, &ticket_id, "Which phone do you use?", None).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let answer = reply["data"]["message"].clone();
    assert_eq!(answer["sender"]["role"], json!("staff"));
    let pushed = user_ws.push("support.message.new").await;
    assert_eq!(pushed["data"]["message"]["id"], answer["id"]);
    assert_eq!(
        pushed["data"]["message"]["text"],
        json!("Which phone do you use?")
    );
    let answer_id = answer["id"].as_str().expect("id").to_string();
    let question_id = question["id"].as_str().expect("id").to_string();
    let reply = user_ws
        .request(
            json!({"action": "support.messages.update", "ticketId": ticket_id,
                        "messagesMap": {answer_id.clone(): {"status": "read"},
                                        question_id.clone(): {"status": "read"}}}),
        )
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    // Only the other side's messages can be marked: my own question is left out.
    assert_eq!(
        reply["data"]["messagesMap"][&answer_id]["status"],
        json!("read")
    );
    assert!(
        reply["data"]["messagesMap"].get(&question_id).is_none(),
        "{reply}"
    );
    let receipt = admin_ws.push("support.messages.update").await;
    assert_eq!(
        receipt["data"]["messagesMap"][&answer_id]["status"],
        json!("read")
    );
    // The admin marks the question delivered.
    let reply = admin_ws
        .request(
            json!({"action": "support.messages.update", "ticketId": ticket_id,
                        "messagesMap": {question_id.clone(): {"status": "delivered"}}}),
        )
        .await;
    assert_eq!(
        reply["data"]["messagesMap"][&question_id]["status"],
        json!("delivered"),
        "{reply}"
    );
    // Receipts reach both sides (the user's own read receipt came first).
    let receipt = user_ws
        .push_where("support.messages.update", |f| {
            f["data"]["messagesMap"].get(&question_id).is_some()
        })
        .await;
    assert_eq!(
        receipt["data"]["messagesMap"][&question_id]["status"],
        json!("delivered")
    );

    // History: over REST and the socket, newest first, paginated.
    let (status, body) = server
        .get(
            &format!("/v1/support/ticket/{ticket_id}/messages"),
            Some(&senior.1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let texts: Vec<&str> = body["data"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["Which phone do you use?", "My calls drop after a minute"]
    );
    assert_eq!(body["pagination"]["totalItems"], json!(2));
    let reply = admin_ws
        .request(json!({"action": "support.messages.get", "ticketId": ticket_id, "pageSize": 1}))
        .await;
    assert_eq!(
        reply["data"]["messages"].as_array().map(Vec::len),
        Some(1),
        "{reply}"
    );
    let key = reply["pagination"]["lastEvaluatedKey"]
        .as_str()
        .expect("next page key")
        .to_string();
    let reply = admin_ws
        .request(json!({"action": "support.messages.get", "ticketId": ticket_id, "pageSize": 1, "lastEvaluatedKey": key}))
        .await;
    assert_eq!(
        reply["data"]["messages"][0]["id"],
        json!(question_id),
        "{reply}"
    );

    // Nobody else sees or writes on the ticket.
    let (status, body) = server
        .get(
            &format!("/v1/support/ticket/{ticket_id}/messages"),
            Some(&stranger.1),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let reply = send(&mut stranger_ws, &ticket_id, "hello", None).await;
    assert_eq!(error_of(&reply), (404, "not_found".into()));
    // Bad input is 400.
    let reply = send(&mut user_ws, &ticket_id, "   ", None).await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    // NUL (which PostgreSQL's JSON refuses) is 400 on both stores, in texts, ids and receipts.
    let reply = send(&mut user_ws, &ticket_id, "a\u{0}b", None).await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    let reply = send(&mut user_ws, &ticket_id, "fine", Some("c\u{0}1")).await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    let reply = user_ws
        .request(
            json!({"action": "support.messages.update", "ticketId": ticket_id,
                        "messagesMap": {"a\u{0}b": {"status": "read"}}}),
        )
        .await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    let reply = send(&mut user_ws, "t\u{0}x", "fine", None).await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    let reply = user_ws
        .request(json!({"action": "support.message.send", "message": {"text": "x"}}))
        .await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));
    let reply = user_ws
        .request(json!({"action": "support.messages.update", "ticketId": ticket_id, "messagesMap": {"x": {"status": "seen"}}}))
        .await;
    assert_eq!(error_of(&reply), (400, "invalid_input".into()));

    // Admins list every ticket; others may not.
    let (status, body) = server
        .get("/v1/admin/support/tickets?status=open", Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["data"]
        .as_array()
        .expect("tickets")
        .iter()
        .find(|t| t["id"] == json!(ticket_id))
        .cloned()
        .expect("the ticket");
    assert_eq!(listed["lastMessage"]["id"], json!(answer_id));
    assert_eq!(listed["user"]["id"], json!(senior.0));
    let (status, body) = server
        .get("/v1/admin/support/tickets?status=maybe", Some(&admin))
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .get("/v1/admin/support/tickets", Some(&senior.1))
        .await;
    assert_error(status, &body, 403, "forbidden");

    // The admin closes it: no more messages; asking again opens a new ticket.
    let (status, body) = server
        .post(
            &format!("/v1/support/ticket/{ticket_id}/close"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], json!("closed"));
    let update = user_ws
        .push_where("user.update", |f| {
            f["data"]["user"]["support"]["ticket"].is_null()
        })
        .await;
    assert_eq!(update["data"]["user"]["id"], json!(senior.0));
    let reply = send(&mut user_ws, &ticket_id, "One more thing", None).await;
    assert_eq!(error_of(&reply), (409, "ticket_closed".into()));
    let (status, body) = server
        .post(
            &format!("/v1/support/ticket/{ticket_id}/close"),
            Some(&stranger.1),
            json!({}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (_, next) = server.get("/v1/support/open/ticket", Some(&senior.1)).await;
    let next_id = next["data"]["id"].as_str().expect("new ticket").to_string();
    assert_ne!(next_id, ticket_id);
    let (_, closed) = server
        .get("/v1/admin/support/tickets?status=closed", Some(&admin))
        .await;
    assert!(
        closed["data"]
            .as_array()
            .expect("tickets")
            .iter()
            .any(|t| t["id"] == json!(ticket_id)),
        "{closed}"
    );
    // Deleting the account closes its open ticket.
    let (status, body) = server
        .call(
            "DELETE",
            &format!("/v1/user/{}", senior.0),
            Some(&senior.1),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, open) = server
        .get("/v1/admin/support/tickets?status=open", Some(&admin))
        .await;
    assert!(
        open["data"]
            .as_array()
            .expect("tickets")
            .iter()
            .all(|t| t["id"] != json!(next_id)),
        "{open}"
    );
    let (_, closed) = server
        .get("/v1/admin/support/tickets?status=closed", Some(&admin))
        .await;
    let closed = closed["data"].as_array().expect("tickets");
    assert!(
        closed.iter().any(|t| t["id"] == json!(next_id)),
        "{closed:?}"
    );
}
