//! The event store and projector: durability across restarts, rebuild = live, the late-commit
//! rule on PostgreSQL, and bounded retries of concurrent writers.

use std::process::Command;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use talkamie_aggregates::user::{Sealed, UserEvent, UserType};
use talkamie_projections::{with_pool, Db};

use crate::both_stores;
use crate::helpers::{account, unique_email, Backend, Server, TestDb};

both_stores!(
    data_survives_a_restart,
    rebuilt_read_models_equal_the_live_ones,
    concurrent_writes_to_one_aggregate_are_retried,
    commands_beyond_capacity_are_refused_with_503,
    long_streams_snapshot_and_reload_exactly
);

async fn data_survives_a_restart(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let email = unique_email("durable");
    let (user_id, access, _) = server.sign_up(&email, "password-1", "volunteer").await;
    let (status, _) = server
        .call(
            "PUT",
            &format!("/v1/user/{user_id}"),
            Some(&access),
            Some(json!({"bio": "still here"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;

    let server = Server::start(&db).await;
    // The session survived too (sessions are events), and so did the profile.
    let (status, me) = server.get("/v1/auth", Some(&access)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["data"]["user"]["bio"], json!("still here"));
    let (status, body) = server.sign_in(&email, "password-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(account(&body).0, user_id);
}

/// Every read-model row as text, in a stable order.
async fn snapshot(db: &Db) -> Vec<Vec<Option<String>>> {
    let queries = [
        "SELECT CAST(id AS TEXT), email, email_normalized, CAST(email_verified AS TEXT), type, name,
                gender, bio, language, CAST(timezone_offset AS TEXT), timezone,
                CAST(insert_date AS TEXT), CAST(last_login_date AS TEXT), CAST(updated_at AS TEXT)
           FROM users ORDER BY id",
        "SELECT user_id, password_hash, CAST(changed_at AS TEXT), NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL
           FROM user_credentials ORDER BY user_id",
        "SELECT id, user_id, refresh_jti, status, end_reason, CAST(created_at AS TEXT),
                CAST(refreshed_at AS TEXT), CAST(ended_at AS TEXT), NULL, NULL, NULL, NULL, NULL, NULL
           FROM sessions ORDER BY id",
    ];
    let mut rows = Vec::new();
    for sql in queries {
        let batch: Vec<Vec<Option<String>>> = with_pool!(db, pool => {
            use sqlx::Row;
            sqlx::query(sql)
                .fetch_all(pool)
                .await
                .expect("snapshot query")
                .iter()
                .map(|row| (0..14).map(|i| row.try_get::<Option<String>, _>(i).expect("text")).collect())
                .collect()
        });
        rows.push(vec![Some(format!("-- {} rows", batch.len()))]);
        rows.extend(batch);
    }
    rows
}

async fn rebuilt_read_models_equal_the_live_ones(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    for i in 0..4 {
        let email = unique_email(&format!("rebuild{i}"));
        let (user_id, access, refresh) = server.sign_up(&email, "password-1", "senior").await;
        server
            .call(
                "PUT",
                &format!("/v1/user/{user_id}"),
                Some(&access),
                Some(json!({"bio": format!("bio {i}"), "gender": "female"})),
            )
            .await;
        server
            .post("/v1/auth/refresh", None, json!({"refresh": refresh}))
            .await;
        server.sign_in(&email, "password-1").await;
        if i % 2 == 0 {
            server
                .call("DELETE", "/v1/auth/sign-out", Some(&access), None)
                .await;
        }
    }
    server.stop().await;

    let pool = db.connect().await;
    let live = snapshot(&pool).await;
    assert!(live.len() > 12, "the live read models have rows");

    let mut rebuild = Command::new(env!("CARGO_BIN_EXE_talkamie"));
    rebuild
        .args(["projections", "rebuild"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    for (k, v) in db.env() {
        rebuild.env(k, v);
    }
    let output = rebuild.output().expect("run talkamie projections rebuild");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("users"));

    let rebuilt = snapshot(&pool).await;
    assert_eq!(live, rebuilt);

    // An unknown projection name is refused with a non-zero exit.
    let mut bad = Command::new(env!("CARGO_BIN_EXE_talkamie"));
    bad.args(["projections", "rebuild", "nonsense"])
        .env_remove("DATABASE_URL");
    for (k, v) in db.env() {
        bad.env(k, v);
    }
    assert!(!bad.output().expect("run").status.success());
}

async fn concurrent_writes_to_one_aggregate_are_retried(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Arc::new(Server::start(&db).await);
    let (user_id, access, _) = server
        .sign_up(&unique_email("busy"), "password-1", "senior")
        .await;
    let writers = (0..10).map(|i| {
        let server = server.clone();
        let access = access.clone();
        let path = format!("/v1/user/{user_id}");
        tokio::spawn(async move {
            server
                .call(
                    "PUT",
                    &path,
                    Some(&access),
                    Some(json!({"bio": format!("writer {i}")})),
                )
                .await
        })
    });
    let mut ok = 0;
    for writer in writers {
        let (status, body) = writer.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            // Bounded retries may still lose under extreme contention; then it is a clean 409.
            StatusCode::CONFLICT => assert_eq!(body["error"], json!("conflict")),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1);
    let (_, me) = server.get("/v1/auth", Some(&access)).await;
    assert!(me["data"]["user"]["bio"]
        .as_str()
        .unwrap()
        .starts_with("writer "));

    // Every successful write is one event in the user's stream, numbered without gaps.
    let pool = db.connect().await;
    let sequences: Vec<i64> = with_pool!(&pool, p => {
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_type = 'User' AND aggregate_id = $1 AND event_type = 'ProfileUpdated' ORDER BY sequence")
            .bind(&user_id)
            .fetch_all(p)
            .await
            .unwrap()
    });
    assert_eq!(sequences.len(), ok);
}

fn registered(name: &str) -> String {
    serde_json::to_string(&UserEvent::UserRegistered {
        // No key exists for these test users, so the values stay unreadable (as after deletion).
        email: Sealed(format!("sealed-{name}")),
        name: Sealed(format!("sealed-{name}")),
        user_type: UserType::Senior,
        password_hash: Sealed("sealed".into()),
        at: chrono::Utc::now(),
    })
    .unwrap()
}

async fn user_exists(db: &Db, id: &str) -> bool {
    talkamie_projections::users::find_by_id(db, id)
        .await
        .unwrap()
        .is_some()
}

/// PostgreSQL: transaction A appends first but commits last; its event must still be applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_never_skipped() {
    let Some(test_db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let settings =
        talkamie::config::Settings::from_map(&test_db.env().into_iter().collect()).unwrap();
    let store = talkamie::store::Store::open(&settings).await.unwrap();
    let Db::Postgres(pool) = &store.db else {
        panic!("postgres")
    };
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('User', $1, 1, 'UserRegistered', '1', CAST($2 AS json), CAST('{}' AS json))";

    let mut a = pool.begin().await.unwrap();
    sqlx::query(insert)
        .bind("user-a")
        .bind(registered("a"))
        .execute(&mut *a)
        .await
        .unwrap();
    let mut b = pool.begin().await.unwrap();
    sqlx::query(insert)
        .bind("user-b")
        .bind(registered("b"))
        .execute(&mut *b)
        .await
        .unwrap();
    b.commit().await.unwrap();

    // B committed, but A (older) is still open: the projector must not move past A's event.
    store.projector.catch_up().await.unwrap();
    assert!(!user_exists(&store.db, "user-a").await);
    assert!(
        !user_exists(&store.db, "user-b").await,
        "B is held back until A ends"
    );

    a.commit().await.unwrap();
    let (a_pos, b_pos): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT position FROM events WHERE aggregate_id = 'user-a'),
                (SELECT position FROM events WHERE aggregate_id = 'user-b')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(a_pos < b_pos, "A took the lower position");
    // Visibility follows the cluster-wide xmin: a transaction of another database still open
    // can delay it a little, never skip it. So catch up until both are there (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        store.projector.catch_up().await.unwrap();
        if user_exists(&store.db, "user-a").await && user_exists(&store.db, "user-b").await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's late event was never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Load shedding: with room for 2 commands in flight, a burst of 40 profile updates gets some
/// 503s (envelope `unavailable`, `Retry-After: 1`) at once instead of queueing, the others
/// succeed, and nothing else happens; once the burst is over, commands succeed again.
async fn commands_beyond_capacity_are_refused_with_503(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(&db, &[("TALKAMIE_MAX_COMMANDS_IN_FLIGHT", "2")]).await;
    let (id, token, _) = server
        .sign_up(&unique_email("shed"), "password-1", "senior")
        .await;
    let url = format!("{}/v1/user/{id}", server.base);
    let mut refused = 0;
    let mut succeeded = 0;
    // A burst is concurrent enough to overflow 2 permits in practice; a few rounds make sure.
    for round in 0..5 {
        let burst = (0..40).map(|i| {
            let request = server
                .http
                .put(&url)
                .bearer_auth(&token)
                .json(&json!({"bio": format!("round {round} update {i}")}));
            async move {
                let response = request.send().await.expect("request");
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap_or_default().to_string());
                let body: serde_json::Value = response.json().await.expect("JSON body");
                (status, retry_after, body)
            }
        });
        for (status, retry_after, body) in futures_util::future::join_all(burst).await {
            match status {
                StatusCode::OK => succeeded += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    crate::helpers::assert_error(status, &body, 503, "unavailable");
                    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "no command was refused ({succeeded} succeeded)"
    );
    assert!(succeeded > 0, "every command was refused");
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{id}"),
            Some(&token),
            Some(json!({"bio": "after the burst"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["bio"], json!("after the burst"), "{body}");
}

/// A stream longer than two snapshots, appended from the in-memory copy of its aggregate:
/// every snapshot lands with the right version and sequence, and after a restart (no copy, so
/// a load from the last snapshot) the stream goes on where it was, without a gap or a repeat.
async fn long_streams_snapshot_and_reload_exactly(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let env = [
        ("TALKAMIE_WS_FRAMES_PER_SECOND", "1000"),
        ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000"),
    ];
    let server = Server::start_with(&db, &env).await;
    let (senior, s_token, _) = server
        .sign_up(&unique_email("long"), "password-1", "senior")
        .await;
    let (volunteer, v_token, _) = server
        .sign_up(&unique_email("long"), "password-1", "volunteer")
        .await;
    let chat = server
        .connect(&(senior, s_token.clone()), &(volunteer, v_token.clone()))
        .await;
    let send = |text: String| {
        json!({"action": "chat.message.send", "requestId": text, "chatId": chat,
               "message": {"text": text}})
    };
    let (mut ws, _) = server.ws_authenticated(&s_token, None).await;
    for i in 0..230 {
        let reply = ws.request(send(format!("m{i}"))).await;
        assert_eq!(reply["success"], json!(true), "{reply}");
    }
    let store = db.connect().await;
    let sql = "SELECT current_snapshot, last_sequence FROM snapshots
                WHERE aggregate_type = 'Pair' AND aggregate_id = $1";
    let (version, last): (i64, i64) = with_pool!(&store, pool => {
        sqlx::query_as(sql).bind(&chat).fetch_one(pool).await.expect("a snapshot")
    });
    let sql =
        "SELECT MAX(sequence) FROM events WHERE aggregate_type = 'Pair' AND aggregate_id = $1";
    let stream_end: i64 = with_pool!(&store, pool => {
        sqlx::query_scalar(sql).bind(&chat).fetch_one(pool).await.expect("the stream")
    });
    // The pair's stream: request, accept, chat opened, then 230 messages.
    assert!(stream_end >= 230, "{stream_end}");
    assert_eq!(
        version,
        stream_end / 100,
        "one snapshot version per 100 events"
    );
    assert_eq!(
        last,
        stream_end / 100 * 100,
        "taken at the last multiple of 100"
    );

    server.stop().await;
    let server = Server::start_with(&db, &env).await;
    let (mut ws, _) = server.ws_authenticated(&s_token, None).await;
    for i in 230..240 {
        let reply = ws.request(send(format!("m{i}"))).await;
        assert_eq!(reply["success"], json!(true), "{reply}");
    }
    let mut texts = Vec::new();
    let mut path = format!("/v1/chat/{chat}/messages?pageSize=100");
    loop {
        let (status, body) = server.get(&path, Some(&v_token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for message in body["data"].as_array().expect("messages") {
            texts.push(message["text"].as_str().expect("text").to_string());
        }
        match body["pagination"]["lastEvaluatedKey"].as_str() {
            Some(key) => {
                path = format!("/v1/chat/{chat}/messages?pageSize=100&lastEvaluatedKey={key}")
            }
            None => break,
        }
    }
    texts.reverse();
    let expected: Vec<String> = (0..240).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
}
