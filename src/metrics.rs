//! Prometheus metrics: the process-wide recorder, the middleware that counts and times every
//! request, and the figures read at scrape time (`GET /metrics`, in `http::health`).
//!
//! Anything in the process can record with the `metrics` macros (`metrics::counter!(..)`);
//! they reach the recorder installed here. Before it is installed (unit tests, CLI tools)
//! they record nothing.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::state::AppState;

/// Requests answered, by `method`, `route` (the matched pattern) and `status` (the code).
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time from the request reaching the app to its response head, same labels.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Connections closed for sending a request head or body too slowly, by `rule` (`head`,
/// `body`): `http::slow_clients`.
pub const HTTP_SLOW_CLIENTS_CLOSED: &str = "http_slow_clients_closed_total";
/// Authenticated sockets open on this instance.
pub const WS_SOCKETS_OPEN: &str = "ws_sockets_open";
/// The last event-log position every read model of this instance includes.
pub const PROJECTOR_APPLIED_POSITION: &str = "projector_applied_position";
/// Projector rounds of this instance that applied events.
pub const PROJECTOR_ROUNDS: &str = "projector_rounds_total";
/// Events this instance's projector applied, by `path`: `single` (one at a time) or `run` (in
/// a run of sent messages applied as a set).
pub const PROJECTOR_EVENTS: &str = "projector_events_total";
/// Runs of sent messages applied as a set.
pub const PROJECTOR_MESSAGE_RUNS: &str = "projector_message_runs_total";

/// Commands executed, by `aggregate` (its type) and `outcome` (`ok`, `rejected`, `conflict`,
/// `overloaded`, `unavailable`, `error`).
pub const COMMANDS: &str = "commands_total";
/// Time a command took, until the read models included it, by `aggregate`.
pub const COMMAND_DURATION: &str = "command_duration_seconds";
/// Stale cached aggregates caught up with just the newer events after a conflict, by aggregate.
pub const COMMAND_COPY_CATCH_UPS: &str = "command_copy_catch_ups_total";

/// Upper bounds of the latency histograms (every metric named `*_seconds`).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `route` label of requests no route matched (404s and 405s of the fallback).
const UNMATCHED: &str = "unmatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing the global recorder on first use (once per process).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            // Only refused for an empty list: the histograms would become summaries.
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = builder.install_recorder().unwrap_or_else(|error| {
            // Another recorder came first and gets every record: /metrics answers, but empty.
            tracing::warn!(%error, "a metrics recorder was already installed");
            PrometheusBuilder::new().build_recorder().handle()
        });
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests answered");
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (to the response head)"
    );
    metrics::describe_counter!(
        HTTP_SLOW_CLIENTS_CLOSED,
        "Connections closed for a request head or body sent too slowly, by rule"
    );
    metrics::describe_gauge!(
        WS_SOCKETS_OPEN,
        "Authenticated WebSocket connections open on this instance"
    );
    metrics::describe_counter!(COMMANDS, "Commands executed, by aggregate and outcome");
    metrics::describe_counter!(
        COMMAND_COPY_CATCH_UPS,
        "Stale cached aggregates caught up with the newer events after a conflict"
    );
    metrics::describe_histogram!(
        COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Time a command took until the read models included it"
    );
    metrics::describe_gauge!(
        PROJECTOR_APPLIED_POSITION,
        "Event-log position every read model of this instance includes"
    );
    metrics::describe_counter!(
        PROJECTOR_ROUNDS,
        "Projector rounds of this instance that applied events"
    );
    metrics::describe_counter!(
        PROJECTOR_EVENTS,
        "Events applied by this instance's projector, by path (single, run)"
    );
    metrics::describe_counter!(
        PROJECTOR_MESSAGE_RUNS,
        "Runs of sent messages this instance's projector applied as a set"
    );
}

/// The exposition: the gauges read now, then everything recorded so far.
pub fn render(state: &AppState) -> String {
    let handle = handle();
    metrics::gauge!(WS_SOCKETS_OPEN).set(state.hub.socket_count() as f64);
    metrics::gauge!(PROJECTOR_APPLIED_POSITION)
        .set(state.store.projector.applied().position as f64);
    let stats = &state.store.projector.stats;
    let read = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!(PROJECTOR_ROUNDS).absolute(read(&stats.rounds));
    metrics::counter!(PROJECTOR_EVENTS, "path" => "single").absolute(read(&stats.single_events));
    metrics::counter!(PROJECTOR_EVENTS, "path" => "run").absolute(read(&stats.run_events));
    metrics::counter!(PROJECTOR_MESSAGE_RUNS).absolute(read(&stats.message_runs));
    handle.render()
}

/// Drains the histograms' buffers now and then (the recorder does not do it by itself).
pub async fn run_upkeep(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        handle().run_upkeep();
    }
}

/// Middleware: counts and times every request by method, matched route pattern (never the raw
/// path: ids would make a series per resource) and status code.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let result = next.call(req).await;
    let (route, status) = match &result {
        Ok(res) => (
            res.request()
                .match_pattern()
                .unwrap_or_else(|| UNMATCHED.to_string()),
            res.status(),
        ),
        // The request went with the error: its route is unknown.
        Err(error) => (
            UNMATCHED.to_string(),
            error.as_response_error().status_code(),
        ),
    };
    let status = status.as_u16().to_string();
    metrics::histogram!(
        HTTP_DURATION,
        "method" => method,
        "route" => route.clone(),
        "status" => status.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    result
}

/// Standard methods by name, anything else as `other` (clients choose methods freely).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").expect("a valid token");
        assert_eq!(method_label(&odd), "other");
    }
}
