//! `commands`: N clients, each a senior with a volunteer, issuing a write mix as fast as the
//! server answers: chat messages over the WebSocket, schedule create + cancel, top-ups
//! (payment session + sandbox Pay). Every request is one command; all are timed. With
//! `--url2`, every other client sends its commands to a second instance (set-up goes through
//! the first), so reads of one instance wait for rounds another instance projected.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{Duration as Span, TimeZone, Utc};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::client::{open_socket, request, Api, User, WsStream};
use super::stats::{note, Progress, Samples, Window};
use super::{BenchResult, Common};

#[derive(Args, Clone, Debug)]
pub struct CommandsArgs {
    #[command(flatten)]
    pub common: Common,
    /// A second instance on the same database: every other client sends its commands there.
    #[arg(long)]
    pub url2: Option<String>,
    /// Concurrent clients (each waits for its answer before the next command).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Share of chat messages in the mix, percent (the rest is split between schedule
    /// create+cancel and top-ups; schedules need `--admin-email` and `--mail-dir`).
    #[arg(long, default_value_t = 60)]
    pub messages_percent: u32,
    /// An admin account, to verify the volunteers that take bookings.
    #[arg(long)]
    pub admin_email: Option<String>,
    #[arg(long)]
    pub admin_password: Option<String>,
    /// The server's mail directory (`<data dir>/mail`), to read the email codes.
    #[arg(long)]
    pub mail_dir: Option<PathBuf>,
    /// Verified volunteers the clients book (each client books its own day).
    #[arg(long, default_value_t = 4)]
    pub volunteers: usize,
}

struct Client {
    /// The instance this client sends its commands to.
    api: Api,
    senior: User,
    volunteer: User,
    chat: String,
    /// The day (from tomorrow) this client's bookings fall on.
    day: i64,
    socket: WsStream,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Message,
    ScheduleCreate,
    ScheduleCancel,
    TopUpSession,
    TopUpPay,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Message => "chat.message.send",
            Kind::ScheduleCreate => "schedule.create",
            Kind::ScheduleCancel => "schedule.cancel",
            Kind::TopUpSession => "topup.session",
            Kind::TopUpPay => "topup.pay",
        }
    }
}

type KindSamples = BTreeMap<Kind, Samples>;

pub async fn run(args: CommandsArgs) -> anyhow::Result<BenchResult> {
    let quiet = args.common.quiet;
    let api = Api::new(&args.common.url)?;
    let second = args.url2.as_deref().map(Api::new).transpose()?;
    let schedules = match (&args.admin_email, &args.admin_password, &args.mail_dir) {
        (Some(email), Some(password), Some(dir)) => Some((
            api.sign_in(email, password)
                .await
                .context("signing in the admin")?,
            dir.clone(),
        )),
        _ => None,
    };
    note(quiet, &format!("setting up {} clients", args.clients));
    let clients = set_up(&api, second.as_ref(), &args, schedules.as_ref()).await?;
    let with_schedules = schedules.is_some();

    let window = Window::starting_now(args.common.warmup(), args.common.duration());
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(window, done.clone(), "commands", quiet);
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let done = done.clone();
            let messages_percent = args.messages_percent.min(100);
            tokio::spawn(async move {
                drive(client, i, window, done, messages_percent, with_schedules).await
            })
        })
        .collect();
    let mut by_kind = KindSamples::new();
    for worker in workers {
        for (kind, samples) in worker.await? {
            by_kind.entry(kind).or_default().merge(samples);
        }
    }
    progress.finish();

    let mut all = Samples::default();
    let mut extra = serde_json::Map::new();
    for (kind, samples) in by_kind {
        extra.insert(
            kind.name().to_string(),
            json!({"count": samples.micros.len(), "errors": samples.errors,
                   "latencyMs": samples.latency()}),
        );
        all.merge(samples);
    }
    let operations = all.micros.len() as u64;
    Ok(BenchResult {
        scenario: "commands".into(),
        label: args
            .common
            .label
            .clone()
            .unwrap_or_else(|| format!("commands clients={}", args.clients)),
        url: args.common.url.clone(),
        started_at: Utc::now(),
        params: json!({"clients": args.clients, "messagesPercent": args.messages_percent,
                       "schedules": with_schedules, "url2": args.url2}),
        duration_secs: window.seconds(),
        operations,
        errors: all.errors,
        throughput: operations as f64 / window.seconds(),
        unit: "commands/s".into(),
        latency_ms: all.latency(),
        extra: Value::Object(extra),
    })
}

