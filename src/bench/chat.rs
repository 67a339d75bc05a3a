//! `chat`: S sockets in pairs (a senior and a volunteer who share a chat); messages go out at a
//! fixed total rate R, alternating direction, and the bench times each from the moment it is
//! written on the sender's socket to the `chat.message.new` push on the recipient's. With
//! `--url2` the volunteers connect to a second instance, so every push crosses instances.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{next_json, open_socket, Api, WsSink, WsSource};
use super::stats::{note, Progress, Samples, Window};
use super::{BenchResult, Common};

/// How long to wait after the window for pushes still in flight.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sockets (two per chat: one for each side).
    #[arg(long, default_value_t = 200)]
    pub sockets: usize,
    /// Messages per second over all chats.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// A second instance of the same deployment: the volunteers' sockets connect there.
    #[arg(long)]
    pub url2: Option<String>,
}

/// Counts shared by the sender and the readers.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    sent_in_window: AtomicU64,
    /// Pushes received (the progress bar shows them).
    received: Arc<AtomicU64>,
    received_in_window: AtomicU64,
    /// Sends the server refused (answered with an error) during the window: never stored, so
    /// never pushed, and not counted again as lost.
    refused_in_window: AtomicU64,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<BenchResult> {
    let quiet = args.common.quiet;
    let pairs = (args.sockets / 2).max(1);
    let api = Api::new(&args.common.url)?;
    let second = args.url2.as_deref().map(Api::new).transpose()?;
    note(quiet, &format!("setting up {pairs} chats"));
    let users = api.pairs(pairs).await?;
    let mut sinks: Vec<(WsSink, String)> = Vec::new();
    // Each socket's reader, with the id of its user (their own sends are pushed to them too).
    let mut sources: Vec<(WsSource, String)> = Vec::new();
    for (senior, volunteer, chat) in &users {
        let senior_socket = open_socket(&api.ws_url(), &senior.token).await?;
        let volunteer_url = second.as_ref().unwrap_or(&api).ws_url();
        let volunteer_socket = open_socket(&volunteer_url, &volunteer.token).await?;
        for (socket, user) in [(senior_socket, senior), (volunteer_socket, volunteer)] {
            let (sink, source) = socket.split();
            sinks.push((sink, chat.clone()));
            sources.push((source, user.id.clone()));
        }
    }

    let origin = Instant::now();
    let counters = Arc::new(Counters::default());
    let window = Window::starting_now(args.common.warmup(), args.common.duration());
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = sources
        .into_iter()
        .map(|(source, me)| {
            let counters = counters.clone();
            let stopped = stopped.clone();
            tokio::spawn(read(source, me, origin, window, counters, stopped))
        })
        .collect();
    let progress = Progress::start(window, counters.received.clone(), "messages", quiet);
    let sending = send(sinks, args.rate, origin, window, counters.clone());
    let sinks = sending.await;
    progress.message(format!(
        "waiting for the last pushes ({} sent)",
        counters.sent.load(Ordering::Relaxed)
    ));
    let waited = Instant::now();
    while counters.received_in_window.load(Ordering::Relaxed)
        + counters.refused_in_window.load(Ordering::Relaxed)
        < counters.sent_in_window.load(Ordering::Relaxed)
        && waited.elapsed() < GRACE
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut all = Samples::default();
    for reader in readers {
        all.merge(reader.await?);
    }
    drop(sinks);
    progress.finish();

    let sent = counters.sent_in_window.load(Ordering::Relaxed);
    let received = counters.received_in_window.load(Ordering::Relaxed);
    let refused = counters.refused_in_window.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(received + refused);
    let instances = if args.url2.is_some() { 2 } else { 1 };
    Ok(BenchResult {
        scenario: "chat".into(),
        label: args.common.label.clone().unwrap_or_else(|| {
            format!(
                "chat rate={} sockets={} instances={instances}",
                args.rate,
                pairs * 2
            )
        }),
        url: args.common.url.clone(),
        started_at: chrono::Utc::now(),
        params: json!({"sockets": pairs * 2, "rate": args.rate, "instances": instances,
                       "url2": args.url2}),
        duration_secs: window.seconds(),
        operations: received,
        errors: refused + lost,
        throughput: received as f64 / window.seconds(),
        unit: "messages/s".into(),
        latency_ms: all.latency(),
        extra: json!({"sentInWindow": sent, "pushedInWindow": received, "lost": lost,
                      "refused": refused, "firstRefusal": all.first_error,
                      "targetRate": args.rate}),
    })
}

/// Sends at `rate` messages per second (catching up in bursts when a tick comes late) until
/// the window ends; alternates chats, then direction.
async fn send(
    mut sinks: Vec<(WsSink, String)>,
    rate: f64,
    origin: Instant,
    window: Window,
    counters: Arc<Counters>,
) -> Vec<(WsSink, String)> {
    let pairs = sinks.len() / 2;
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !window.over() {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let pair = (sent as usize) % pairs;
            let side = ((sent as usize) / pairs) % 2;
            let (sink, chat) = &mut sinks[pair * 2 + side];
            let at = Instant::now();
            let nanos = (at - origin).as_nanos() as u64;
            let frame = json!({"action": "chat.message.send", "requestId": sent.to_string(),
                "chatId": chat, "message": {"text": format!("bench {nanos}")}});
            if sink.send(Message::text(frame.to_string())).await.is_ok() {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                if window.counts(at) {
                    counters.sent_in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sinks
}

/// Times the pushes of messages from the other side; counts refused sends.
async fn read(
    mut source: WsSource,
    me: String,
    origin: Instant,
    window: Window,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) -> Samples {
    let mut samples = Samples::default();
    loop {
        let frame = tokio::select! {
            frame = next_json(&mut source) => frame,
            _ = stopped.changed() => return samples,
        };
        let Ok(frame) = frame else { return samples };
        if frame.get("position").is_none() {
            // A reply to this socket's own send.
            if frame["success"] != json!(true) && frame["requestId"] != Value::Null {
                // The reply comes within the send's round trip: counted by when it arrives.
                if window.counts(Instant::now()) {
                    counters.refused_in_window.fetch_add(1, Ordering::Relaxed);
                }
                if samples.first_error.is_none() {
                    samples.first_error = Some(frame.to_string());
                }
            }
            continue;
        }
        let message = &frame["data"]["message"];
        if frame["action"] != json!("chat.message.new") || message["sender"]["id"] == json!(me) {
            continue;
        }
        let Some(nanos) = message["text"]
            .as_str()
            .and_then(|t| t.strip_prefix("bench "))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let sent_at = origin + Duration::from_nanos(nanos);
        counters.received.fetch_add(1, Ordering::Relaxed);
        if window.counts(sent_at) {
            counters.received_in_window.fetch_add(1, Ordering::Relaxed);
            samples.add(sent_at.elapsed());
        }
    }
}
