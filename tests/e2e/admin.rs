//! Section 11: the admin API. Every `/v1/admin/` endpoint refuses non-admins (403) and
//! anonymous callers (401); admins add FAQs and interests that everyone then reads.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{assert_error, Backend, Server, TestDb};
use crate::ledger::user;

both_stores!(admin_endpoints_are_for_admins_and_grow_the_catalogs);

async fn admin_endpoints_are_for_admins_and_grow_the_catalogs(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(&db, &[("TALKAMIE_ADJUSTABLE_CLOCK", "true")]).await;
    let (_, admin) = server.admin(&db).await;
    let senior = user(&server, "senior").await;
    let volunteer = user(&server, "volunteer").await;

    let endpoints = [
        ("GET", "/v1/admin/users".to_string(), None),
        (
            "POST",
            format!("/v1/admin/user/{}/verification", volunteer.0),
            Some(json!({"step": "admin", "status": "complete"})),
        ),
        ("GET", "/v1/admin/support/tickets".to_string(), None),
        ("GET", "/v1/admin/ledger/audit".to_string(), None),
        (
            "POST",
            "/v1/admin/faqs".to_string(),
            Some(json!({"type": "safety", "question": "Q?", "answer": "A."})),
        ),
        (
            "POST",
            "/v1/admin/interests".to_string(),
            Some(json!({"name": "Ham radio", "emoji": "♟️"})),
        ),
        (
            "POST",
            "/v1/admin/clock".to_string(),
            Some(json!({"advanceSeconds": 60})),
        ),
    ];
    for (method, path, body) in &endpoints {
        for token in [&senior.1, &volunteer.1] {
            let (status, answer) = server.call(method, path, Some(token), body.clone()).await;
            assert_error(status, &answer, 403, "forbidden");
        }
        let (status, answer) = server.call(method, path, None, body.clone()).await;
        assert_error(status, &answer, 401, "unauthenticated");
    }
    // The refused writes stored nothing.
    let (_, faqs) = server.get("/v1/faqs/safety?keyword=Q%3F", None).await;
    assert_eq!(faqs["data"], json!([]), "{faqs}");

    // An admin adds a FAQ: everyone reads it under its type.
    let (status, body) = server
        .post(
            "/v1/admin/faqs",
            Some(&admin),
            json!({"type": "safety", "question": "Can I block someone?", "answer": "Yes, from their profile."}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let faq_id = body["data"]["id"].clone();
    let (_, faqs) = server.get("/v1/faqs/safety", None).await;
    let added = faqs["data"]
        .as_array()
        .expect("faqs")
        .iter()
        .find(|f| f["id"] == faq_id)
        .cloned()
        .expect("the new FAQ");
    assert_eq!(added["question"], json!("Can I block someone?"));
    let (_, found) = server.get("/v1/faqs?keyword=block%20someone", None).await;
    assert_eq!(found["data"].as_array().map(Vec::len), Some(1), "{found}");
    for bad in [
        json!({"type": "gossip", "question": "Q?", "answer": "A."}),
        json!({"type": "safety", "answer": "A."}),
        json!({"type": "safety", "question": "Q?", "answer": ""}),
        json!({"type": "safety", "question": "Q\u{0}?", "answer": "A."}),
    ] {
        let (status, body) = server.post("/v1/admin/faqs", Some(&admin), bad).await;
        assert_error(status, &body, 400, "invalid_input");
    }

    // An admin adds an interest: everyone can pick it; names are unique whatever the case.
    let (status, body) = server
        .post(
            "/v1/admin/interests",
            Some(&admin),
            json!({"name": "Ham radio", "emoji": "♟️"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let interest_id = body["data"]["id"].as_str().expect("id").to_string();
    let (status, body) = server
        .post(
            "/v1/admin/interests",
            Some(&admin),
            json!({"name": "HAM RADIO", "emoji": "♞"}),
        )
        .await;
    assert_error(status, &body, 409, "already_exists");
    let (status, body) = server
        .post(
            "/v1/admin/interests",
            Some(&admin),
            json!({"name": "", "emoji": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (_, interests) = server.get("/v1/interests?keyword=ham%20rad", None).await;
    assert_eq!(
        interests["data"],
        json!([{"id": interest_id, "name": "Ham radio", "emoji": "♟️"}])
    );
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{}", senior.0),
            Some(&senior.1),
            Some(json!({"interests": [{"id": interest_id}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["interests"][0]["name"],
        json!("Ham radio"),
        "{body}"
    );
}
