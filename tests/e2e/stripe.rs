//! The Stripe payment provider (`TALKAMIE_PAYMENTS=stripe`) against fixtures in Stripe's
//! format: a stand-in for `api.stripe.com` answers `POST /v1/checkout/sessions` with the
//! fixture session and records what the server sent; the webhook is the fixture
//! `checkout.session.completed` event signed with Stripe's scheme (`Stripe-Signature`).
//! There is no network here, so live Stripe is never called.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use reqwest::StatusCode;
use serde_json::Value;
use talkamie::providers::payments::sign;

use crate::both_stores;
use crate::helpers::{assert_error, Backend, Server, TestDb};
use crate::ledger::{balance, transaction, user};

const SESSION_CREATED: &str = include_str!("../fixtures/stripe/checkout_session_created.json");
const SESSION_COMPLETED: &str = include_str!("../fixtures/stripe/checkout_session_completed.json");
/// The user id inside the fixtures (replaced by the test user's id).
const FIXTURE_USER: &str = "7c2e4d1a-0b9f-4a3e-8d5c-6f1e2a3b4c5d";
const WEBHOOK_SECRET: &str = "whsec_test_5f0c2a9e1b7d4c3a";

/// One request the stand-in received.
struct Recorded {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Serves one request with `answer` and reports what it received.
fn stand_in(answer: &'static str) -> (String, mpsc::Receiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        let mut stream = stream;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).expect("answer");
        let _ = tx.send(Recorded {
            request_line: request_line.trim_end().to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    });
    (base, rx)
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://form.test/?{body}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

both_stores!(stripe_checkout_sessions_and_signed_events_credit_the_coins);

async fn stripe_checkout_sessions_and_signed_events_credit_the_coins(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (api_base, recorded) = stand_in(SESSION_CREATED);
    let server = Server::start_with(
        &db,
        &[
            ("TALKAMIE_PAYMENTS", "stripe"),
            ("STRIPE_SECRET_KEY", "sk_test_51Talkamie"),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("STRIPE_API_BASE", &api_base),
        ],
    )
    .await;
    let (senior, token) = user(&server, "senior").await;
    let (status, body) = server
        .post(
            "/v1/web/finance/top-up/session",
            Some(&token),
            serde_json::json!({"coins": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fixture: Value = serde_json::from_str(SESSION_CREATED).expect("fixture");
    assert_eq!(body["data"]["session"]["id"], fixture["id"]);
    assert_eq!(body["data"]["session"]["url"], fixture["url"]);
    let tx = body["data"]["transaction"]["id"]
        .as_str()
        .expect("tx")
        .to_string();

    // What Stripe was asked for.
    let sent = recorded
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the server called Stripe");
    assert_eq!(sent.request_line, "POST /v1/checkout/sessions HTTP/1.1");
    let header = |name: &str| {
        sent.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer sk_test_51Talkamie")
    );
    assert_eq!(header("idempotency-key").as_deref(), Some(tx.as_str()));
    let form = |key: &str| form_value(&sent.body, key);
    assert_eq!(form("mode").as_deref(), Some("payment"));
    assert_eq!(form("client_reference_id").as_deref(), Some(tx.as_str()));
    assert_eq!(form("metadata[userId]").as_deref(), Some(senior.as_str()));
    assert_eq!(
        form("line_items[0][price_data][unit_amount]").as_deref(),
        Some("1000")
    );
    assert_eq!(
        form("line_items[0][price_data][currency]").as_deref(),
        Some("usd")
    );
    assert!(form("expires_at").is_some() && form("success_url").is_some());

    // The sandbox page does not exist under Stripe.
    let page = server
        .http
        .get(format!(
            "{}/v1/sandbox/checkout/{}",
            server.base,
            fixture["id"].as_str().unwrap_or_default()
        ))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::NOT_FOUND);

    // Stripe's event, signed with Stripe's scheme, credits the coins once.
    let event = SESSION_COMPLETED.replace(FIXTURE_USER, &senior);
    let post = |signature: String, header: &'static str| {
        let server = &server;
        let event = event.clone();
        async move {
            let response = server
                .http
                .post(format!("{}/v1/webhooks/payments", server.base))
                .header(header, signature)
                .header("content-type", "application/json")
                .body(event)
                .send()
                .await
                .expect("webhook");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let (status, reply) = post(
        sign(b"test-webhook-secret", now, event.as_bytes()),
        "x-talkamie-signature",
    )
    .await;
    assert_error(status, &reply, 400, "invalid_signature");
    let (status, reply) = post(
        sign(WEBHOOK_SECRET.as_bytes(), now, event.as_bytes()),
        "stripe-signature",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, _) = post(
        sign(WEBHOOK_SECRET.as_bytes(), now + 1, event.as_bytes()),
        "stripe-signature",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "Stripe's retry is acknowledged");
    assert_eq!(balance(&server, &token).await, 1000);
    assert_eq!(
        transaction(&server, &token, &tx).await["status"],
        "succeeded"
    );
    server.stop().await;
}
