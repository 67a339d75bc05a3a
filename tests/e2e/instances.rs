//! Several instances on one PostgreSQL database: pushes reach a socket whichever instance it is
//! connected to.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{unique_email, Backend, Incoming, Server, TestDb};
use crate::ledger::{balance, checkout, fund, ledger_server, open_top_up, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_cross_instances() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let one = Server::start(&db).await;
    let two = Server::start(&db).await;
    let (user_id, access, _) = one
        .sign_up(&unique_email("multi"), "password-1", "senior")
        .await;

    // Tokens of one instance work on the other (shared secrets), and so do its read models.
    let (mut on_two, reply) = two.ws_authenticated(&access, None).await;
    assert_eq!(reply["data"]["id"], json!(user_id));
    let (mut on_one, _) = one.ws_authenticated(&access, None).await;

    let (status, _) = one
        .call(
            "PUT",
            &format!("/v1/user/{user_id}"),
            Some(&access),
            Some(json!({"bio": "from one"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let pushed = on_two.push("user.update").await;
    assert_eq!(pushed["data"]["user"]["bio"], json!("from one"));
    assert_eq!(
        on_one.push("user.update").await["position"],
        pushed["position"]
    );

    let (status, _) = two
        .call(
            "PUT",
            &format!("/v1/user/{user_id}"),
            Some(&access),
            Some(json!({"bio": "from two"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let pushed = on_one.push("user.update").await;
    assert_eq!(pushed["data"]["user"]["bio"], json!("from two"));
    assert_eq!(
        on_two.push("user.update").await["position"],
        pushed["position"]
    );

    // Exactly once each.
    assert!(on_two
        .next_within(Duration::from_millis(1500))
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_is_shared_between_instances() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let one = Server::start(&db).await;
    let two = Server::start(&db).await;
    let (ann, ann_token, _) = one
        .sign_up(&unique_email("ann"), "password-1", "senior")
        .await;
    let (_, bob_token, _) = one
        .sign_up(&unique_email("bob"), "password-1", "senior")
        .await;
    let online_on_one = || async {
        let (status, body) = one.get(&format!("/v1/user/{ann}"), Some(&bob_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["online"].as_bool().unwrap()
    };
    assert!(!online_on_one().await);
    let (ws, _) = two.ws_authenticated(&ann_token, None).await;
    let mut seen = false;
    for _ in 0..50 {
        if online_on_one().await {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "instance one sees the socket on instance two");
    drop(ws);
    let mut gone = false;
    for _ in 0..50 {
        if !online_on_one().await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "closing the socket makes the user offline everywhere");
}

/// Section 6 across instances: a senior on instance one and a volunteer on instance two chat
/// with receipts both ways; instance two is SIGKILLed while the senior keeps writing; the
/// volunteer reconnects to instance one with `since` and gets every missed message exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_across_instances_survives_a_killed_instance() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let one = Server::start(&db).await;
    let two = Server::start(&db).await;
    let (senior, s_token, _) = one
        .sign_up(&unique_email("sen"), "password-1", "senior")
        .await;
    let (volunteer, v_token, _) = two
        .sign_up(&unique_email("vol"), "password-1", "volunteer")
        .await;
    let (status, _) = one
        .call(
            "POST",
            &format!("/v1/user/{volunteer}/connection"),
            Some(&s_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = two
        .call(
            "POST",
            &format!("/v1/user/{senior}/connection/accept"),
            Some(&v_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chat = body["data"]["chat"]["id"].as_str().unwrap().to_string();

    let (mut s_ws, _) = one.ws_authenticated(&s_token, None).await;
    let (mut v_ws, _) = two.ws_authenticated(&v_token, None).await;
    let send = |text: &str| json!({"action": "chat.message.send", "chatId": chat, "message": {"text": text}});

    // One -> two, with a delivered receipt back.
    let reply = s_ws.request(send("hello from one")).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let pushed = v_ws.push("chat.message.new").await;
    assert_eq!(pushed["data"]["message"]["text"], json!("hello from one"));
    let mut last_seen = pushed["position"].as_i64().unwrap();
    let message_id = pushed["data"]["message"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = v_ws
        .request(json!({"action": "chat.messages.update", "chatId": chat,
                        "messagesMap": {&message_id: {"status": "read"}}}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let receipt = s_ws.push("chat.messages.update").await;
    assert_eq!(
        receipt["data"]["messagesMap"][&message_id]["status"],
        json!("read")
    );

    // Two -> one.
    let reply = v_ws.request(send("hello from two")).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let pushed = s_ws.push("chat.message.new").await;
    assert_eq!(pushed["data"]["message"]["text"], json!("hello from two"));
    // The volunteer's own send also reaches their socket (for their other devices).
    let own = v_ws.push("chat.message.new").await;
    last_seen = last_seen.max(own["position"].as_i64().unwrap());

    // Instance two dies mid-conversation; the senior keeps writing.
    drop(v_ws);
    two.kill();
    let texts: Vec<String> = (1..=10)
        .map(|i| format!("while you were away {i}"))
        .collect();
    for text in &texts {
        let reply = s_ws.request(send(text)).await;
        assert_eq!(reply["success"], json!(true), "{reply}");
    }

    // The volunteer comes back through instance one.
    let (mut v_ws, _) = one.ws_authenticated(&v_token, Some(last_seen)).await;
    let mut received = Vec::new();
    let mut positions = Vec::new();
    while let Some(Incoming::Json(frame)) = v_ws.next_within(Duration::from_secs(3)).await {
        positions.push(frame["position"].as_i64().unwrap());
        if frame["action"] == json!("chat.message.new") {
            received.push(
                frame["data"]["message"]["text"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(received, texts, "every missed message, once, in order");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );
    assert!(positions.iter().all(|p| *p > last_seen));

    // And the conversation goes on.
    let reply = v_ws.request(send("back again")).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    // (The senior's socket also holds the pushes of its own sends; skip to the reply.)
    let pushed = s_ws
        .push_where("chat.message.new", |v| {
            v["data"]["message"]["sender"]["id"] == json!(volunteer)
        })
        .await;
    assert_eq!(pushed["data"]["message"]["text"], json!("back again"));
}

/// Each instance keeps the aggregates its commands left in memory; another instance's writes
/// must never be missed because of it. A payment session opened on one instance is paid on
/// the other (whose copy of the wallet does not know the session: it must look again, not
/// refuse), and one sender alternates between the instances in one chat (each copy is behind
/// the other instance's last message: the append must notice, and store each message once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_never_decide_on_a_stale_copy() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let one = ledger_server(&db, &[]).await;
    let two = ledger_server(&db, &[]).await;
    let senior = user(&one, "senior").await;
    let volunteer = user(&one, "volunteer").await;

    fund(&one, &senior.1, 500).await;
    let (_, session, _) = open_top_up(&two, &senior.1, 300).await;
    let (status, html) = checkout(&one, &session, "pay").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"data-status="succeeded""#), "{html}");
    assert_eq!(balance(&one, &senior.1).await, 800);
    assert_eq!(balance(&two, &senior.1).await, 800);

    let chat = one.connect(&senior, &volunteer).await;
    let (mut on_one, _) = one.ws_authenticated(&senior.1, None).await;
    let (mut on_two, _) = two.ws_authenticated(&senior.1, None).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let ws = if i % 2 == 0 { &mut on_one } else { &mut on_two };
        let reply = ws
            .request(
                json!({"action": "chat.message.send", "requestId": i, "chatId": chat,
                            "message": {"text": format!("message {i}")}}),
            )
            .await;
        assert_eq!(reply["success"], json!(true), "{reply}");
        sent.push(reply["data"]["message"]["id"].clone());
    }
    let (status, body) = two
        .get(
            &format!("/v1/chat/{chat}/messages?pageSize=50"),
            Some(&volunteer.1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut stored: Vec<Value> = body["data"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    stored.reverse();
    assert_eq!(stored, sent, "each message stored once, in order");

    // From the third send on each instance, its copy is known to be contended: a conflict is
    // answered by catching the copy up with the other instance's messages, not by a reload.
    let mut caught_up = 0.0;
    for server in [&one, &two] {
        let metrics = reqwest::get(format!("{}/metrics", server.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        caught_up += metrics
            .lines()
            .find(|l| l.starts_with("command_copy_catch_ups_total{aggregate=\"Pair\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(caught_up >= 10.0, "copies caught up: {caught_up}");

    // A stale single-event append writes nothing: no dead row (and no dead index entries) left
    // in the log by the conflicts above. pgstattuple reads the table itself, not the
    // statistics, which are reported late.
    let talkamie_projections::Db::Postgres(pool) = db.connect().await else {
        unreachable!("a PostgreSQL test database");
    };
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&pool)
        .await
        .expect("pgstattuple (PostgreSQL contrib)");
    let (live, dead): (i64, i64) =
        sqlx::query_as("SELECT tuple_count, dead_tuple_count FROM pgstattuple('events')")
            .fetch_one(&pool)
            .await
            .expect("pgstattuple(events)");
    assert!(live >= 20, "events: {live}");
    assert_eq!(dead, 0, "dead rows in the log after {caught_up} conflicts");
}
