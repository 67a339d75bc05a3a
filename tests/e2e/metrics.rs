//! `GET /metrics`: the Prometheus exposition counts requests by method, matched route pattern
//! and status, times them, and reports open sockets and the projector's position.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::both_stores;
use crate::helpers::{unique_email, Backend, Server, TestDb};

both_stores!(metrics_count_requests_sockets_and_the_projector);

/// One sample line of the text exposition: name, labels, value.
#[derive(Debug)]
pub(crate) struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the sample lines (label values may hold braces and commas: `route="/v1/user/{id}"`).
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = line[..name_end].to_string();
        let mut labels = HashMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut key = String::new();
            let end = loop {
                let (i, c) = chars.next().expect("labels end with }");
                match c {
                    '}' => break i + 1,
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("a closing quote") {
                                (_, '"') => break,
                                (_, '\\') => {
                                    let (_, escaped) = chars.next().expect("an escape");
                                    value.push(if escaped == 'n' { '\n' } else { escaped });
                                }
                                (_, c) => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            };
            rest = &after[end..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .expect("a value")
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample named `name` whose labels include `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// `(content type, exposition)`.
pub(crate) async fn scrape(server: &Server) -> (String, String) {
    let response = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, response.text().await.expect("body"))
}

async fn metrics_count_requests_sockets_and_the_projector(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;

    // One of each: 201, 200 on a route with an id, 401, 404, 200 on /healthz.
    let (user_id, access, _) = server
        .sign_up(&unique_email("metrics"), "password-1", "senior")
        .await;
    let (status, body) = server
        .get(&format!("/v1/user/{user_id}"), Some(&access))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.get("/v1/auth", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.get("/v1/no-such-route/42", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (mut ws, _) = server.ws_authenticated(&access, None).await;

    let (content_type, text) = scrape(&server).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    let samples = parse(&text);
    let requests = |method: &str, route: &str, status: &str| {
        value(
            &samples,
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    for (method, route, status) in [
        ("POST", "/v1/auth/sign-up", "201"),
        ("GET", "/v1/user/{id}", "200"),
        ("GET", "/v1/auth", "401"),
        ("GET", "unmatched", "404"),
        ("GET", "/healthz", "200"),
        ("GET", "/v1/ws", "101"),
    ] {
        assert!(
            requests(method, route, status) >= 1.0,
            "http_requests_total{{method={method},route={route},status={status}}} missing:\n{text}"
        );
    }
    // Labels carry the route pattern, never the path with its ids.
    assert!(!text.contains(&user_id), "a raw path leaked:\n{text}");
    assert!(
        !text.contains("no-such-route"),
        "a raw path leaked:\n{text}"
    );

    // The latency histogram, with buckets.
    let timed = value(
        &samples,
        "http_request_duration_seconds_count",
        &[
            ("method", "GET"),
            ("route", "/v1/user/{id}"),
            ("status", "200"),
        ],
    );
    assert!(timed.is_some_and(|n| n >= 1.0), "no latency count:\n{text}");
    let sum = value(
        &samples,
        "http_request_duration_seconds_sum",
        &[("method", "POST"), ("route", "/v1/auth/sign-up")],
    );
    assert!(sum.is_some_and(|s| s > 0.0), "no latency sum:\n{text}");
    assert!(
        value(
            &samples,
            "http_request_duration_seconds_bucket",
            &[("route", "/v1/user/{id}"), ("le", "+Inf")],
        )
        .is_some_and(|n| n >= 1.0),
        "no +Inf bucket:\n{text}"
    );

    // Commands by aggregate and outcome: the sign-up ran at least one User command.
    let commands = value(
        &samples,
        "commands_total",
        &[("aggregate", "User"), ("outcome", "ok")],
    );
    assert!(
        commands.is_some_and(|n| n >= 1.0),
        "commands_total {commands:?}:\n{text}"
    );
    assert!(
        value(
            &samples,
            "command_duration_seconds_count",
            &[("aggregate", "User")]
        )
        .is_some_and(|n| n >= 1.0),
        "no command latency:\n{text}"
    );

    // Gauges read at scrape time.
    let sockets = value(&samples, "ws_sockets_open", &[]);
    assert!(
        sockets.is_some_and(|n| n >= 1.0),
        "ws_sockets_open {sockets:?}:\n{text}"
    );
    let position = value(&samples, "projector_applied_position", &[]);
    assert!(
        position.is_some_and(|p| p >= 1.0),
        "projector_applied_position {position:?} after a sign-up:\n{text}"
    );

    // The socket gauge follows the socket closing.
    ws.stream.close(None).await.expect("close");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = scrape(&server).await;
        let open = value(&parse(&text), "ws_sockets_open", &[]);
        if open == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ws_sockets_open still {open:?} after the close"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The scrapes count too, and /metrics is in the OpenAPI document like /healthz.
    let (_, text) = scrape(&server).await;
    assert!(
        value(
            &parse(&text),
            "http_requests_total",
            &[("route", "/metrics"), ("status", "200")],
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let (status, api) = server.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(api["paths"]["/metrics"]["get"].is_object(), "{api}");
    server.stop().await;
}
