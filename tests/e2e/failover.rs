//! Failover (issue 9 item 2): three instances on one PostgreSQL database, clients spread over
//! them, steady chat traffic, one instance SIGKILLed mid-traffic. Its clients reconnect to the
//! others with `since` (a send it left unanswered is sent again, same `clientId`) and miss
//! nothing; the timers it would have fired fire exactly once on the survivors: the reminder at
//! a schedule's start that it held the claim of (the claim row is written by the test, as the
//! victim would have left it), a ringing call's timeout and a running call's limit; the ledger
//! stays clean.
//!
//! The clock is per process (`POST /v1/admin/clock` moves one instance's clock), so the test
//! moves it on every live instance; moving it on the victim alone makes the victim the one
//! that fires the first reminder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::calls::advance;
use crate::helpers::{Backend, TestDb};
use crate::ledger::{balance, fund, ledger_server, user};
use crate::schedules::verified_volunteer;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Time between two sends of one sender (after the previous one was acknowledged).
const PACE: Duration = Duration::from_millis(150);
/// The instance that dies.
const VICTIM: usize = 2;

/// What one client saw.
#[derive(Default)]
struct Log {
    /// Every push, in the order received, across reconnects.
    pushes: Vec<Value>,
    /// `(clientId, message id)` of every acknowledged send, in order.
    acked: Vec<(String, String)>,
    /// The instance of each successful connection, in order.
    connections: Vec<usize>,
    /// Sends sent again on a new connection because the old one died before the reply.
    resent: usize,
    /// Set once a sender stopped and has nothing in flight.
    done: bool,
    /// A send is out and its reply has not come yet.
    awaiting_reply: bool,
    /// Anything unexpected (a refused send, a failed authentication).
    problems: Vec<String>,
}

impl Log {
    fn pushes_of(&self, action: &str) -> Vec<&Value> {
        self.pushes
            .iter()
            .filter(|p| p["action"] == json!(action))
            .collect()
    }
}

type Shared = Arc<Mutex<Log>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client app: keeps a socket open on the first instance of `order` that answers, resumes
/// with `since` = the last position it saw after a drop, and (as a sender) writes to `chat`
/// one message at a time, sending an unacknowledged one again (same `clientId`) after a drop.
struct Client {
    name: String,
    token: String,
    order: Vec<usize>,
    urls: Vec<String>,
    chat: Option<String>,
    log: Shared,
    sending: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
}

enum Next {
    Frame(Value),
    Quiet,
    Closed,
}

