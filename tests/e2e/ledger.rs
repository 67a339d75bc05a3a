//! The coins ledger (sections 9 and 14): top-ups through the sandbox checkout and signed
//! webhooks, withdrawals with payouts and refunds, transaction lists, alerts and pushes, and
//! the audit that finds tampering.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use talkamie::providers::payments::{sandbox_event, sign};

use crate::both_stores;
use crate::helpers::{assert_error, read_models, unique_email, Backend, Server, TestDb};

both_stores!(
    top_ups_are_credited_once_through_the_sandbox_checkout,
    webhooks_refuse_forged_stale_replayed_and_unknown_deliveries,
    withdrawals_hold_coins_settle_and_refund,
    bad_amounts_move_no_coin,
    unpaid_sessions_expire,
    the_audit_finds_edited_and_deleted_events,
    a_thousand_concurrent_top_ups_and_withdrawals_leave_a_clean_audit,
    deleting_an_account_forfeits_its_balance,
    concurrent_top_ups_push_growing_balances,
);

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

pub async fn ledger_server(db: &TestDb, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("TALKAMIE_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    env.extend_from_slice(extra);
    Server::start_with(db, &env).await
}

pub async fn user(server: &Server, kind: &str) -> (String, String) {
    let (id, access, _) = server
        .sign_up(&unique_email(kind), "long-password-1", kind)
        .await;
    (id, access)
}

pub async fn balance(server: &Server, token: &str) -> i64 {
    let (status, body) = server.get("/v1/auth", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["user"]["ledger"]["coins"]["balance"]
        .as_i64()
        .unwrap_or_else(|| panic!("no balance in {body}"))
}

/// Opens a top-up: `(transaction id, session id, session url)`.
pub async fn open_top_up(server: &Server, token: &str, coins: i64) -> (String, String, String) {
    let (status, body) = server
        .post(
            "/v1/web/finance/top-up/session",
            Some(token),
            json!({ "coins": coins }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = &body["data"];
    assert_eq!(data["transaction"]["status"], "pending", "{body}");
    assert_eq!(data["transaction"]["type"], "purchase", "{body}");
    (
        data["transaction"]["id"]
            .as_str()
            .expect("tx id")
            .to_string(),
        data["session"]["id"]
            .as_str()
            .expect("session id")
            .to_string(),
        data["session"]["url"].as_str().expect("url").to_string(),
    )
}

/// Presses a button of the sandbox checkout page: `(status, html)`.
pub async fn checkout(server: &Server, session: &str, button: &str) -> (StatusCode, String) {
    let response = server
        .http
        .post(format!(
            "{}/v1/sandbox/checkout/{session}/{button}",
            server.base
        ))
        .send()
        .await
        .expect("checkout");
    let status = response.status();
    (status, response.text().await.expect("html"))
}

/// Tops up `coins` for the user and pays at once; returns the transaction id.
pub async fn fund(server: &Server, token: &str, coins: i64) -> String {
    let (tx, session, _) = open_top_up(server, token, coins).await;
    let (status, html) = checkout(server, &session, "pay").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"data-status="succeeded""#), "{html}");
    tx
}

/// Posts a raw webhook delivery.
pub async fn deliver(server: &Server, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
    let mut request = server
        .http
        .post(format!("{}/v1/webhooks/payments", server.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("x-talkamie-signature", signature);
    }
    let response = request.send().await.expect("webhook");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A delivery signed now with the test secret.
pub fn signed(body: &str) -> String {
    sign(WEBHOOK_SECRET.as_bytes(), now(), body.as_bytes())
}

pub async fn transaction(server: &Server, token: &str, id: &str) -> Value {
    let (status, body) = server
        .get(&format!("/v1/finance/transaction/{id}"), Some(token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["transaction"].clone()
}

/// Polls a transaction until its status is not `pending` (payouts settle in the background).
pub async fn settled(server: &Server, token: &str, id: &str) -> Value {
    for _ in 0..100 {
        let tx = transaction(server, token, id).await;
        if tx["status"] != "pending" {
            return tx;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("transaction {id} still pending after 10 s");
}

async fn list(server: &Server, token: &str, path: &str) -> (Vec<Value>, i64) {
    let (status, body) = server.get(path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["data"].as_array().expect("list").clone(),
        body["pagination"]["totalItems"].as_i64().expect("total"),
    )
}

async fn top_ups_are_credited_once_through_the_sandbox_checkout(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (senior, token) = user(&server, "senior").await;
    let (mut ws, _) = server.ws_authenticated(&token, None).await;
    assert_eq!(balance(&server, &token).await, 0);

    let (tx, session, url) = open_top_up(&server, &token, 500).await;
    assert!(
        url.ends_with(&format!("/v1/sandbox/checkout/{session}")),
        "{url}"
    );
    let opened = ws
        .push_where("alert.new", |p| p["data"]["alert"]["type"] == "transaction")
        .await;
    assert_eq!(opened["data"]["alert"]["transaction"]["id"], json!(tx));
    assert_eq!(opened["data"]["alert"]["transaction"]["status"], "pending");
    let created = transaction(&server, &token, &tx).await;
    assert_eq!(created["intent"], "top-up");
    assert_eq!(created["coins"]["amount"], 500);
    // 500 coins is a package: $5.00.
    assert_eq!(created["funds"], json!({"amount": 500, "currency": "usd"}));

    // The checkout page is a real page with Pay and Cancel.
    let page = server.http.get(&url).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains(r#"id="pay""#) && html.contains(r#"id="cancel""#),
        "{html}"
    );
    assert!(
        html.contains("$5.00") && html.contains("500 coins"),
        "{html}"
    );

    let (status, html) = checkout(&server, &session, "pay").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"data-status="succeeded""#), "{html}");
    assert_eq!(balance(&server, &token).await, 500);
    assert_eq!(
        transaction(&server, &token, &tx).await["status"],
        "succeeded"
    );

    // The owner's sockets hear of it: a transaction alert, then their balance.
    let alert = ws
        .push_where("alert.new", |p| {
            p["data"]["alert"]["transaction"]["status"] == "succeeded"
        })
        .await;
    assert_eq!(
        alert["data"]["alert"]["transaction"]["id"],
        json!(tx),
        "{alert}"
    );
    assert_eq!(alert["data"]["alert"]["transaction"]["status"], "succeeded");
    let update = ws
        .push_where("user.update", |p| {
            p["data"]["user"]["ledger"]["coins"]["balance"] == 500
        })
        .await;
    assert_eq!(update["data"]["user"]["id"], json!(senior));

    // Paying again is refused by the page; the provider's retries of "paid" credit nothing.
    let (status, html) = checkout(&server, &session, "pay").await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    for _ in 0..3 {
        let body = sandbox_event("checkout.session.completed", &session, &senior, true).to_string();
        let (status, reply) = deliver(&server, &body, Some(&signed(&body))).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["data"], Value::Null);
    }
    // "Expired" arriving after "paid" changes nothing either.
    let body = sandbox_event("checkout.session.expired", &session, &senior, false).to_string();
    let (status, _) = deliver(&server, &body, Some(&signed(&body))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(balance(&server, &token).await, 500);
    assert_eq!(
        transaction(&server, &token, &tx).await["status"],
        "succeeded"
    );

    // Cancel: the second session ends canceled, no coins.
    let (tx2, session2, _) = open_top_up(&server, &token, 120).await;
    assert_eq!(
        transaction(&server, &token, &tx2).await["funds"]["amount"],
        120
    );
    let (status, html) = checkout(&server, &session2, "cancel").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(
        transaction(&server, &token, &tx2).await["status"],
        "canceled"
    );
    assert_eq!(balance(&server, &token).await, 500);

    // Idempotency-Key: a retried request answers the first session.
    let open_with_key = || async {
        let response = server
            .http
            .post(format!("{}/v1/web/finance/top-up/session", server.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", "top-up-1")
            .json(&json!({"coins": 1000}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.expect("json")["data"].clone()
    };
    let first = open_with_key().await;
    let again = open_with_key().await;
    assert_eq!(first["session"], again["session"]);
    // The first answer is made from the stored event, the retry's from the stored row: the
    // same transaction, as the ledger shows it.
    assert_eq!(first["transaction"], again["transaction"]);
    let id = first["transaction"]["id"].as_str().expect("transaction id");
    assert_eq!(first["transaction"], transaction(&server, &token, id).await);
    assert!(first["transaction"]["timestamp"].is_string(), "{first}");

    let (all, total) = list(&server, &token, "/v1/finance/transactions").await;
    assert_eq!(total, 3);
    assert_eq!(all[2]["id"], json!(tx), "newest first");
    let (purchases, _) = list(&server, &token, "/v1/finance/purchases").await;
    assert_eq!(purchases.len(), 3);
    let (withdrawals, _) = list(&server, &token, "/v1/finance/withdrawals").await;
    assert!(withdrawals.is_empty());
    let (status, page) = server
        .get("/v1/finance/transactions?pageSize=2", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let key = page["pagination"]["lastEvaluatedKey"]
        .as_str()
        .expect("more pages");
    let (_, rest) = server
        .get(
            &format!("/v1/finance/transactions?pageSize=2&lastEvaluatedKey={key}"),
            Some(&token),
        )
        .await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["data"][0]["id"], json!(tx));

    // Someone else's transaction is not found.
    let (_, other) = user(&server, "senior").await;
    let (status, body) = server
        .get(&format!("/v1/finance/transaction/{tx}"), Some(&other))
        .await;
    assert_error(status, &body, 404, "not_found");
    server.stop().await;
}

async fn webhooks_refuse_forged_stale_replayed_and_unknown_deliveries(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (senior, token) = user(&server, "senior").await;
    let (tx, session, _) = open_top_up(&server, &token, 300).await;
    let body = sandbox_event("checkout.session.completed", &session, &senior, true).to_string();

    let (status, reply) = deliver(&server, &body, None).await;
    assert_error(status, &reply, 400, "invalid_signature");
    let forged = sign(b"not-the-secret", now(), body.as_bytes());
    let (status, reply) = deliver(&server, &body, Some(&forged)).await;
    assert_error(status, &reply, 400, "invalid_signature");
    // A genuine signature over another body.
    let tampered = body.replace("\"paid\"", "\"paid\" ");
    let (status, reply) = deliver(&server, &tampered, Some(&signed(&body))).await;
    assert_error(status, &reply, 400, "invalid_signature");
    let stale = sign(WEBHOOK_SECRET.as_bytes(), now() - 301, body.as_bytes());
    let (status, reply) = deliver(&server, &body, Some(&stale)).await;
    assert_error(status, &reply, 400, "stale_signature");
    let (status, reply) = deliver(&server, "not json", Some(&signed("not json"))).await;
    assert_error(status, &reply, 400, "invalid_input");
    // Bytes that are not UTF-8, signed correctly, and a body over the limit: envelopes too.
    let raw = |bytes: Vec<u8>, signature: String| {
        let server = &server;
        async move {
            let response = server
                .http
                .post(format!("{}/v1/webhooks/payments", server.base))
                .header("x-talkamie-signature", signature)
                .body(bytes)
                .send()
                .await
                .expect("webhook");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.expect("json envelope"),
            )
        }
    };
    let binary = vec![0xff, 0xfe, 0x00];
    let signature = sign(WEBHOOK_SECRET.as_bytes(), now(), &binary);
    let (status, reply) = raw(binary, signature).await;
    assert_error(status, &reply, 400, "invalid_input");
    let (status, reply) = raw(vec![b'a'; 300 * 1024], signed("x")).await;
    assert_error(status, &reply, 413, "payload_too_large");
    let unknown = sandbox_event("checkout.session.completed", "cs_nope", &senior, true).to_string();
    let (status, reply) = deliver(&server, &unknown, Some(&signed(&unknown))).await;
    assert_error(status, &reply, 404, "not_found");
    assert_eq!(balance(&server, &token).await, 0, "nothing moved so far");
    assert_eq!(transaction(&server, &token, &tx).await["status"], "pending");

    // The genuine delivery credits; the same delivery again is a replay.
    let signature = signed(&body);
    let (status, reply) = deliver(&server, &body, Some(&signature)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, reply) = deliver(&server, &body, Some(&signature)).await;
    assert_error(status, &reply, 409, "replayed");
    assert_eq!(balance(&server, &token).await, 300);
    // Events of other kinds are acknowledged and ignored.
    let other = json!({"id": "evt_x", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}})
        .to_string();
    let (status, _) = deliver(&server, &other, Some(&signed(&other))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(balance(&server, &token).await, 300);
    server.stop().await;
}

async fn withdrawals_hold_coins_settle_and_refund(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[("TALKAMIE_WITHDRAWAL_LIMIT_COINS_30D", "1500")]).await;
    let (volunteer, token) = user(&server, "volunteer").await;
    fund(&server, &token, 2000).await;
    let (mut ws, _) = server.ws_authenticated(&token, None).await;

    let withdraw = |coins: Value, email: &'static str, key: Option<&'static str>| {
        let server = &server;
        let token = token.clone();
        async move {
            let mut request = server
                .http
                .post(format!("{}/v1/finance/withdraw", server.base))
                .bearer_auth(&token)
                .json(&json!({"coins": coins, "paypal": {"email": email}}));
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await.expect("withdraw");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };

    // Coins leave at once; the payout settles in the background.
    let (status, body) = withdraw(json!(800), "amie@example.com", Some("w-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let paid = body["data"]["transaction"].clone();
    assert_eq!(paid["type"], "withdrawal");
    assert_eq!(paid["intent"], "withdraw");
    assert_eq!(paid["coins"]["amount"], 800);
    assert!(
        paid["status"] == "pending" || paid["status"] == "succeeded",
        "{paid}"
    );
    assert_eq!(balance(&server, &token).await, 1200);
    let paid_id = paid["id"].as_str().expect("id").to_string();
    // A retry with the same key is the same withdrawal, not a second one.
    let (status, again) = withdraw(json!(800), "amie@example.com", Some("w-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"]["transaction"]["id"], json!(paid_id));
    assert_eq!(balance(&server, &token).await, 1200);
    let settled_paid = settled(&server, &token, &paid_id).await;
    assert_eq!(settled_paid["status"], "succeeded");
    assert_eq!(settled_paid["funds"]["amount"], 800, "$8.00 paid out");
    let alert = ws
        .push_where("alert.new", |p| {
            p["data"]["alert"]["transaction"]["id"] == json!(paid_id)
                && p["data"]["alert"]["transaction"]["status"] != "pending"
        })
        .await;
    assert_eq!(alert["data"]["alert"]["transaction"]["status"], "succeeded");

    // The 30-day limit counts what was paid out: 800 of 1500 used.
    let (status, body) = withdraw(json!(800), "amie@example.com", None).await;
    assert_error(status, &body, 422, "over_limit");
    // A payout the provider refuses is refunded.
    let (status, body) = withdraw(json!(300), "someone@fail.test", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let failed_id = body["data"]["transaction"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        settled(&server, &token, &failed_id).await["status"],
        "failed"
    );
    assert_eq!(balance(&server, &token).await, 1200, "refunded");
    let (withdrawals, total) = list(&server, &token, "/v1/finance/withdrawals").await;
    assert_eq!(total, 3, "{withdrawals:?}");
    let refund = withdrawals
        .iter()
        .find(|t| t["type"] == "refund")
        .expect("a refund entry");
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(refund["coins"]["amount"], 300);
    // A refunded withdrawal frees its share of the limit: 700 left.
    let (status, body) = withdraw(json!(700), "amie@example.com", None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(balance(&server, &token).await, 500);

    // Every withdrawal rule, each refused without moving a coin.
    let (status, body) = withdraw(json!(99), "amie@example.com", None).await;
    assert_error(status, &body, 422, "below_minimum");
    let (status, body) = withdraw(json!(600), "amie@example.com", None).await;
    assert_error(status, &body, 409, "insufficient_coins");
    let (status, body) = withdraw(json!(200), "not-an-email", None).await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .post("/v1/finance/withdraw", Some(&token), json!({"coins": 200}))
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (senior_id, senior) = user(&server, "senior").await;
    fund(&server, &senior, 500).await;
    let (status, body) = server
        .post(
            "/v1/finance/withdraw",
            Some(&senior),
            json!({"coins": 200, "paypal": {"email": "s@example.com"}}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    assert_eq!(balance(&server, &token).await, 500);
    assert_eq!(balance(&server, &senior).await, 500);

    // The audit agrees: every account, summing to zero.
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["sum"], 0);
    let accounts = &report["accounts"];
    assert_eq!(accounts["external:payments"], -2500, "{report}");
    assert_eq!(accounts[format!("user:{volunteer}")], 500);
    assert_eq!(accounts[format!("user:{senior_id}")], 500);
    // The last withdrawal may still be in flight or paid: 700 is in one of the two places.
    assert_eq!(
        accounts["platform:withdrawals-pending"]
            .as_i64()
            .unwrap_or(0)
            + accounts["external:payouts"].as_i64().unwrap_or(0),
        800 + 700
    );
    let (ok, text, _) = db.cli(&["ledger", "audit"]);
    assert!(
        ok && text.contains(": OK") && text.contains("root hash"),
        "{text}"
    );
    let (ok, csv, _) = db.cli(&["ledger", "statement", "--user", &volunteer]);
    assert!(ok, "{csv}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "at,transaction_id,kind,reference,change,balance,hash"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains(",refund,") && r.contains(",300,")),
        "{csv}"
    );
    let (ok, json_statement, _) = db.cli(&[
        "ledger",
        "statement",
        "--user",
        &volunteer,
        "--format",
        "json",
    ]);
    assert!(ok);
    let lines: Value = serde_json::from_str(&json_statement).expect("json");
    assert_eq!(lines[0]["kind"], "purchase");
    assert_eq!(lines[0]["change"], 2000);

    // The admin endpoint serves the same report; others may not.
    let (_, admin) = server.admin(&db).await;
    let (status, body) = server.get("/v1/admin/ledger/audit", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["ok"], true);
    assert_eq!(body["data"]["rootHash"], report["rootHash"]);
    let (status, body) = server
        .get(
            &format!("/v1/admin/ledger/audit?user={volunteer}"),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["wallets"], 1);
    let (status, body) = server.get("/v1/admin/ledger/audit", Some(&token)).await;
    assert_error(status, &body, 403, "forbidden");
    server.stop().await;

    // Rebuilt from the log, the ledger read models equal the live ones.
    let before = ledger_tables(&db).await;
    let (ok, _, stderr) = db.cli(&["projections", "rebuild", "ledger"]);
    assert!(ok, "{stderr}");
    assert_eq!(ledger_tables(&db).await, before);
    assert!(before.iter().any(|row| row.contains("|refund|")));

    // The `transaction` alerts, rebuilt by name or with everything: the same alerts, also of
    // transactions changed again since (`alerts` by name once lost those: it read the
    // transactions as they are now; its rebuild now replays the ledger with it).
    let pool = db.connect().await;
    let alerts = read_models(&pool).await["alerts"].clone();
    let refund_alerts = alerts
        .iter()
        .filter(|row| row.contains("transaction") && row.contains("refund"))
        .count();
    assert_eq!(refund_alerts, 1, "{alerts:#?}");
    for only in [vec!["alerts"], vec![]] {
        let args: Vec<&str> = ["projections", "rebuild"].into_iter().chain(only).collect();
        let (ok, _, stderr) = db.cli(&args);
        assert!(ok, "{stderr}");
        assert_eq!(read_models(&pool).await["alerts"], alerts, "{args:?}");
    }
    assert_eq!(ledger_tables(&db).await, before);
}

/// Every row of the ledger read models, as text, in a stable order.
async fn ledger_tables(db: &TestDb) -> Vec<String> {
    let queries = [
        "SELECT id || '|' || user_id || '|' || type || '|' || status || '|' || coins || '|'
                || funds_cents || '|' || changed_position FROM ledger_transactions ORDER BY id",
        "SELECT account || '|' || balance || '|' || COALESCE(head_hash, '') FROM ledger_accounts
          ORDER BY account",
        "SELECT wallet_id || '|' || sequence || '|' || line || '|' || account || '|' || coins
           FROM ledger_entries ORDER BY wallet_id, sequence, line",
    ];
    let pool = db.connect().await;
    let mut rows = Vec::new();
    for query in queries {
        let found: Vec<String> = talkamie_projections::with_pool!(&pool, p => {
            sqlx::query_scalar(query).fetch_all(p).await.expect("dump")
        });
        rows.extend(found);
    }
    rows
}

async fn bad_amounts_move_no_coin(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, token) = user(&server, "senior").await;
    fund(&server, &token, 500).await;
    for coins in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!("100"),
        json!(1e12),
        json!(i64::MAX),
        json!(null),
    ] {
        let (status, body) = server
            .post(
                "/v1/web/finance/top-up/session",
                Some(&token),
                json!({ "coins": coins }),
            )
            .await;
        assert_error(status, &body, 400, "invalid_input");
        assert!(
            body["details"]["coins"].is_string() || body["details"]["body"].is_string(),
            "{body}"
        );
    }
    let (status, body) = server
        .post(
            "/v1/web/finance/top-up/session",
            Some(&token),
            json!({ "coins": 49 }),
        )
        .await;
    assert_error(status, &body, 422, "below_minimum");
    let (status, body) = server
        .post(
            "/v1/web/finance/top-up/session",
            None,
            json!({ "coins": 100 }),
        )
        .await;
    assert_error(status, &body, 401, "unauthenticated");
    let (_, admin) = server.admin(&db).await;
    let (status, body) = server
        .post(
            "/v1/web/finance/top-up/session",
            Some(&admin),
            json!({ "coins": 100 }),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = server
        .get("/v1/finance/transaction/not-a-transaction", Some(&token))
        .await;
    assert_error(status, &body, 404, "not_found");
    let (_, total) = list(&server, &token, "/v1/finance/transactions").await;
    assert_eq!(total, 1, "only the funding top-up exists");
    assert_eq!(balance(&server, &token).await, 500);
    server.stop().await;
}

async fn unpaid_sessions_expire(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(
        &db,
        &[
            ("TALKAMIE_TOPUP_SESSION_TTL_SECS", "1"),
            ("TALKAMIE_LEDGER_SWEEP_SECS", "1"),
        ],
    )
    .await;
    let (senior, token) = user(&server, "senior").await;
    let (tx, session, _) = open_top_up(&server, &token, 200).await;
    let expired = settled(&server, &token, &tx).await;
    assert_eq!(expired["status"], "expired");
    let (status, html) = checkout(&server, &session, "pay").await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    assert!(html.contains(r#"data-status="expired""#), "{html}");
    assert_eq!(balance(&server, &token).await, 0);
    // Money that still arrives (a provider's late "paid") is credited, once.
    let body = sandbox_event("checkout.session.completed", &session, &senior, true).to_string();
    let (status, _) = deliver(&server, &body, Some(&signed(&body))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(balance(&server, &token).await, 200);
    assert_eq!(
        transaction(&server, &token, &tx).await["status"],
        "succeeded"
    );
    server.stop().await;
}

/// Runs SQL on the test's database.
async fn sql(db: &TestDb, statement: &str) -> u64 {
    talkamie_projections::with_pool!(&db.connect().await, pool => {
        sqlx::query(statement).execute(pool).await.expect("sql").rows_affected()
    })
}

async fn the_audit_finds_edited_and_deleted_events(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (victim, token) = user(&server, "senior").await;
    fund(&server, &token, 500).await;
    fund(&server, &token, 700).await;
    let (bystander_id, bystander) = user(&server, "senior").await;
    fund(&server, &bystander, 300).await;
    server.stop().await;
    let (ok, before, _) = db.cli(&["ledger", "audit"]);
    assert!(ok, "{before}");

    // Flip one byte of a posting: 500 becomes 600.
    let payload = match backend {
        Backend::Sqlite => "payload",
        Backend::Postgres => "payload::text",
    };
    let cast = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => "::jsonb",
    };
    // jsonb prints `"key": value`; SQLite keeps serde_json's compact `"key":value`.
    let colon = match backend {
        Backend::Sqlite => ":",
        Backend::Postgres => ": ",
    };
    let rewrite = |from: &str, to: &str| {
        format!(
            "UPDATE events SET payload = (replace({payload}, '\"balance\"{colon}{from}', '\"balance\"{colon}{to}')){cast}
              WHERE aggregate_type = 'Wallet' AND aggregate_id = '{victim}' AND event_type = 'Posted'"
        )
    };
    assert_eq!(
        sql(&db, &rewrite("500", "600")).await,
        2,
        "both postings rewritten (one changed)"
    );
    let (ok, text, _) = db.cli(&["ledger", "audit"]);
    assert!(!ok, "the audit must fail: {text}");
    assert!(
        text.contains(&format!("DISCREPANCY wallet {victim}")),
        "{text}"
    );
    let (ok, json_report, _) = db.cli(&["ledger", "audit", "--format", "json", "--user", &victim]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&json_report).expect("json");
    assert_eq!(report["ok"], false);
    assert!(report["discrepancies"]
        .as_array()
        .expect("list")
        .iter()
        .all(|d| d["wallet"] == json!(victim)));
    // The other wallet alone is still clean.
    let (ok, text, _) = db.cli(&["ledger", "audit", "--user", &bystander_id]);
    assert!(ok, "{text}");

    // Undo the edit, then delete an event row instead.
    sql(&db, &rewrite("600", "500")).await;
    let (ok, text, _) = db.cli(&["ledger", "audit"]);
    assert!(ok, "restored: {text}");
    let deleted = sql(
        &db,
        &format!(
            "DELETE FROM events WHERE aggregate_type = 'Wallet' AND aggregate_id = '{victim}'
               AND sequence = 2"
        ),
    )
    .await;
    assert_eq!(deleted, 1);
    let (ok, text, _) = db.cli(&["ledger", "audit"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("DISCREPANCY wallet {victim}")),
        "{text}"
    );
    assert!(text.contains("missing"), "{text}");
}

/// One operation of the concurrent mix.
#[derive(Clone, Copy)]
enum Operation {
    TopUp(i64),
    Withdraw(i64, bool),
}

async fn run_operation(server: &Server, user: &(String, String), operation: Operation) {
    let (id, token) = user;
    match operation {
        Operation::TopUp(coins) => {
            let (_, session, _) = open_top_up(server, token, coins).await;
            let body = sandbox_event("checkout.session.completed", &session, id, true).to_string();
            let (status, reply) = deliver(server, &body, Some(&signed(&body))).await;
            assert_eq!(status, StatusCode::OK, "{reply}");
        }
        Operation::Withdraw(coins, payout_fails) => {
            let email = if payout_fails {
                "amie@fail.test"
            } else {
                "amie@example.com"
            };
            let (status, reply) = server
                .post(
                    "/v1/finance/withdraw",
                    Some(token),
                    json!({"coins": coins, "paypal": {"email": email}}),
                )
                .await;
            // Racing its own top-ups, a withdrawal may find too few coins: refused, not lost.
            assert!(
                status == StatusCode::CREATED || reply["error"] == "insufficient_coins",
                "{status} {reply}"
            );
        }
    }
}

async fn a_thousand_concurrent_top_ups_and_withdrawals_leave_a_clean_audit(backend: Backend) {
    use futures_util::StreamExt;
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[("TALKAMIE_WITHDRAWAL_LIMIT_COINS_30D", "100000000")]).await;
    let mut users = Vec::new();
    for _ in 0..20 {
        users.push(user(&server, "volunteer").await);
    }
    // 1,000 operations, 50 per user: top-ups and withdrawals interleaved, every fifth payout
    // refused by the provider (and refunded).
    let operations: Vec<(usize, Operation)> = (0..1000)
        .map(|i| {
            let who = (i / 2) % users.len();
            let op = if i % 2 == 0 {
                Operation::TopUp(100 + (i as i64 % 7) * 50)
            } else {
                Operation::Withdraw(100 + (i as i64 % 5) * 40, i % 5 == 1)
            };
            (who, op)
        })
        .collect();
    futures_util::stream::iter(operations)
        .map(|(who, op)| {
            let server = &server;
            let user = &users[who];
            async move { run_operation(server, user, op).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    // Wait for every payout to settle, then check each wallet against its own transactions.
    for (_, token) in &users {
        let mut expected = None;
        for _ in 0..200 {
            let (status, body) = server
                .get("/v1/finance/transactions?pageSize=100", Some(token))
                .await;
            assert_eq!(status, StatusCode::OK);
            let all = body["data"].as_array().expect("list").clone();
            assert!(body["pagination"]["lastEvaluatedKey"].is_null(), "one page");
            if all.iter().any(|t| t["status"] == "pending") {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let coins = |t: &Value| t["coins"]["amount"].as_i64().unwrap_or(0);
            let credited: i64 = all
                .iter()
                .filter(|t| t["type"] == "purchase" || t["type"] == "refund")
                .map(coins)
                .sum();
            let withdrawn: i64 = all
                .iter()
                .filter(|t| t["type"] == "withdrawal")
                .map(coins)
                .sum();
            expected = Some(credited - withdrawn);
            break;
        }
        let expected = expected.expect("every withdrawal settled within 20 s");
        assert_eq!(balance(&server, token).await, expected);
        assert!(expected >= 0);
    }
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["sum"], 0);
    assert_eq!(report["wallets"], 20);
    assert_eq!(
        report["accounts"]["platform:withdrawals-pending"], 0,
        "{report}"
    );
    let payments = report["accounts"]["external:payments"]
        .as_i64()
        .expect("payments");
    // 500 top-ups of 100..400 coins each.
    assert!(payments <= -50_000, "{report}");
    server.stop().await;
}

async fn deleting_an_account_forfeits_its_balance(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (senior, token) = user(&server, "senior").await;
    fund(&server, &token, 500).await;
    let (status, body) = server
        .call("DELETE", &format!("/v1/user/{senior}"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["accounts"]["platform:revenue"], 500, "{report}");
    assert_eq!(report["accounts"][format!("user:{senior}")], 0, "{report}");
    assert_eq!(report["sum"], 0);
    let (ok, csv, _) = db.cli(&["ledger", "statement", "--user", &senior]);
    assert!(
        ok && csv.contains(",forfeit,") && csv.contains(",-500,0,"),
        "{csv}"
    );
    server.stop().await;
}

/// Twelve top-ups of one senior paid at once: the projector takes several postings in one
/// round and renders the owner's `user.update` once per round, from the state the round
/// leaves. Whatever the rounds, the balances the owner's socket hears only grow, each is a sum
/// of some of the top-ups, and the last one is the whole.
async fn concurrent_top_ups_push_growing_balances(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[]).await;
    let (_, token) = user(&server, "senior").await;
    let (mut ws, _) = server.ws_authenticated(&token, None).await;
    let amounts: Vec<i64> = (1..=12).map(|i| 100 * i).collect();
    let total: i64 = amounts.iter().sum();
    let mut sessions = Vec::new();
    for coins in &amounts {
        sessions.push(open_top_up(&server, &token, *coins).await.1);
    }
    let server = std::sync::Arc::new(server);
    let paid: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let server = server.clone();
            tokio::spawn(async move { checkout(&server, &session, "pay").await })
        })
        .collect();
    for payment in paid {
        let (status, html) = payment.await.expect("payment");
        assert_eq!(status, StatusCode::OK, "{html}");
    }
    // Which sums of the top-ups are possible at all.
    let mut sums = std::collections::BTreeSet::from([0i64]);
    for coins in &amounts {
        let more: Vec<i64> = sums.iter().map(|s| s + coins).collect();
        sums.extend(more);
    }
    let mut last = 0;
    while last < total {
        let update = ws.push("user.update").await;
        let balance = update["data"]["user"]["ledger"]["coins"]["balance"]
            .as_i64()
            .expect("a balance");
        assert!(balance >= last, "balances only grow: {last} then {balance}");
        assert!(sums.contains(&balance), "{balance} is no sum of top-ups");
        last = balance;
    }
    assert_eq!(balance(&server, &token).await, total);
}
