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