async fn next(ws: &mut Socket, wait: Duration) -> Next {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Next::Quiet,
            Ok(Some(Ok(Message::Text(text)))) => {
                return match serde_json::from_str(&text) {
                    Ok(value) => Next::Frame(value),
                    Err(_) => Next::Closed,
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return Next::Closed,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

impl Client {
    fn problem(&self, what: String) {
        lock(&self.log)
            .problems
            .push(format!("{}: {what}", self.name));
    }

    async fn connect(&self) -> Option<(Socket, usize)> {
        for &i in &self.order {
            let attempt = tokio_tungstenite::connect_async(self.urls[i].as_str());
            if let Ok(Ok((socket, _))) = tokio::time::timeout(Duration::from_secs(5), attempt).await
            {
                return Some((socket, i));
            }
        }
        None
    }

    async fn run(self) {
        let mut since: Option<i64> = None;
        let mut next_k = 0usize;
        let mut in_flight: Option<usize> = None;
        let mut next_send = Instant::now();
        'connection: while self.running.load(Ordering::SeqCst) {
            let Some((mut ws, instance)) = self.connect().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut auth =
                json!({"action": "authenticate", "token": self.token, "requestId": "auth"});
            if let Some(since) = since {
                auth["since"] = json!(since);
            }
            if ws.send(Message::text(auth.to_string())).await.is_err() {
                continue;
            }
            // The reply comes first, then the replay of what was missed.
            match next(&mut ws, Duration::from_secs(10)).await {
                Next::Frame(reply) if reply["success"] == json!(true) => {}
                Next::Frame(reply) => {
                    self.problem(format!("authentication refused: {reply}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                _ => continue,
            }
            lock(&self.log).connections.push(instance);
            // Whatever was in flight on the dead connection goes out again, same clientId.
            let mut resend = in_flight.is_some();
            if resend {
                lock(&self.log).resent += 1;
            }
            let mut sent_at = Instant::now();
            let mut pinged = Instant::now();
            while self.running.load(Ordering::SeqCst) {
                if let Some(chat) = &self.chat {
                    if in_flight.is_none()
                        && self.sending.load(Ordering::SeqCst)
                        && Instant::now() >= next_send
                    {
                        in_flight = Some(next_k);
                        resend = true;
                    }
                    if let (Some(k), true) = (in_flight, resend) {
                        let frame = json!({"action": "chat.message.send", "requestId": format!("m{k}"),
                                           "chatId": chat, "clientId": format!("{}-{k}", self.name),
                                           "message": {"text": format!("{} #{k}", self.name)}});
                        if ws.send(Message::text(frame.to_string())).await.is_err() {
                            continue 'connection;
                        }
                        resend = false;
                        sent_at = Instant::now();
                        lock(&self.log).awaiting_reply = true;
                    }
                    if in_flight.is_none() && !self.sending.load(Ordering::SeqCst) {
                        lock(&self.log).done = true;
                    }
                }
                // The server closes sockets silent for 60 s.
                if pinged.elapsed() > Duration::from_secs(10) {
                    let ping = json!({"action": "ping", "requestId": "ping"});
                    if ws.send(Message::text(ping.to_string())).await.is_err() {
                        continue 'connection;
                    }
                    pinged = Instant::now();
                }
                if in_flight.is_some() && sent_at.elapsed() > Duration::from_secs(15) {
                    self.problem("no reply to a send within 15 s; reconnecting".into());
                    continue 'connection;
                }
                let frame = match next(&mut ws, Duration::from_millis(50)).await {
                    Next::Quiet => continue,
                    Next::Closed => continue 'connection,
                    Next::Frame(frame) => frame,
                };
                if let Some(position) = frame.get("position").and_then(Value::as_i64) {
                    since = Some(position);
                    lock(&self.log).pushes.push(frame);
                    continue;
                }
                let Some(k) = in_flight else { continue };
                if frame["requestId"] != json!(format!("m{k}")) {
                    continue;
                }
                if frame["success"] == json!(true) {
                    let id = frame["data"]["message"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let mut log = lock(&self.log);
                    log.acked.push((format!("{}-{k}", self.name), id));
                    log.awaiting_reply = false;
                    drop(log);
                    in_flight = None;
                    next_k += 1;
                    next_send = Instant::now() + PACE;
                } else if matches!(frame["statusCode"].as_u64(), Some(429 | 503)) {
                    // Shed or rate limited: the same message again shortly.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    resend = true;
                } else {
                    self.problem(format!("send {k} refused: {frame}"));
                    in_flight = None;
                    next_k += 1;
                }
            }
        }
    }
}

async fn wait_until(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    assert!(
        wait_for(timeout, check).await,
        "timed out waiting for {what}"
    );
}

/// Whether `check` came true within `timeout`.
async fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The pushes of `action` in `log` about `id` (at `pointer`).
fn about<'a>(log: &'a Log, action: &str, pointer: &str, id: &str) -> Vec<&'a Value> {
    log.pushes_of(action)
        .into_iter()
        .filter(|p| p.pointer(pointer) == Some(&json!(id)))
        .collect()
}

fn upcoming(log: &Log, schedule: &str) -> Vec<i64> {
    about(log, "schedule.upcoming", "/data/schedule/id", schedule)
        .iter()
        .map(|p| p["data"]["startsInSeconds"].as_i64().unwrap_or(-1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lose_one_and_miss_nothing() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let began = Instant::now();
    let env = [
        ("TALKAMIE_ADJUSTABLE_CLOCK", "true"),
        ("TALKAMIE_TIMER_POLL_MS", "100"),
        ("TALKAMIE_RING_TIMEOUT_SECS", "20"),
        ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "6000"),
    ];
    // The first one migrates the fresh database alone.
    let first = ledger_server(&db, &env).await;
    let (second, third) = tokio::join!(ledger_server(&db, &env), ledger_server(&db, &env));
    let mut servers = vec![first, second, third];
    let urls: Vec<String> = servers.iter().map(|s| s.ws_url.clone()).collect();
    let (_, admin) = servers[0].admin(&db).await;

    // Three chats, each set up through another instance.
    let mut chats = Vec::new();
    for server in &servers {
        let sender = user(server, "senior").await;
        let recipient = user(server, "volunteer").await;
        let chat = server.connect(&sender, &recipient).await;
        chats.push((sender, recipient, chat));
    }
    // P: a booked schedule (reminders 10 minutes before and at its start) and a call that
    // will ring unanswered. Q: a call answered with 100 coins, which buy two minutes.
    let p_volunteer = verified_volunteer(&servers[0], &db, &admin).await;
    let p_senior = user(&servers[1], "senior").await;
    let p_chat = servers[1].connect(&p_senior, &p_volunteer).await;
    fund(&servers[1], &p_senior.1, 1000).await;
    let range = json!([{"start": "00:00", "end": "24:00"}]);
    let (status, body) = servers[0]
        .post(
            "/v1/availability/weekly",
            Some(&p_volunteer.1),
            json!({"sun": range, "mon": range, "tue": range, "wed": range, "thu": range,
                   "fri": range, "sat": range}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start = Utc::now() + Span::hours(1);
    let start = start - Span::nanoseconds(start.timestamp_subsec_nanos() as i64);
    let (status, body) = servers[1]
        .post(
            &format!("/v1/user/{}/schedule", p_volunteer.0),
            Some(&p_senior.1),
            json!({"title": "Tea and a chat", "type": "audio", "recurrence": "none",
                   "startDateTime": iso(start), "endDateTime": iso(start + Span::minutes(15))}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let schedule = body["data"]["schedule"]["id"]
        .as_str()
        .expect("schedule id")
        .to_string();
    let q_volunteer = verified_volunteer(&servers[1], &db, &admin).await;
    let q_senior = user(&servers[2], "senior").await;
    let q_chat = servers[2].connect(&q_senior, &q_volunteer).await;
    fund(&servers[2], &q_senior.1, 100).await;

    // Ten clients over the three instances; the victim holds a chat recipient, a sender, and
    // the seniors of P and Q. Each client's fallback order differs, so the victim's clients
    // spread over both survivors.
    let sending = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(true));
    let mut logs = std::collections::BTreeMap::<String, Shared>::new();
    let mut tasks = Vec::new();
    let mut spawn = |name: &str, token: &str, order: [usize; 3], chat: Option<&str>| {
        let log = Shared::default();
        logs.insert(name.to_string(), log.clone());
        let client = Client {
            name: name.to_string(),
            token: token.to_string(),
            order: order.to_vec(),
            urls: urls.clone(),
            chat: chat.map(str::to_string),
            log,
            sending: sending.clone(),
            running: running.clone(),
        };
        tasks.push(tokio::spawn(client.run()));
    };
    spawn("s0", &chats[0].0 .1, [0, 1, 2], Some(&chats[0].2));
    spawn("r0", &chats[0].1 .1, [2, 0, 1], None);
    spawn("s1", &chats[1].0 .1, [1, 2, 0], Some(&chats[1].2));
    spawn("r1", &chats[1].1 .1, [0, 1, 2], None);
    spawn("s2", &chats[2].0 .1, [2, 1, 0], Some(&chats[2].2));
    spawn("r2", &chats[2].1 .1, [1, 2, 0], None);
    spawn("ps", &p_senior.1, [2, 1, 0], None);
    spawn("pv", &p_volunteer.1, [0, 1, 2], None);
    spawn("qs", &q_senior.1, [2, 0, 1], None);
    spawn("qv", &q_volunteer.1, [1, 0, 2], None);
    let log = |name: &str| logs[name].clone();
    let senders = ["s0", "s1", "s2"];
    let acked = |name: &str| lock(&log(name)).acked.len();
    // Everyone listens before anyone writes (a socket without `since` gets only what comes
    // after it connected).
    wait_until("every client connected", Duration::from_secs(20), || {
        logs.values().all(|l| !lock(l).connections.is_empty())
    })
    .await;
    sending.store(true, Ordering::SeqCst);
    wait_until("traffic on every chat", Duration::from_secs(20), || {
        senders.iter().all(|s| acked(s) >= 5)
    })
    .await;

    // The victim alone reaches the first reminder (10 minutes ahead), so it fires it.
    advance(&[&servers[VICTIM]], &admin, 3005).await;
    wait_until("the victim's reminder", Duration::from_secs(15), || {
        ["ps", "pv"]
            .iter()
            .all(|n| !upcoming(&lock(&log(n)), &schedule).is_empty())
    })
    .await;
    advance(&[&servers[0], &servers[1]], &admin, 3005).await;

    // P's call rings through the victim; Q's is answered there.
    let (mut p_call_ws, _) = servers[VICTIM].ws_authenticated(&p_senior.1, None).await;
    let reply = p_call_ws
        .request(json!({"action": "call.start", "chatId": p_chat, "type": "audio"}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let p_call = reply["data"]["call"]["id"]
        .as_str()
        .expect("call id")
        .to_string();
    let (mut q_call_ws, _) = servers[VICTIM].ws_authenticated(&q_senior.1, None).await;
    let reply = q_call_ws
        .request(json!({"action": "call.start", "chatId": q_chat, "type": "audio"}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let q_call = reply["data"]["call"]["id"]
        .as_str()
        .expect("call id")
        .to_string();
    let (mut q_answer_ws, _) = servers[1].ws_authenticated(&q_volunteer.1, None).await;
    let reply = q_answer_ws
        .request(json!({"action": "call.accept", "callId": q_call}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    wait_until("the calls' pushes", Duration::from_secs(15), || {
        !about(&lock(&log("pv")), "call.incoming", "/data/call/id", &p_call).is_empty()
            && !about(&lock(&log("qs")), "call.accepted", "/data/call/id", &q_call).is_empty()
    })
    .await;

    // What the victim leaves behind when it dies holding the claim of the reminder at the
    // start (claimed at its due time for the 30 s lease, not sent yet).
    let pool = sqlx::PgPool::connect(db.database_url.as_deref().expect("PostgreSQL"))
        .await
        .expect("connect");
    let claimed = sqlx::query(
        "UPDATE schedule_reminders SET claimed_until = due_at + interval '30 seconds'
          WHERE schedule_id = $1 AND lead_secs = 0 AND sent_at IS NULL",
    )
    .bind(&schedule)
    .execute(&pool)
    .await
    .expect("claim")
    .rows_affected();
    assert_eq!(claimed, 1, "the reminder at the start is pending");
    pool.close().await;

    // SIGKILL mid-traffic.
    let before_kill: Vec<usize> = senders.iter().map(|s| acked(s)).collect();
    wait_until("more traffic", Duration::from_secs(20), || {
        senders
            .iter()
            .zip(&before_kill)
            .all(|(s, n)| acked(s) >= n + 3)
    })
    .await;
    // Ideally while the victim's sender waits for a reply (so the send is retried elsewhere);
    // the window is a few milliseconds, hence the tight poll.
    let s2 = log("s2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lock(&s2).awaiting_reply && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let victim = servers.pop().expect("three servers");
    victim.kill();
    let at_kill: Vec<usize> = senders.iter().map(|s| acked(s)).collect();
    drop((p_call_ws, q_call_ws));
    let survivors = [&servers[0], &servers[1]];
    let moved = ["r0", "s2", "ps", "qs"];
    wait_until("the victim's clients back", Duration::from_secs(20), || {
        moved.iter().all(|n| {
            let shared = log(n);
            let seen = lock(&shared);
            seen.connections.len() >= 2 && seen.connections.last() != Some(&VICTIM)
        })
    })
    .await;
    wait_until("traffic after the kill", Duration::from_secs(30), || {
        senders
            .iter()
            .zip(&at_kill)
            .all(|(s, n)| acked(s) >= n + 20)
    })
    .await;

    // The ringing call times out, the answered one reaches its limit: on the survivors.
    advance(&survivors, &admin, 121).await;
    wait_until("the call timers", Duration::from_secs(15), || {
        ["ps", "pv"]
            .iter()
            .all(|n| !about(&lock(&log(n)), "call.missed", "/data/call/id", &p_call).is_empty())
            && ["qs", "qv"]
                .iter()
                .all(|n| !about(&lock(&log(n)), "call.ended", "/data/call/id", &q_call).is_empty())
    })
    .await;

    // The reminder at the start comes due while the dead victim's claim still holds: nothing;
    // once the lease ran out a survivor sends it.
    let offset = Span::seconds(3005 + 121);
    let to_due = (start + Span::seconds(10) - (Utc::now() + offset)).num_seconds();
    assert!(to_due > 0, "the reminder at the start is still ahead");
    advance(&survivors, &admin, to_due).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in ["ps", "pv"] {
        assert_eq!(
            upcoming(&lock(&log(n)), &schedule).len(),
            1,
            "{n}: no reminder while the dead instance's claim holds"
        );
    }
    advance(&survivors, &admin, 30).await;
    wait_until("the reminder at the start", Duration::from_secs(15), || {
        ["ps", "pv"]
            .iter()
            .all(|n| upcoming(&lock(&log(n)), &schedule).len() >= 2)
    })
    .await;

    // Stop writing; wait for every acknowledged message to arrive, then for stragglers.
    sending.store(false, Ordering::SeqCst);
    wait_until("the senders to finish", Duration::from_secs(20), || {
        senders.iter().all(|s| lock(&log(s)).done)
    })
    .await;
    let ids_to = |name: &str, chat: &str| -> Vec<String> {
        about(&lock(&log(name)), "chat.message.new", "/data/chat/id", chat)
            .iter()
            .filter(|p| p["data"]["message"]["type"] != json!("call"))
            .map(|p| {
                p["data"]["message"]["id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    // (On a timeout the comparisons below say what is missing.)
    wait_for(Duration::from_secs(30), || {
        (0..3).all(|i| ids_to(&format!("r{i}"), &chats[i].2).len() >= acked(&format!("s{i}")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task");
    }

    // Nothing unexpected happened to any client, and every feed went forward.
    let mut report = Vec::new();
    for (name, shared) in &logs {
        let log = lock(shared);
        assert!(log.problems.is_empty(), "{:?}", log.problems);
        let positions: Vec<i64> = log
            .pushes
            .iter()
            .map(|p| p["position"].as_i64().unwrap_or(-1))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{name}: positions strictly increase: {positions:?}"
        );
        report.push(format!(
            "{name}: {} pushes, {} acked, instances {:?}, resent {}",
            log.pushes.len(),
            log.acked.len(),
            log.connections,
            log.resent
        ));
    }
    eprintln!("{}", report.join("\n"));
    for name in moved {
        let shared = log(name);
        let seen = lock(&shared);
        assert_eq!(seen.connections[0], VICTIM, "{name} started on the victim");
        assert!(
            seen.connections[1..].iter().all(|i| *i != VICTIM),
            "{name} moved to the survivors: {:?}",
            seen.connections
        );
    }

    // Every acknowledged message reached its recipient (and its sender's socket) once, in order.
    for (i, (_, _, chat)) in chats.iter().enumerate() {
        let sender = format!("s{i}");
        let sent: Vec<String> = lock(&log(&sender))
            .acked
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        assert!(
            sent.iter().all(|id| !id.is_empty()),
            "{sender}: every reply has an id"
        );
        let mut unique = sent.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            sent.len(),
            "{sender}: a retry made no new message"
        );
        assert!(sent.len() >= at_kill[i] + 20);
        for name in [format!("r{i}"), sender.clone()] {
            let got = ids_to(&name, chat);
            let missing: Vec<(usize, &String)> = sent
                .iter()
                .enumerate()
                .filter(|(_, id)| !got.contains(id))
                .collect();
            let extra: Vec<&String> = got.iter().filter(|id| !sent.contains(id)).collect();
            assert_eq!(
                got,
                sent,
                "{name}: every acknowledged message of {sender}, once, in order; \
                 missing (index, id) {missing:?}, not acknowledged {extra:?}, {} acked, \
                 {} received, killed after {}",
                sent.len(),
                got.len(),
                at_kill[i]
            );
        }
    }

    // Each reminder once per person: the victim's (10 minutes ahead) and the survivors' (at
    // the start); none to anyone else.
    for n in ["ps", "pv"] {
        let seen = upcoming(&lock(&log(n)), &schedule);
        assert_eq!(seen.len(), 2, "{n}: two reminders: {seen:?}");
        assert!((500..=600).contains(&seen[0]), "{n}: {seen:?}");
        assert_eq!(seen[1], 0, "{n}: {seen:?}");
    }
    for n in ["qs", "qv", "r0", "r1", "r2", "s0", "s1", "s2"] {
        assert!(
            lock(&log(n)).pushes_of("schedule.upcoming").is_empty(),
            "{n}"
        );
    }

    // The ringing call was missed once, on both sides, with one chat line.
    for n in ["ps", "pv"] {
        let shared = log(n);
        let log = lock(&shared);
        let missed = about(&log, "call.missed", "/data/call/id", &p_call);
        assert_eq!(missed.len(), 1, "{n}: call.missed once");
        assert_eq!(missed[0]["data"]["call"]["status"], json!("missed"));
        let lines = about(&log, "chat.message.new", "/data/message/call/id", &p_call);
        assert_eq!(lines.len(), 1, "{n}: one chat line for the missed call");
        assert!(
            about(&log, "call.ended", "/data/call/id", &p_call).is_empty(),
            "{n}"
        );
    }
    // The answered call ended at its limit once, billed once.
    for n in ["qs", "qv"] {
        let shared = log(n);
        let log = lock(&shared);
        let ended = about(&log, "call.ended", "/data/call/id", &q_call);
        assert_eq!(ended.len(), 1, "{n}: call.ended once");
        let call = &ended[0]["data"]["call"];
        assert_eq!(call["duration"], json!(120), "{n}: {call}");
        assert_eq!(
            call["coins"],
            json!({"charged": 100, "earned": 70}),
            "{n}: {call}"
        );
        let lines = about(&log, "chat.message.new", "/data/message/call/id", &q_call);
        assert_eq!(lines.len(), 1, "{n}: one chat line for the ended call");
    }
    let (_, body) = servers[0]
        .get(&format!("/v1/call/{q_call}"), Some(&q_senior.1))
        .await;
    assert_eq!(body["data"]["endReason"], json!("limit-reached"), "{body}");
    let (_, body) = servers[1]
        .get(&format!("/v1/call/{p_call}"), Some(&p_senior.1))
        .await;
    assert_eq!(body["data"]["status"], json!("missed"), "{body}");
    assert_eq!(balance(&servers[0], &q_senior.1).await, 0);
    assert_eq!(balance(&servers[1], &q_volunteer.1).await, 70);
    assert_eq!(balance(&servers[0], &p_senior.1).await, 1000);
    let (_, body) = servers[1]
        .get("/v1/finance/transactions", Some(&q_senior.1))
        .await;
    let charges = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| t["type"] == json!("charge"))
        .count();
    assert_eq!(charges, 1, "{body}");
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    let audit: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stderr}"));
    assert!(ok && audit["ok"] == json!(true), "{audit}");
    assert_eq!(audit["accounts"]["platform:revenue"], json!(30), "{audit}");
    eprintln!("failover test took {:?}", began.elapsed());
}