async fn set_up(
    api: &Api,
    second: Option<&Api>,
    args: &CommandsArgs,
    schedules: Option<&(User, PathBuf)>,
) -> anyhow::Result<Vec<Client>> {
    let seniors = api.sign_up_many("senior", args.clients).await?;
    let volunteers = match schedules {
        Some((admin, mail_dir)) => {
            let mut verified = Vec::new();
            for _ in 0..args.volunteers.max(1) {
                verified.push(api.verified_volunteer(admin, mail_dir).await?);
            }
            verified
        }
        None => api.sign_up_many("volunteer", args.clients).await?,
    };
    let mut clients = Vec::new();
    for (i, senior) in seniors.into_iter().enumerate() {
        let volunteer = volunteers[i % volunteers.len()].clone();
        let chat = api.connect(&senior, &volunteer).await?;
        // Enough coins for any booking the mix makes.
        let session = api.top_up_session(&senior, 10_000).await?;
        api.pay(&session).await?;
        let home = match second {
            Some(second) if i % 2 == 1 => second.clone(),
            _ => api.clone(),
        };
        let socket = open_socket(&home.ws_url(), &senior.token).await?;
        clients.push(Client {
            api: home,
            senior,
            volunteer,
            chat,
            day: (i / volunteers.len()) as i64,
            socket,
        });
    }
    Ok(clients)
}

async fn drive(
    mut client: Client,
    index: usize,
    window: Window,
    done: Arc<AtomicU64>,
    messages_percent: u32,
    with_schedules: bool,
) -> KindSamples {
    let mut samples = KindSamples::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut sequence = 0u64;
    while !window.over() {
        sequence += 1;
        let roll = rng.gen_range(0..100);
        if roll < messages_percent {
            let frame = json!({"action": "chat.message.send", "requestId": sequence.to_string(),
                "chatId": client.chat, "message": {"text": format!("bench {index} {sequence}")}});
            let started = Instant::now();
            let ok = request(&mut client.socket, frame)
                .await
                .is_ok_and(|reply| reply["success"] == json!(true));
            record(&mut samples, Kind::Message, window, started, ok, &done);
        } else if with_schedules && roll % 2 == 0 {
            book_and_cancel(&client, window, &mut samples, &done).await;
        } else {
            let api = &client.api;
            let started = Instant::now();
            let session = api.top_up_session(&client.senior, 100).await;
            record(
                &mut samples,
                Kind::TopUpSession,
                window,
                started,
                session.is_ok(),
                &done,
            );
            if let Ok(session) = session {
                let started = Instant::now();
                let ok = api.pay(&session).await.is_ok();
                record(&mut samples, Kind::TopUpPay, window, started, ok, &done);
            }
        }
    }
    samples
}

async fn book_and_cancel(
    client: &Client,
    window: Window,
    samples: &mut KindSamples,
    done: &AtomicU64,
) {
    let date = Utc::now().date_naive() + Span::days(1 + client.day);
    let Some(from) = date
        .and_hms_opt(10, 0, 0)
        .map(|t| Utc.from_utc_datetime(&t))
    else {
        return;
    };
    let api = &client.api;
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"title": "Bench call", "type": "audio", "recurrence": "none",
        "startDateTime": iso(from), "endDateTime": iso(from + Span::minutes(30))});
    let started = Instant::now();
    let booked = api
        .post(
            &format!("/v1/user/{}/schedule", client.volunteer.id),
            Some(&client.senior.token),
            body,
        )
        .await;
    let schedule = booked
        .as_ref()
        .ok()
        .and_then(|data| data["schedule"]["id"].as_str().map(str::to_string));
    record(
        samples,
        Kind::ScheduleCreate,
        window,
        started,
        schedule.is_some(),
        done,
    );
    if let Some(id) = schedule {
        let started = Instant::now();
        let ok = api
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/schedule/{id}"),
                Some(&client.senior.token),
                None,
            )
            .await
            .is_ok();
        record(samples, Kind::ScheduleCancel, window, started, ok, done);
    }
}

fn record(
    samples: &mut KindSamples,
    kind: Kind,
    window: Window,
    started: Instant,
    ok: bool,
    done: &AtomicU64,
) {
    done.fetch_add(1, Ordering::Relaxed);
    if !window.counts(started) {
        return;
    }
    let entry = samples.entry(kind).or_default();
    if ok {
        entry.add(started.elapsed());
    } else {
        entry.errors += 1;
    }
}
