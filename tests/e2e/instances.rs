//! Several instances on one PostgreSQL database: pushes reach a socket whichever instance it is
//! connected to.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{unique_email, Backend, Server, TestDb};

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
