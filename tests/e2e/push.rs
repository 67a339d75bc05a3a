//! Section 10: push notifications. A device registers; a notification file (the built-in
//! provider) is written only while its user has no open socket and has push enabled; a token
//! the provider calls dead is dropped; a removed device gets nothing more.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::calls::pair;
use crate::helpers::{assert_error, Backend, Server, TestDb, Ws};

both_stores!(notifications_reach_offline_users_with_push_enabled);

/// Every notification file written so far.
fn notifications(db: &TestDb) -> Vec<Value> {
    let dir = db.data_dir.path().join("push");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("JSON file"))
        .collect()
}

fn with_body<'a>(files: &'a [Value], body: &str) -> Vec<&'a Value> {
    files
        .iter()
        .filter(|f| f["notification"]["body"] == json!(body))
        .collect()
}

/// Waits (up to 5 s) until a notification with `body` was written; returns them all.
async fn written(db: &TestDb, body: &str) -> Vec<Value> {
    for _ in 0..50 {
        let files = notifications(db);
        if !with_body(&files, body).is_empty() {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no notification with body {body:?}: {:?}",
        notifications(db)
    );
}

async fn message(ws: &mut Ws, chat_id: &str, text: &str) {
    let reply = ws
        .request(
            json!({"action": "chat.message.send", "chatId": chat_id, "message": {"text": text}}),
        )
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
}

/// Sends `text` and returns whether a notification with it appeared within 1.5 s.
async fn notified(db: &TestDb, ws: &mut Ws, chat_id: &str, text: &str) -> bool {
    message(ws, chat_id, text).await;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !with_body(&notifications(db), text).is_empty() {
            return true;
        }
    }
    false
}

async fn notifications_reach_offline_users_with_push_enabled(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let p = pair(&server, &db, 0).await;
    let (volunteer_id, volunteer) = p.volunteer.clone();

    // Registration: bad input is 400; a device can register more than once.
    for bad in [
        json!({"token": "tok-1"}),
        json!({"token": "tok-1", "platform": "blackberry"}),
        json!({"platform": "android"}),
        json!({"token": "", "platform": "android"}),
        json!({"token": "a\u{0}b", "platform": "android"}),
    ] {
        let (status, body) = server
            .post("/v1/push-notification", Some(&volunteer), bad)
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    for _ in 0..2 {
        let (status, body) = server
            .post(
                "/v1/push-notification",
                Some(&volunteer),
                json!({"token": "tok-1", "platform": "android"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"], Value::Null);
    }
    let (status, body) = server
        .post(
            "/v1/push-notification",
            None,
            json!({"token": "tok-1", "platform": "android"}),
        )
        .await;
    assert_error(status, &body, 401, "unauthenticated");

    // The volunteer has no socket: a message from the senior becomes a notification.
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    message(&mut senior_ws, &p.chat_id, "Are you free tomorrow?").await;
    let files = written(&db, "Are you free tomorrow?").await;
    let sent = with_body(&files, "Are you free tomorrow?");
    assert_eq!(sent.len(), 1, "one device, one notification: {files:?}");
    let file = sent[0];
    assert_eq!(file["userId"], json!(volunteer_id));
    assert_eq!(
        file["device"],
        json!({"token": "tok-1", "platform": "android"})
    );
    assert_eq!(file["notification"]["action"], json!("chat.message.new"));
    assert_eq!(file["notification"]["data"]["chatId"], json!(p.chat_id));
    assert!(file["notification"]["title"].is_string(), "{file}");
    // The sender is online and it was their own message: nothing for them.
    assert!(
        files.iter().all(|f| f["userId"] == json!(volunteer_id)),
        "{files:?}"
    );

    // With a socket open, the push goes to the socket and no notification is written.
    let (mut volunteer_ws, _) = server.ws_authenticated(&volunteer, None).await;
    assert!(!notified(&db, &mut senior_ws, &p.chat_id, "See you on the call").await);
    let pushed = volunteer_ws.push("chat.message.new").await;
    assert_eq!(
        pushed["data"]["message"]["text"],
        json!("See you on the call")
    );
    drop(volunteer_ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(notified(&db, &mut senior_ws, &p.chat_id, "Offline again").await);

    // Push disabled: nothing is written.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{volunteer_id}"),
            Some(&volunteer),
            Some(json!({"pushNotification": {"enabled": false}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!notified(&db, &mut senior_ws, &p.chat_id, "Push is off").await);
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{volunteer_id}"),
            Some(&volunteer),
            Some(json!({"pushNotification": {"enabled": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A token the provider calls dead is dropped; the good device still gets its notification.
    let (status, body) = server
        .post(
            "/v1/push-notification",
            Some(&volunteer),
            json!({"token": "invalid-token-9", "platform": "ios"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(notified(&db, &mut senior_ws, &p.chat_id, "Two devices now").await);
    let store = db.connect().await;
    let mut tokens: Vec<String> = vec![];
    for _ in 0..30 {
        tokens = talkamie_projections::users::push_devices(&store, &volunteer_id)
            .await
            .expect("devices")
            .into_iter()
            .map(|(_, token, _)| token)
            .collect();
        if tokens == ["tok-1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tokens, ["tok-1"], "the dead token is dropped");

    // Removing the device (and an unknown one) stops the notifications.
    for token in ["tok-1", "never-registered"] {
        let (status, body) = server
            .call(
                "DELETE",
                "/v1/push-notification",
                Some(&volunteer),
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(!notified(&db, &mut senior_ws, &p.chat_id, "Nobody listens").await);

    // An incoming call is a notification too.
    let (status, body) = server
        .post(
            "/v1/push-notification",
            Some(&volunteer),
            json!({"token": "tok-2", "platform": "web"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    crate::ledger::fund(&server, &p.senior.1, 500).await;
    let reply = senior_ws
        .request(json!({"action": "call.start", "chatId": p.chat_id, "type": "video"}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let mut ringing = None;
    for _ in 0..50 {
        ringing = notifications(&db)
            .into_iter()
            .find(|f| f["notification"]["action"] == "call.incoming");
        if ringing.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ringing = ringing.expect("a call.incoming notification");
    assert_eq!(ringing["device"]["token"], json!("tok-2"));
    assert_eq!(
        ringing["notification"]["title"],
        json!("Incoming video call")
    );
    assert_eq!(
        ringing["notification"]["data"]["callId"],
        reply["data"]["call"]["id"]
    );
    // Long after, the messages sent while online, with push off or without a device still
    // have no notification (a slow dispatcher would have written them by now).
    let files = notifications(&db);
    for quiet in ["See you on the call", "Push is off", "Nobody listens"] {
        assert!(with_body(&files, quiet).is_empty(), "{quiet}: {files:?}");
    }
}
