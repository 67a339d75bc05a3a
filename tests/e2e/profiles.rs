//! Sections 2, 4 and 13: user shapes, profile validation, visibility, metas, catalogs and
//! account deletion with crypto-shredding.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::{assert_error, unique_email, Backend, Server, TestDb};

both_stores!(
    profile_fields_are_validated_and_shown,
    metas_are_filtered_by_reader_level,
    visibility_rules_hide_profiles,
    catalogs_are_seeded_and_searchable,
    deletion_leaves_nothing_personal_behind
);

async fn put_user(server: &Server, id: &str, token: &str, body: Value) -> (StatusCode, Value) {
    server
        .call("PUT", &format!("/v1/user/{id}"), Some(token), Some(body))
        .await
}

async fn profile_fields_are_validated_and_shown(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (id, token, _) = server
        .sign_up(&unique_email("prof"), "password-1", "volunteer")
        .await;

    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({
            "name": "  Grace Hopper ", "gender": "female", "bio": "Retired nurse", "language": "en",
            "visibility": "public", "country": "US", "state": "NY", "city": "New York",
            "dob": "1950-06-15", "timezone": "America/New_York", "specialization": "cardiology",
            "certificateState": "NY", "licenseId": "RN-12345",
            "interests": [{"id": "gardening"}, {"name": "Tango", "emoji": "💃"}],
            "maxCallDuration": 1800, "maxCallCount": 3, "pushNotification": {"enabled": false},
            "paypalEmail": "grace@example.com"
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let me = &body["data"];
    assert_eq!(me["name"], json!("Grace Hopper"));
    assert_eq!(me["gender"], json!("female"));
    assert_eq!(
        me["location"],
        json!({"city": "New York", "state": "NY", "country": "US"})
    );
    assert_eq!(me["dob"], json!("1950-06-15"));
    assert!(me["age"].as_u64().is_some_and(|a| a >= 75), "{me}");
    assert_eq!(me["timezone"], json!("America/New_York"));
    assert_eq!(me["specialization"], json!({"area": "cardiology"}));
    assert_eq!(me["license"], json!({"id": "RN-12345"}));
    assert_eq!(me["interests"][0]["id"], json!("gardening"));
    assert!(me["interests"][0]["emoji"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(me["interests"][1]["name"], json!("Tango"));
    assert_eq!(
        me["preferences"]["call"],
        json!({"maxCount": 3, "maxDuration": 1800})
    );
    assert_eq!(
        me["preferences"]["notifications"]["push"]["enabled"],
        json!(false)
    );
    assert_eq!(me["ledger"]["paypal"]["email"], json!("grace@example.com"));
    assert_eq!(me["verification"]["basic"]["status"], json!("in-progress"));
    for key in [
        "availability",
        "bookedSlots",
        "totalUnreadChats",
        "insertDate",
        "lastLoginDate",
    ] {
        assert!(
            me.get(key).is_some() || me["availability"].get(key).is_some(),
            "{key} missing: {me}"
        );
    }
    let (_, body) = put_user(
        &server,
        &id,
        &token,
        json!({"maxCallDuration": "unlimited", "timezone": ""}),
    )
    .await;
    assert_eq!(
        body["data"]["preferences"]["call"]["maxDuration"],
        json!("unlimited")
    );
    assert_eq!(body["data"]["timezone"], json!(null));

    // Another user sees full_user: no email, no ledger or preferences.
    let (_, other_token, _) = server
        .sign_up(&unique_email("peer"), "password-1", "volunteer")
        .await;
    let (status, body) = server
        .get(&format!("/v1/user/{id}"), Some(&other_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], json!("Grace Hopper"));
    assert_eq!(body["data"]["email"], json!(null));
    assert!(body["data"].get("ledger").is_none() && body["data"].get("preferences").is_none());
    assert_eq!(body["data"]["verification"], json!({"verified": false}));

    // Bad input, each answered with what is wrong.
    let cases = [
        (json!({"gender": "robot"}), "gender"),
        (json!({"visibility": "everyone"}), "visibility"),
        (json!({"dob": "2999-01-01"}), "dob"),
        (json!({"dob": "15/06/1950"}), "dob"),
        (json!({"bio": "x".repeat(1001)}), "bio"),
        (json!({"name": ""}), "name"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"specialization": "astrology"}), "specialization"),
        (
            json!({"interests": [{"id": "no-such-interest"}]}),
            "interests[0]",
        ),
        (json!({"maxCallDuration": 5}), "maxCallDuration"),
        (json!({"maxCallCount": 0}), "maxCallCount"),
        (json!({"paypalEmail": "nope"}), "paypalEmail"),
        (json!({"metaAction": 7}), "metaAction"),
    ];
    for (input, field) in cases {
        let (status, body) = put_user(&server, &id, &token, input.clone()).await;
        assert_error(status, &body, 400, "invalid_input");
        assert!(body["details"][field].is_string(), "{input} -> {body}");
    }
    let (status, body) = put_user(&server, &id, &token, json!({"gender": 5})).await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({"picture": "someone-elses.png"}),
    )
    .await;
    assert_error(status, &body, 422, "unknown_file");
    let (other_id, _, _) = server
        .sign_up(&unique_email("x"), "password-1", "senior")
        .await;
    let (status, body) = put_user(&server, &other_id, &token, json!({"bio": "hijack"})).await;
    assert_error(status, &body, 403, "forbidden");
    // Nothing of the refused requests was stored.
    let (_, me) = server.get(&format!("/v1/user/{id}"), Some(&token)).await;
    assert_eq!(me["data"]["bio"], json!("Retired nurse"));
    assert_eq!(me["data"]["gender"], json!("female"));
}

async fn metas_are_filtered_by_reader_level(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (id, token, _) = server
        .sign_up(&unique_email("meta"), "password-1", "senior")
        .await;
    let (_, reader, _) = server
        .sign_up(&unique_email("reader"), "password-1", "senior")
        .await;

    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({"metas": {
            "theme": "dark",
            "lat": {"access": 1, "value": 52.5},
            "friends": {"access": 2, "value": ["a", "b"]},
            "diary": {"access": 3, "value": true}
        }}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["metas"],
        json!({"theme": "dark", "lat": 52.5, "friends": ["a", "b"], "diary": true})
    );
    let (_, seen) = server.get(&format!("/v1/user/{id}"), Some(&reader)).await;
    assert_eq!(seen["data"]["metas"], json!({"theme": "dark", "lat": 52.5}));

    // Over WebSocket too: user.get as the reader, user.update and user.me as the owner.
    let (mut ws, _) = server.ws_authenticated(&reader, None).await;
    let reply = ws
        .request(json!({"action": "user.get", "userId": id}))
        .await;
    assert_eq!(
        reply["data"]["metas"],
        json!({"theme": "dark", "lat": 52.5}),
        "{reply}"
    );
    let (mut own, _) = server.ws_authenticated(&token, None).await;
    let reply = own
        .request(json!({"action": "user.update", "metas": {"theme": null, "lang": "fr"}}))
        .await;
    assert_eq!(
        reply["data"]["metas"],
        json!({"lat": 52.5, "friends": ["a", "b"], "diary": true, "lang": "fr"}),
        "{reply}"
    );
    // metaAction 1 replaces all, 2 removes all.
    let (_, body) = put_user(
        &server,
        &id,
        &token,
        json!({"metaAction": 1, "metas": {"only": 1}}),
    )
    .await;
    assert_eq!(body["data"]["metas"], json!({"only": 1}));
    let (_, body) = put_user(&server, &id, &token, json!({"metaAction": 2})).await;
    assert_eq!(body["data"]["metas"], json!({}));

    // Limits: 21 metas, a level above your own, big values, object values.
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, body) = put_user(&server, &id, &token, json!({"metas": many})).await;
    assert_error(status, &body, 400, "invalid_input");
    let twenty: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, _) = put_user(&server, &id, &token, json!({"metas": twenty})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = put_user(&server, &id, &token, json!({"metas": {"one-more": 1}})).await;
    assert_error(status, &body, 422, "too_many_metas");
    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({"metaAction": 1, "metas": {"admin-only": {"access": 4, "value": 1}}}),
    )
    .await;
    assert_error(status, &body, 422, "meta_access_too_high");
    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({"metas": {"big": "x".repeat(1100)}}),
    )
    .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = put_user(&server, &id, &token, json!({"metas": {"obj": {"a": 1}}})).await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = put_user(
        &server,
        &id,
        &token,
        json!({"metas": {"lvl": {"access": 9, "value": 1}}}),
    )
    .await;
    assert_error(status, &body, 400, "invalid_input");
}

