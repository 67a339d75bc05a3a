//! `rpc`: `user.me` request/response round-trips over a few sockets, each waiting for its
//! answer before asking again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use super::client::{open_socket, request_succeeds, Api};
use super::stats::{note, Progress, Samples, Window};
use super::{BenchResult, Common};

#[derive(Args, Clone, Debug)]
pub struct RpcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sockets, each with one request in flight (one user per socket).
    #[arg(long, default_value_t = 32)]
    pub sockets: usize,
}

pub async fn run(args: RpcArgs) -> anyhow::Result<BenchResult> {
    let quiet = args.common.quiet;
    let api = Api::new(&args.common.url)?;
    note(quiet, &format!("signing up {} users", args.sockets));
    let users = api.sign_up_many("senior", args.sockets.max(1)).await?;
    let mut sockets = Vec::new();
    for user in &users {
        sockets.push(open_socket(&api.ws_url(), &user.token).await?);
    }
    let window = Window::starting_now(args.common.warmup(), args.common.duration());
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(window, done.clone(), "round-trips", quiet);
    let workers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                let mut n = 0u64;
                while !window.over() {
                    n += 1;
                    let id = n.to_string();
                    let frame = format!(r#"{{"action":"user.me","requestId":"{id}"}}"#);
                    let started = Instant::now();
                    let reply = request_succeeds(&mut socket, frame, &id).await;
                    let ok = matches!(reply, Ok(true));
                    done.fetch_add(1, Ordering::Relaxed);
                    if window.counts(started) {
                        if ok {
                            samples.add(started.elapsed());
                        } else {
                            samples.errors += 1;
                        }
                    }
                    if reply.is_err() {
                        // The socket is gone; count the rest of the window as nothing.
                        break;
                    }
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for worker in workers {
        all.merge(worker.await?);
    }
    progress.finish();
    let operations = all.micros.len() as u64;
    Ok(BenchResult {
        scenario: "rpc".into(),
        label: args
            .common
            .label
            .clone()
            .unwrap_or_else(|| format!("rpc user.me sockets={}", args.sockets)),
        url: args.common.url.clone(),
        started_at: chrono::Utc::now(),
        params: json!({"sockets": args.sockets, "action": "user.me"}),
        duration_secs: window.seconds(),
        operations,
        errors: all.errors,
        throughput: operations as f64 / window.seconds(),
        unit: "round-trips/s".into(),
        latency_ms: all.latency(),
        extra: json!({}),
    })
}
