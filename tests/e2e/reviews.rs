//! Section 10: reviews. Only after an answered call between the two ended; one per rater and
//! ratee (create, update, delete); `rating` is the mean and `totalReviews` the count, on every
//! user shape; the ratee gets a `review` alert; `viewer.review` points at my review.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::calls::{act, answered_call, pair, Pair};
use crate::helpers::{assert_error, Backend, Server, TestDb};
use crate::ledger::{fund, user};

both_stores!(reviews_follow_a_call_and_keep_the_mean);

/// An answered call between the pair, hung up at once (it ends as `ended`).
async fn talk(server: &Server, p: &Pair) {
    let (mut senior_ws, _volunteer_ws, call_id) = answered_call(server, p).await;
    act(
        &mut senior_ws,
        json!({"action": "call.end", "callId": call_id}),
    )
    .await;
    senior_ws.push("call.ended").await;
}

async fn review(
    server: &Server,
    method: &str,
    token: &str,
    ratee: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server
        .call(
            method,
            &format!("/v1/user/{ratee}/review"),
            Some(token),
            body,
        )
        .await
}

fn rating_of(body: &Value) -> (f64, i64) {
    (
        body["rating"].as_f64().unwrap_or(-1.0),
        body["totalReviews"].as_i64().unwrap_or(-1),
    )
}