async fn visibility_rules_hide_profiles(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (senior_id, senior, _) = server
        .sign_up(&unique_email("s"), "password-1", "senior")
        .await;
    let (vol_id, vol, _) = server
        .sign_up(&unique_email("v"), "password-1", "volunteer")
        .await;
    let (_, other_vol, _) = server
        .sign_up(&unique_email("v2"), "password-1", "volunteer")
        .await;

    // Unverified volunteers are invisible to seniors, visible to other volunteers.
    let (status, body) = server
        .get(&format!("/v1/user/{vol_id}"), Some(&senior))
        .await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(
        server
            .get(&format!("/v1/user/{vol_id}"), Some(&other_vol))
            .await
            .0,
        StatusCode::OK
    );
    // A senior visible to seniors only.
    put_user(
        &server,
        &senior_id,
        &senior,
        json!({"visibility": "seniors"}),
    )
    .await;
    assert_eq!(
        server
            .get(&format!("/v1/user/{senior_id}"), Some(&vol))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, senior2, _) = server
        .sign_up(&unique_email("s2"), "password-1", "senior")
        .await;
    assert_eq!(
        server
            .get(&format!("/v1/user/{senior_id}"), Some(&senior2))
            .await
            .0,
        StatusCode::OK
    );
    // "matches": nobody but yourself until connections exist.
    put_user(
        &server,
        &senior_id,
        &senior,
        json!({"visibility": "matches"}),
    )
    .await;
    assert_eq!(
        server
            .get(&format!("/v1/user/{senior_id}"), Some(&senior2))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, me) = server
        .get(&format!("/v1/user/{senior_id}"), Some(&senior))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["data"]["visibility"], json!("matches"));
    assert!(me["data"]["ledger"].is_object(), "yourself: extended_user");
    // Unknown ids are 404.
    assert_eq!(
        server.get("/v1/user/no-such-id", Some(&senior)).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn catalogs_are_seeded_and_searchable(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let (status, body) = server.get("/v1/interests", None).await;
    assert_eq!(status, StatusCode::OK);
    let interests = body["data"].as_array().unwrap();
    assert!((35..=45).contains(&interests.len()), "{}", interests.len());
    assert!(interests
        .iter()
        .all(|i| i["id"].is_string() && i["name"].is_string() && i["emoji"].is_string()));
    let (_, body) = server.get("/v1/interests?keyword=GARDEN", None).await;
    assert!(body["data"].as_array().unwrap().iter().all(|i| i["name"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("garden")));
    assert!(!body["data"].as_array().unwrap().is_empty());
    let (_, body) = server.get("/v1/interests?keyword=%25_%25", None).await;
    assert_eq!(body["data"], json!([]), "LIKE wildcards are escaped");

    let (_, body) = server.get("/v1/specializations", None).await;
    let areas = body["data"].as_array().unwrap();
    assert_eq!(areas.len(), 34);
    for name in ["Cardiology", "Nursing", "Geriatric Nursing"] {
        assert!(areas.iter().any(|a| a["name"] == json!(name)), "{name}");
    }

    let (_, body) = server.get("/v1/faqs", None).await;
    let faqs = body["data"].as_array().unwrap();
    for t in ["general", "seniors", "volunteers", "finance", "safety"] {
        let (status, typed) = server.get(&format!("/v1/faqs/{t}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let typed = typed["data"].as_array().unwrap();
        assert!(!typed.is_empty() && typed.iter().all(|f| f["type"] == json!(t)));
        assert!(faqs.iter().filter(|f| f["type"] == json!(t)).count() == typed.len());
    }
    assert!(faqs
        .iter()
        .all(|f| f["answer"].as_str().unwrap().len() > 40));
    let (status, body) = server.get("/v1/faqs/gossip", None).await;
    assert_error(status, &body, 400, "invalid_input");

    let (_, body) = server.get("/v1/constants/coins", None).await;
    let coins = &body["data"];
    assert_eq!(coins["coinsPerUsd"], json!(100));
    assert_eq!(coins["minPurchaseCoins"], json!(50));
    assert_eq!(coins["minWithdrawalCoins"], json!(100));
    assert_eq!(coins["withdrawalLimitCoins30d"], json!(50000));
    assert_eq!(coins["callCoinsPerMinute"], json!(50));
    assert_eq!(coins["volunteerSharePercent"], json!(70));
    assert_eq!(coins["lowBalanceCoins"], json!(250));
    assert!(coins["packages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["coins"].is_u64() && p["priceCents"].is_u64()));
}

/// Every byte the store keeps: the SQLite files and the data dir, or a pg_dump.
fn dump_everything(db: &TestDb) -> Vec<u8> {
    let mut bytes = Vec::new();
    fn walk(dir: &std::path::Path, out: &mut Vec<u8>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Ok(content) = std::fs::read(&path) {
                out.extend(content);
            }
        }
    }
    walk(db.data_dir.path(), &mut bytes);
    if let Some(url) = &db.database_url {
        let output = Command::new("pg_dump")
            .arg(url)
            .output()
            .expect("pg_dump runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        bytes.extend(output.stdout);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn deletion_leaves_nothing_personal_behind(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("shred-{tag}@example.com");
    let name = format!("Zelda Quixote {tag}");
    let bio = format!("Knits scarves {tag}");
    let (id, token, _) = server.sign_up(&email, "password-1", "senior").await;
    put_user(
        &server,
        &id,
        &token,
        json!({"name": name, "bio": bio, "city": format!("Town{tag}"),
        "metas": {"note": format!("meta{tag}")}}),
    )
    .await;
    // A mail and a push that carry the personal data.
    server
        .post(
            "/v1/otp",
            None,
            json!({"email": email, "purpose": "verify-email"}),
        )
        .await;
    let (mut ws, _) = server.ws_authenticated(&token, None).await;
    put_user(&server, &id, &token, json!({"language": "en"})).await;
    ws.push("user.update").await;
    let before = dump_everything(&db);
    assert!(
        contains(&before, &name) && contains(&before, &email),
        "the dump sees the data before"
    );

    let (_, other, _) = server
        .sign_up(&unique_email("o"), "password-1", "senior")
        .await;
    let (status, body) = server
        .call("DELETE", &format!("/v1/user/{id}"), Some(&other), None)
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server
        .call("DELETE", &format!("/v1/user/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The deleted user's socket is told, then closed.
    let ended = ws.push("session.ended").await;
    assert_eq!(ended["data"]["reason"], json!("account-deleted"));
    assert_eq!(
        server.get("/v1/auth", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.sign_in(&email, "password-1").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server.get(&format!("/v1/user/{id}"), Some(&other)).await.0,
        StatusCode::NOT_FOUND
    );
    server.stop().await;

    let after = dump_everything(&db);
    for secret in [
        &email,
        &name,
        &bio,
        &format!("Town{tag}"),
        &format!("meta{tag}"),
    ] {
        assert!(
            !contains(&after, secret),
            "{secret} is still stored after deletion"
        );
    }

    // The log still replays (the deleted user stays wiped), and the email is free again.
    let mut rebuild = Command::new(env!("CARGO_BIN_EXE_talkamie"));
    rebuild
        .args(["projections", "rebuild"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error");
    for (k, v) in db.env() {
        rebuild.env(k, v);
    }
    assert!(rebuild.output().expect("rebuild").status.success());
    assert!(!contains(&dump_everything(&db), &name));
    let server = Server::start(&db).await;
    let (new_id, _, _) = server.sign_up(&email, "password-2", "senior").await;
    assert_ne!(new_id, id);
}
