//! `talkamie bench <scenario>`: a load generator that drives a running server (it starts
//! nothing itself) over real HTTP and WebSocket, with a warm-up, a fixed measuring window, a
//! progress bar, a JSON result (throughput, latency percentiles, errors) and a one-line summary.
//!
//! Scenarios: `commands` (a realistic write mix), `chat` (send-to-push latency at a fixed rate),
//! `sockets` (idle authenticated sockets: server memory each, ping latency), `rpc` (`user.me`
//! round-trips), `rebuild` (replaying the log into the read models). `report` turns result
//! files into BENCHMARKS.md.

mod chat;
mod client;
mod commands;
mod rebuild;
mod report;
mod rpc;
mod sockets;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use stats::Latency;

#[derive(Subcommand)]
pub enum Scenario {
    /// N clients issuing a write mix: chat messages, schedule create/cancel, top-ups.
    Commands(commands::CommandsArgs),
    /// Sockets in pairs exchanging messages at a fixed rate; send-to-push latency.
    Chat(chat::ChatArgs),
    /// K idle authenticated sockets: server memory per socket and ping latency.
    Sockets(sockets::SocketsArgs),
    /// `user.me` request/response round-trips over a few sockets.
    Rpc(rpc::RpcArgs),
    /// Fill the log to M events, then time `projections rebuild` (needs the server's store
    /// settings: `DATABASE_URL` or `TALKAMIE_DATA_DIR`).
    Rebuild(rebuild::RebuildArgs),
    /// Write the figures of result files into BENCHMARKS.md (medians over runs, charts).
    Report(report::ReportArgs),
}

/// Options every load scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Also write the JSON result to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A name for this result (default: the scenario and its main parameters).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }
}

/// What one scenario run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchResult {
    pub scenario: String,
    pub label: String,
    pub url: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The scenario's parameters (clients, rate, sockets, ...).
    pub params: Value,
    /// Seconds of the measuring window.
    pub duration_secs: f64,
    /// Operations completed in the window (commands, messages, round-trips, events).
    pub operations: u64,
    /// Operations that failed in the window (error answers, lost pushes, transport errors).
    pub errors: u64,
    /// Operations per second in the window.
    pub throughput: f64,
    /// What `operations` counts.
    pub unit: String,
    pub latency_ms: Latency,
    /// Scenario-specific figures (per-command latencies, memory per socket, ...).
    pub extra: Value,
}

impl BenchResult {
    /// One line for people.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        format!(
            "{}: {:.0} {} ({} ok, {} errors in {:.1} s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.label,
            self.throughput,
            self.unit,
            self.operations,
            self.errors,
            self.duration_secs,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )
    }
}

/// Runs the scenario; prints the JSON result on stdout and the summary on stderr.
pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    crate::app::raise_open_files_limit();
    let (common, result) = match scenario {
        Scenario::Commands(args) => (args.common.clone(), commands::run(args).await?),
        Scenario::Chat(args) => (args.common.clone(), chat::run(args).await?),
        Scenario::Sockets(args) => (args.common.clone(), sockets::run(args).await?),
        Scenario::Rpc(args) => (args.common.clone(), rpc::run(args).await?),
        Scenario::Rebuild(args) => (args.common.clone(), rebuild::run(args).await?),
        Scenario::Report(args) => return report::run(args),
    };
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(path) = &common.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, format!("{json}\n"))?;
    }
    println!("{json}");
    eprintln!("{}", result.summary());
    Ok(())
}
