//! `sockets`: K idle authenticated sockets held open (each sends an application `ping` every
//! 25 s so the server's 60 s silence timeout never closes it). Reports the server's resident
//! memory per socket (from `/proc/<pid>/status`, before and after opening them) and the
//! latency of `ping` round-trips sent at a low rate to random sockets while all are open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{next_json, open_socket, resident_kib, Api, WsStream};
use super::stats::{note, Progress, Samples, Window};
use super::{BenchResult, Common};

const KEEPALIVE: Duration = Duration::from_secs(25);

#[derive(Args, Clone, Debug)]
pub struct SocketsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 20_000)]
    pub sockets: usize,
    /// Users they belong to (default: one per 20 sockets; sign-ups hash passwords, so
    /// thousands of users take minutes to create).
    #[arg(long)]
    pub users: Option<usize>,
    /// The server's process id (default: found from the listening port when the server runs
    /// on this machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Sockets opened at a time.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Another instance of the same deployment to sign the users up on, so the measured
    /// server's memory holds sockets only (not what password hashing left behind).
    #[arg(long)]
    pub setup_url: Option<String>,
    /// Pings per second during the window.
    #[arg(long, default_value_t = 200.0)]
    pub ping_rate: f64,
}

type PingRequest = oneshot::Sender<Duration>;

pub async fn run(args: SocketsArgs) -> anyhow::Result<BenchResult> {
    let quiet = args.common.quiet;
    let api = Api::new(&args.common.url)?;
    let pid = match args.server_pid {
        Some(pid) => Some(pid),
        None => find_listener_pid(&args.common.url).ok(),
    };
    let user_count = args.users.unwrap_or(args.sockets.div_ceil(20)).max(1);
    note(quiet, &format!("signing up {user_count} users"));
    let setup = match &args.setup_url {
        Some(url) => Api::new(url)?,
        None => api.clone(),
    };
    let users = setup.sign_up_many("senior", user_count).await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pid.map(resident_kib).transpose()?;
    note(quiet, &format!("opening {} sockets", args.sockets));
    let opening = Instant::now();
    let ws_url = api.ws_url();
    let dropped = Arc::new(AtomicU64::new(0));
    let opened: Vec<anyhow::Result<mpsc::Sender<PingRequest>>> =
        futures_util::stream::iter(0..args.sockets)
            .map(|i| {
                let token = users[i % users.len()].token.clone();
                let ws_url = ws_url.clone();
                let dropped = dropped.clone();
                async move {
                    let socket = open_socket(&ws_url, &token).await?;
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(hold(socket, rx, dropped));
                    Ok(tx)
                }
            })
            .buffer_unordered(args.connect_concurrency.max(1))
            .collect()
            .await;
    let open_secs = opening.elapsed().as_secs_f64();
    let failed_to_open = opened.iter().filter(|r| r.is_err()).count();
    let first_failure = opened
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
    let sockets: Vec<_> = opened.into_iter().filter_map(Result::ok).collect();
    if sockets.is_empty() {
        bail!(
            "no socket opened: {}",
            first_failure.unwrap_or_else(|| "none asked".into())
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pid.map(resident_kib).transpose()?;

    let window = Window::starting_now(args.common.warmup(), args.common.duration());
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(window, done.clone(), "pings", quiet);
    let samples = ping(&sockets, args.ping_rate, window, done).await;
    progress.finish();
    let end = pid.map(resident_kib).transpose()?;

    let per_socket = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / sockets.len() as f64),
        _ => None,
    };
    let dropped = dropped.load(Ordering::Relaxed);
    let operations = samples.micros.len() as u64;
    drop(sockets);
    Ok(BenchResult {
        scenario: "sockets".into(),
        label: args
            .common
            .label
            .clone()
            .unwrap_or_else(|| format!("sockets k={}", args.sockets)),
        url: args.common.url.clone(),
        started_at: chrono::Utc::now(),
        params: json!({"sockets": args.sockets, "users": user_count, "pingRate": args.ping_rate,
                       "serverPid": pid, "setupUrl": args.setup_url}),
        duration_secs: window.seconds(),
        operations,
        errors: samples.errors + failed_to_open as u64 + dropped,
        throughput: operations as f64 / window.seconds(),
        unit: "pings/s".into(),
        latency_ms: samples.latency(),
        extra: json!({"opened": args.sockets - failed_to_open, "failedToOpen": failed_to_open,
                      "firstFailure": first_failure, "droppedWhileHeld": dropped,
                      "openSeconds": open_secs,
                      "serverRssBeforeKib": before, "serverRssAfterKib": after,
                      "serverRssEndKib": end, "serverKibPerSocket": per_socket}),
    })
}