async fn reviews_follow_a_call_and_keep_the_mean(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let p = pair(&server, &db, 500).await;
    let volunteer = p.volunteer.0.clone();

    // Connected but never talked: refused.
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &volunteer,
        Some(json!({"text": "Nice", "rate": 5})),
    )
    .await;
    assert_error(status, &body, 422, "no_ended_call");
    // A rejected call is no conversation either.
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    let (mut volunteer_ws, _) = server.ws_authenticated(&p.volunteer.1, None).await;
    let call = act(
        &mut senior_ws,
        json!({"action": "call.start", "chatId": p.chat_id, "type": "audio"}),
    )
    .await;
    act(
        &mut volunteer_ws,
        json!({"action": "call.reject", "callId": call["id"]}),
    )
    .await;
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &volunteer,
        Some(json!({"text": "Nice", "rate": 5})),
    )
    .await;
    assert_error(status, &body, 422, "no_ended_call");
    drop(senior_ws);

    talk(&server, &p).await;
    // Bad input is 400 and stores nothing.
    for bad in [
        json!({"text": "x", "rate": 0}),
        json!({"text": "x", "rate": 6}),
        json!({"text": "x", "rate": 4.5}),
        json!({"text": "x", "rate": "5"}),
        json!({"text": "x"}),
        json!({"text": 5, "rate": 5}),
        json!({"text": "x".repeat(2001), "rate": 5}),
        json!([1, 2]),
    ] {
        let (status, body) =
            review(&server, "POST", &p.senior.1, &volunteer, Some(bad.clone())).await;
        assert_error(status, &body, 400, "invalid_input");
    }
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &p.senior.0,
        Some(json!({"rate": 5})),
    )
    .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        "no-such-user",
        Some(json!({"rate": 5})),
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    for method in ["POST", "PUT", "DELETE"] {
        let body = (method != "DELETE").then(|| json!({"rate": 5}));
        let (status, answer) = review(&server, method, &p.senior.1, "bad%00id", body).await;
        assert_error(status, &answer, 404, "not_found");
    }
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &volunteer,
        Some(json!({"rate": 5, "text": "nul\u{0}here"})),
    )
    .await;
    assert_error(status, &body, 400, "invalid_input");

    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &volunteer,
        Some(json!({"text": "Lovely chat", "rate": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first = &body["data"]["review"];
    assert_eq!(first["rate"], json!(5));
    assert_eq!(first["text"], json!("Lovely chat"));
    assert_eq!(first["rater"]["id"], json!(p.senior.0));
    assert_eq!(rating_of(&body["data"]["user"]), (5.0, 1));
    let review_id = first["id"].as_str().expect("review id").to_string();
    // The ratee hears of it, on the socket and in the alert list.
    let alert = volunteer_ws
        .push_where("alert.new", |d| d["data"]["alert"]["type"] == "review")
        .await;
    assert_eq!(alert["data"]["alert"]["review"]["id"], json!(review_id));
    assert_eq!(alert["data"]["alert"]["review"]["rate"], json!(5));
    let update = volunteer_ws
        .push_where("user.update", |d| d["data"]["user"]["totalReviews"] == 1)
        .await;
    assert_eq!(update["data"]["user"]["rating"], json!(5.0));
    let (_, alerts) = server.get("/v1/alerts", Some(&p.volunteer.1)).await;
    assert!(
        alerts["data"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["type"] == "review" && a["review"]["id"] == json!(review_id)),
        "{alerts}"
    );

    // One review per rater and ratee.
    let (status, body) = review(
        &server,
        "POST",
        &p.senior.1,
        &volunteer,
        Some(json!({"text": "Again", "rate": 1})),
    )
    .await;
    assert_error(status, &body, 409, "already_exists");

    // A second senior who talked with the volunteer: the mean of 5 and 4.
    let other = user(&server, "senior").await;
    let chat_id = server.connect(&other, &p.volunteer).await;
    fund(&server, &other.1, 500).await;
    let other_pair = Pair {
        admin: p.admin.clone(),
        senior: other.clone(),
        volunteer: p.volunteer.clone(),
        chat_id,
    };
    talk(&server, &other_pair).await;
    let (status, body) = review(
        &server,
        "POST",
        &other.1,
        &volunteer,
        Some(json!({"text": "Good", "rate": 4})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(rating_of(&body["data"]["user"]), (4.5, 2));
    let other_review_id = body["data"]["review"]["id"].clone();
    // The volunteer reviews a senior too (either side may rate the other).
    let (status, body) = review(
        &server,
        "POST",
        &p.volunteer.1,
        &p.senior.0,
        Some(json!({"rate": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(rating_of(&body["data"]["user"]), (3.0, 1));

    // Update: only what is given changes; the mean follows (2 and 4).
    let (status, body) = review(
        &server,
        "PUT",
        &p.senior.1,
        &volunteer,
        Some(json!({"rate": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["review"]["id"], json!(review_id));
    assert_eq!(body["data"]["review"]["text"], json!("Lovely chat"));
    assert_eq!(rating_of(&body["data"]["user"]), (3.0, 2));
    let (status, body) = review(&server, "PUT", &p.senior.1, &volunteer, Some(json!({}))).await;
    assert_error(status, &body, 400, "invalid_input");
    let changed = volunteer_ws
        .push_where("alert.update", |d| {
            d["data"]["alert"]["review"]["rate"] == 2
        })
        .await;
    assert_eq!(changed["data"]["alert"]["review"]["id"], json!(review_id));

    // The shapes: basic_user rating, viewer.review, the lists.
    let (_, seen) = server
        .get(&format!("/v1/user/{volunteer}"), Some(&p.senior.1))
        .await;
    assert_eq!(rating_of(&seen["data"]), (3.0, 2));
    assert_eq!(seen["data"]["viewer"]["review"]["id"], json!(review_id));
    let (_, seen) = server
        .get(&format!("/v1/user/{volunteer}"), Some(&other.1))
        .await;
    assert_eq!(seen["data"]["viewer"]["review"]["id"], other_review_id);
    let (status, list) = server
        .get(&format!("/v1/user/{volunteer}/reviews"), Some(&other.1))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list["data"].as_array().expect("reviews");
    assert_eq!(items.len(), 2);
    assert_eq!(list["pagination"]["totalItems"], json!(2));
    let mine = items
        .iter()
        .find(|r| r["id"] == json!(review_id))
        .expect("senior's review");
    assert_eq!(mine["rate"], json!(2));
    assert!(mine["rater"]["name"].is_string(), "{mine}");
    assert!(mine["timestamp"].is_string(), "{mine}");
    let (_, about_me) = server.get("/v1/reviews", Some(&p.volunteer.1)).await;
    let full = about_me["data"].as_array().expect("full reviews");
    assert_eq!(full.len(), 2);
    assert!(
        full.iter().all(|r| r["rater"]["type"] == "senior"),
        "{about_me}"
    );
    let (_, paged) = server
        .get("/v1/reviews?pageSize=1", Some(&p.volunteer.1))
        .await;
    assert_eq!(paged["data"].as_array().map(Vec::len), Some(1));
    assert!(
        paged["pagination"]["lastEvaluatedKey"].is_string(),
        "{paged}"
    );

    // Delete: the mean drops the review; a second delete or update finds nothing.
    let (status, body) = review(&server, "DELETE", &other.1, &volunteer, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(rating_of(&body["data"]["user"]), (2.0, 1));
    let (status, body) = review(&server, "DELETE", &other.1, &volunteer, None).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = review(
        &server,
        "PUT",
        &other.1,
        &volunteer,
        Some(json!({"rate": 5})),
    )
    .await;
    assert_error(status, &body, 404, "not_found");
    // After a delete the rater may review again (they did talk).
    let (status, body) = review(
        &server,
        "POST",
        &other.1,
        &volunteer,
        Some(json!({"rate": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(rating_of(&body["data"]["user"]), (3.5, 2));

    // A rebuild of the read models gives the same ratings.
    drop(volunteer_ws);
    server.stop().await;
    let (ok, out, err) = db.cli(&["projections", "rebuild", "reviews"]);
    assert!(ok, "{out}{err}");
    let server = Server::start(&db).await;
    let (_, seen) = server
        .get(&format!("/v1/user/{volunteer}"), Some(&p.senior.1))
        .await;
    assert_eq!(rating_of(&seen["data"]), (3.5, 2));
}
