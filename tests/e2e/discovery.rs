//! Section 4: `GET /v1/users` filters, visibility, pagination; section 11 admin list and
//! section 10 verification.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(
    search_filters_and_visibility,
    pagination_walks_every_page_once,
    admin_endpoints_and_verification_steps
);

async fn new_user(server: &Server, kind: &str, profile: Value) -> (String, String) {
    let (id, token, _) = server
        .sign_up(&unique_email(kind), "password-1", kind)
        .await;
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(profile),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (id, token)
}

fn ids(body: &Value) -> HashSet<String> {
    body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

async fn search_filters_and_visibility(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (ann, _) = new_user(&server, "senior", json!({"name": "Ann", "gender": "female", "dob": "1944-03-01",
        "city": "Boston", "country": "US", "bio": "Loves jazz records", "interests": [{"id": "gardening"}]})).await;
    let (bob, _) = new_user(
        &server,
        "senior",
        json!({"name": "Bob", "gender": "male", "dob": "1960-07-20",
        "city": "Denver", "country": "US", "bio": "Retired pilot"}),
    )
    .await;
    let (cy, cy_token) = new_user(
        &server,
        "senior",
        json!({"name": "Cy", "gender": "male", "dob": "1938-01-01",
        "city": "Lyon", "country": "France", "visibility": "seniors"}),
    )
    .await;
    let (dee, dee_token) = new_user(&server, "senior", json!({"name": "Dee"})).await;
    server
        .call("DELETE", &format!("/v1/user/{dee}"), Some(&dee_token), None)
        .await;
    let (vol, vol_token) = new_user(
        &server,
        "volunteer",
        json!({"name": "Val", "specialization": "nursing",
        "interests": [{"id": "gardening"}]}),
    )
    .await;
    let (_, vol2_token) = new_user(&server, "volunteer", json!({"name": "Vic"})).await;
    let get = |query: &str, token: &str| {
        let path = format!("/v1/users?{query}");
        let token = token.to_string();
        let server = &server;
        async move {
            let (status, body) = server.get(&path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };

    // A volunteer sees public seniors, not seniors-only ones, never deleted users or themself.
    let all = get("type=senior", &vol_token).await;
    assert_eq!(ids(&all), HashSet::from([ann.clone(), bob.clone()]));
    assert_eq!(all["pagination"]["totalItems"], json!(2));
    let first = &all["data"][0];
    for key in [
        "id",
        "name",
        "type",
        "gender",
        "age",
        "bio",
        "location",
        "picture",
        "rating",
        "totalReviews",
        "specialization",
        "interests",
        "language",
        "online",
        "verification",
        "viewer",
    ] {
        assert!(first.get(key).is_some(), "basic_user lacks {key}: {first}");
    }
    assert!(first.get("email").is_none(), "no email in basic_user");
    // A senior sees the seniors-only profile, but no unverified volunteer.
    assert_eq!(
        ids(&get("type=senior", &cy_token).await),
        HashSet::from([ann.clone(), bob.clone()])
    );
    let (_, senior_token, _) = server
        .sign_up(&unique_email("s"), "password-1", "senior")
        .await;
    assert!(ids(&get("", &senior_token).await).contains(&cy));
    assert!(ids(&get("type=volunteer", &senior_token).await).is_empty());
    // Other volunteers see the unverified volunteer.
    assert_eq!(
        ids(&get("type=volunteer", &vol2_token).await),
        HashSet::from([vol.clone()])
    );

    // Filters.
    assert_eq!(
        ids(&get("type=senior&gender=male", &vol_token).await),
        HashSet::from([bob.clone()])
    );
    assert_eq!(
        ids(&get("type=senior&minAge=70", &vol_token).await),
        HashSet::from([ann.clone()])
    );
    assert_eq!(
        ids(&get("type=senior&maxAge=70", &vol_token).await),
        HashSet::from([bob.clone()])
    );
    assert_eq!(
        ids(&get("location=bost", &vol_token).await),
        HashSet::from([ann.clone()])
    );
    assert_eq!(
        ids(&get("keyword=PILOT", &vol_token).await),
        HashSet::from([bob.clone()])
    );
    assert_eq!(
        ids(&get("keyword=garden", &vol2_token).await),
        HashSet::from([ann.clone(), vol.clone()])
    );
    assert_eq!(
        ids(&get("interests=gardening,chess", &vol2_token).await),
        HashSet::from([ann.clone(), vol.clone()])
    );
    assert_eq!(
        ids(&get("specialization=nursing", &vol2_token).await),
        HashSet::from([vol.clone()])
    );
    assert!(
        ids(&get("keyword=%25", &vol_token).await).is_empty(),
        "wildcards are literal"
    );

    for bad in [
        "type=admin",
        "gender=x",
        "minAge=old",
        "maxAge=-1",
        "minAge=80&maxAge=70",
        "availableOn=tomorrow",
        "interests=%25",
        "pageSize=0",
        "pageSize=500",
    ] {
        let (status, body) = server
            .get(&format!("/v1/users?{bad}"), Some(&vol_token))
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    assert_eq!(
        server.get("/v1/users", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn pagination_walks_every_page_once(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let mut expected = HashSet::new();
    for i in 0..7 {
        let (id, _, _) = server
            .sign_up(&unique_email(&format!("p{i}")), "password-1", "senior")
            .await;
        expected.insert(id);
    }
    let (_, reader, _) = server
        .sign_up(&unique_email("reader"), "password-1", "volunteer")
        .await;
    let mut seen = Vec::new();
    let mut key: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/users?type=senior&pageSize=3".to_string();
        if let Some(k) = &key {
            path.push_str(&format!("&lastEvaluatedKey={k}"));
        }
        let (status, body) = server.get(&path, Some(&reader)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["pagination"]["totalItems"].as_i64().unwrap() >= 7);
        seen.extend(ids(&body));
        pages += 1;
        // Someone signs up while we page: the walk must not repeat or skip the others.
        if pages == 1 {
            server
                .sign_up(&unique_email("late"), "password-1", "senior")
                .await;
        }
        match body["pagination"]["lastEvaluatedKey"].as_str() {
            Some(k) => key = Some(k.to_string()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "no row twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);

    // A key is bound to its list, filters and signature.
    let (_, body) = server
        .get("/v1/users?type=senior&pageSize=2", Some(&reader))
        .await;
    let key = body["pagination"]["lastEvaluatedKey"]
        .as_str()
        .unwrap()
        .to_string();
    let mut forged = key.clone();
    forged.replace_range(0..1, if key.starts_with('W') { "X" } else { "W" });
    for path in [
        format!("/v1/users?type=senior&pageSize=2&lastEvaluatedKey={forged}"),
        format!("/v1/users?type=volunteer&pageSize=2&lastEvaluatedKey={key}"),
        "/v1/users?lastEvaluatedKey=garbage".to_string(),
    ] {
        let (status, body) = server.get(&path, Some(&reader)).await;
        assert_error(status, &body, 400, "invalid_input");
    }
}

async fn admin_endpoints_and_verification_steps(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (admin_id, admin) = server.admin(&db).await;
    let (vol, vol_token, _) = server
        .sign_up(&unique_email("vol"), "password-1", "volunteer")
        .await;
    let (_, senior, _) = server
        .sign_up(&unique_email("sen"), "password-1", "senior")
        .await;

    // Admin-only, refused to others.
    for token in [&vol_token, &senior] {
        let (status, body) = server.get("/v1/admin/users", Some(token)).await;
        assert_error(status, &body, 403, "forbidden");
        let (status, body) = server
            .post(
                &format!("/v1/admin/user/{vol}/verification"),
                Some(token),
                json!({"step": "admin", "status": "complete"}),
            )
            .await;
        assert_error(status, &body, 403, "forbidden");
    }
    let (status, body) = server
        .get("/v1/admin/users?type=volunteer", Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), HashSet::from([vol.clone()]));
    assert!(body["data"][0]["email"].is_string(), "admins see emails");
    let (_, body) = server
        .get("/v1/admin/users?unverified=true", Some(&admin))
        .await;
    assert_eq!(ids(&body), HashSet::from([vol.clone()]));
    let (_, me) = server
        .get(&format!("/v1/user/{admin_id}"), Some(&admin))
        .await;
    assert_eq!(me["data"]["type"], json!("admin"));

    // Each status change reaches the volunteer's socket as user.update.
    let (mut ws, _) = server.ws_authenticated(&vol_token, None).await;
    let (status, body) = server
        .post(
            &format!("/v1/admin/user/{vol}/verification"),
            Some(&admin),
            json!({"step": "admin", "status": "complete"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["user"]["verification"]["admin"]["status"],
        json!("complete")
    );
    let push = ws.push("user.update").await;
    assert_eq!(
        push["data"]["user"]["verification"]["admin"]["status"],
        json!("complete")
    );

    // Background check: the sandbox fails last name "Fail", completes others.
    let details = |last: &str| {
        json!({"firstName": "Val", "lastName": last, "zipCode": "10001",
        "workLocations": [{"countryCode": "US", "stateCode": "NY", "city": "New York"}]})
    };
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&vol_token),
            details("Fail"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["verification"]["background"]["status"],
        json!("failed")
    );
    assert_eq!(
        ws.push("user.update").await["data"]["user"]["verification"]["background"]["status"],
        json!("in-progress")
    );
    assert_eq!(
        ws.push("user.update").await["data"]["user"]["verification"]["background"]["status"],
        json!("failed")
    );
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&vol_token),
            details("Smith"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["verification"]["background"]["status"],
        json!("complete")
    );
    // Basic is still incomplete (no email code, no profile), so not verified yet.
    assert_eq!(body["data"]["verification"]["verified"], json!(false));
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&vol_token),
            details("Smith"),
        )
        .await;
    assert_error(status, &body, 409, "conflict");

    // Bad input.
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&senior),
            details("Smith"),
        )
        .await;
    assert_error(status, &body, 422, "not_applicable");
    let (_, vol2, _) = server
        .sign_up(&unique_email("vol2"), "password-1", "volunteer")
        .await;
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&vol2),
            json!({"firstName": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .post(
            "/v1/verification/background",
            Some(&vol2),
            json!({"firstName": "A", "lastName": "B", "zipCode": "!", "workLocations": []}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    for bad in [
        json!({"step": "basic", "status": "complete"}),
        json!({"step": "admin", "status": "done"}),
    ] {
        let (status, body) = server
            .post(
                &format!("/v1/admin/user/{vol}/verification"),
                Some(&admin),
                bad,
            )
            .await;
        assert_error(status, &body, 400, "invalid_input");
    }
    let (status, body) = server
        .post(
            "/v1/admin/user/nobody/verification",
            Some(&admin),
            json!({"step": "admin", "status": "complete"}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (senior_id, _, _) = server
        .sign_up(&unique_email("s3"), "password-1", "senior")
        .await;
    let (status, body) = server
        .post(
            &format!("/v1/admin/user/{senior_id}/verification"),
            Some(&admin),
            json!({"step": "admin", "status": "complete"}),
        )
        .await;
    assert_error(status, &body, 422, "not_applicable");

    // The CLI refuses a bad admin.
    let (ok, _, stderr) = db.cli(&[
        "admin",
        "create",
        "--email",
        "not-an-email",
        "--password",
        "x",
    ]);
    assert!(!ok && stderr.contains("email"), "{stderr}");
}