/// Holds one socket: answers ping requests, keeps it alive, notices when it drops.
async fn hold(
    socket: WsStream,
    mut requests: mpsc::Receiver<PingRequest>,
    dropped: Arc<AtomicU64>,
) {
    let (mut sink, mut source) = socket.split();
    let jitter =
        Duration::from_millis(rand::thread_rng().gen_range(0..KEEPALIVE.as_millis() as u64));
    let mut keepalive = tokio::time::interval_at(Instant::now() + jitter, KEEPALIVE);
    let mut pending: Option<(Instant, PingRequest)> = None;
    let ping = |id: &str| Message::text(json!({"action": "ping", "requestId": id}).to_string());
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                Some(reply_to) => {
                    let sent = Instant::now();
                    if sink.send(ping("ping")).await.is_err() {
                        break;
                    }
                    pending = Some((sent, reply_to));
                }
                None => return,
            },
            _ = keepalive.tick() => {
                if sink.send(ping("keepalive")).await.is_err() {
                    break;
                }
            }
            frame = next_json(&mut source) => match frame {
                Ok(frame) if frame["requestId"] == json!("ping") => {
                    if let Some((sent, reply_to)) = pending.take() {
                        let _ = reply_to.send(sent.elapsed());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            },
        }
    }
    dropped.fetch_add(1, Ordering::Relaxed);
}

/// Pings random sockets at `rate` per second until the window ends.
async fn ping(
    sockets: &[mpsc::Sender<PingRequest>],
    rate: f64,
    window: Window,
    done: Arc<AtomicU64>,
) -> Samples {
    let (results, mut collected) = mpsc::unbounded_channel::<Option<Duration>>();
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut ticker = tokio::time::interval(period);
    while !window.over() {
        ticker.tick().await;
        let started = Instant::now();
        let socket = sockets[rand::thread_rng().gen_range(0..sockets.len())].clone();
        let results = results.clone();
        let counts = window.counts(started);
        let done = done.clone();
        tokio::spawn(async move {
            let (tx, rx) = oneshot::channel();
            let latency = match socket.try_send(tx) {
                // Busy with the previous ping: skip, it is not a server figure.
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => None,
                Ok(()) => tokio::time::timeout(Duration::from_secs(10), rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            done.fetch_add(1, Ordering::Relaxed);
            if counts {
                let _ = results.send(latency);
            }
        });
    }
    drop(results);
    let mut samples = Samples::default();
    while let Some(latency) = collected.recv().await {
        match latency {
            Some(latency) => samples.add(latency),
            None => samples.errors += 1,
        }
    }
    samples
}

/// The process listening on the URL's port on this machine (`/proc/net/tcp*` gives the
/// socket's inode, `/proc/<pid>/fd` its owner).
fn find_listener_pid(url: &str) -> anyhow::Result<u32> {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow!("no port in {url}"))?;
    let suffix = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, ..., st (0A = LISTEN), ..., inode
            if fields.len() > 9 && fields[1].ends_with(&suffix) && fields[3] == "0A" {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Ok(pid);
                }
            }
        }
    }
    bail!("no local process listens on port {port}")
}
