//! Database faults (issue 9 item 4): PostgreSQL goes away for 10 s under load and comes back.
//!
//! The PostgreSQL server is shared by every test, so the outage is simulated: the server talks
//! to it through a TCP proxy inside the test, and "stopping the database" closes the proxy's
//! listener and kills every connection through it (the backends see the sockets close, so an
//! open transaction is rolled back as with a dead server); "restarting" it listens again on
//! the same port. Meanwhile a few tasks send chat messages over WebSocket, update profiles,
//! open top-ups and read, recording every answer.
//!
//! Checked: every answer is a success or a 503 in the error envelope (never a hang, a 500 or a
//! dropped connection), `/readyz` fails during the outage and recovers by itself, `/healthz`
//! answers throughout, writes succeed again after recovery, a socket that missed pushes gets
//! them with `since`, and no command is half-applied: every success is in the read models,
//! retrying a 503 with the same idempotency key yields exactly one result, the read models
//! agree with the event log, and the ledger audit is clean.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use talkamie_projections::with_pool;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{unique_email, Backend, Incoming, Server, TestDb, Ws};

/// How long the database is away.
const OUTAGE: Duration = Duration::from_secs(10);
/// No answer may take longer than this, outage or not (the pool gives up after 5 s, a
/// command waits at most 10 s for the read models).
const ANSWER_BOUND: Duration = Duration::from_secs(15);
/// `/readyz` is green again at most this long after the database returns.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Load before the outage and after the recovery.
const STEADY: Duration = Duration::from_secs(3);
/// The pause between two requests of one load task.
const PAUSE: Duration = Duration::from_millis(100);

/// A TCP proxy in front of PostgreSQL that can be cut and restored.
struct Proxy {
    port: u16,
    upstream: String,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = Arc::new(Proxy {
            port,
            upstream,
            accept: Mutex::new(None),
            connections: Arc::default(),
        });
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let connections = self.connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let upstream = upstream.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut connections = connections.lock().expect("proxy connections");
                connections.retain(|c| !c.is_finished());
                connections.push(forward);
            }
        });
        *self.accept.lock().expect("proxy accept") = Some(accept);
    }

    /// The database "stops": nothing listens any more, and every open connection dies.
    async fn cut(&self) -> usize {
        let accept = self.accept.lock().expect("proxy accept").take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let connections = std::mem::take(&mut *self.connections.lock().expect("connections"));
        let killed = connections.iter().filter(|c| !c.is_finished()).count();
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
        killed
    }

    /// The database "starts" again on the same port.
    async fn restore(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) => {
                    tries += 1;
                    assert!(tries < 50, "cannot listen on {} again: {error}", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        self.serve(listener);
    }
}

/// `host:port` of a PostgreSQL URL.
fn upstream_of(url: &str) -> String {
    let (_, rest) = url.split_once("://").expect("URL scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    }
}

/// The same URL, through `127.0.0.1:port`.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("{scheme}://{user}127.0.0.1:{port}/{path}")
}

/// What came back for one request.
#[derive(Debug, Clone)]
enum Outcome {
    Http {
        status: u16,
        body: Value,
    },
    /// A WebSocket reply frame.
    Frame(Value),
    /// The server closed the socket instead of answering (close code).
    Closed(Option<u16>),
    /// No answer: transport error, timeout, not JSON.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Answer {
    what: String,
    /// Since the load started.
    started: Duration,
    elapsed: Duration,
    outcome: Outcome,
}

impl Answer {
    fn ended(&self) -> Duration {
        self.started + self.elapsed
    }

    /// `Ok(true)` success, `Ok(false)` a proper "unavailable", `Err` anything else.
    fn verdict(&self) -> Result<bool, String> {
        let (status, body) = match &self.outcome {
            Outcome::Http { status, body } => (*status, body),
            Outcome::Frame(body) => (body["statusCode"].as_u64().unwrap_or(0) as u16, body),
            // 1013 "try again later" is the WebSocket's 503.
            Outcome::Closed(Some(1013)) => return Ok(false),
            Outcome::Closed(code) => return Err(format!("{}: closed ({code:?})", self.what)),
            Outcome::Failed(why) => return Err(format!("{}: {why}", self.what)),
        };
        if (200..300).contains(&status) && body["success"] == json!(true) {
            return Ok(true);
        }
        let envelope = status == 503
            && body["success"] == json!(false)
            && body["statusCode"] == json!(503)
            && body["error"] == json!("unavailable")
            && body["message"].as_str().is_some_and(|m| !m.is_empty());
        if envelope {
            Ok(false)
        } else {
            Err(format!("{}: {status} {body}", self.what))
        }
    }
}

/// What the load tasks share.
#[derive(Clone)]
struct Ctx {
    base: String,
    ws_url: String,
    http: reqwest::Client,
    t0: Instant,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Ctx {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, what: String, started: Duration, outcome: Outcome) -> Answer {
        let answer = Answer {
            what,
            started,
            elapsed: self.now() - started,
            outcome,
        };
        self.answers.lock().expect("answers").push(answer.clone());
        answer
    }

    /// One REST request, recorded.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let started = self.now();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            // Twice the bound: a hang shows as a failure, not as a stuck test.
            .timeout(ANSWER_BOUND * 2);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(text) => match serde_json::from_str(&text) {
                        Ok(body) => Outcome::Http { status, body },
                        Err(_) => Outcome::Failed(format!("{status}, not JSON: {text}")),
                    },
                    Err(e) => Outcome::Failed(format!("{status}, body: {e}")),
                }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.record(format!("{method} {path}"), started, outcome)
    }

    /// Opens and authenticates a socket (recorded); `None` when that failed.
    async fn open_ws(&self, who: &str, token: &str, since: Option<i64>) -> Option<Ws> {
        let started = self.now();
        let stream = match tokio_tungstenite::connect_async(&self.ws_url).await {
            Ok((stream, _)) => stream,
            Err(e) => {
                self.record(
                    format!("ws connect {who}"),
                    started,
                    Outcome::Failed(e.to_string()),
                );
                return None;
            }
        };
        let mut ws = Ws { stream };
        let mut frame = json!({"action": "authenticate", "token": token, "requestId": "auth"});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        let outcome = ws_request(&mut ws, frame, "auth").await;
        let answer = self.record(format!("ws authenticate {who}"), started, outcome);
        matches!(answer.verdict(), Ok(true)).then_some(ws)
    }
}

/// Sends `frame` and waits for the reply with `request_id`, skipping pushes.
async fn ws_request(ws: &mut Ws, frame: Value, request_id: &str) -> Outcome {
    if !ws.send_raw(Message::text(frame.to_string())).await {
        return Outcome::Failed("send on a closed socket".into());
    }
    let deadline = Instant::now() + ANSWER_BOUND * 2;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_within(left).await {
            Some(Incoming::Json(v)) => {
                if v.get("position").is_none() && v["requestId"] == json!(request_id) {
                    return Outcome::Frame(v);
                }
            }
            Some(Incoming::Closed(code)) => return Outcome::Closed(code),
            None => return Outcome::Failed("no reply in time".into()),
        }
    }
}

/// One attempt to send a chat message.
#[derive(Debug, Clone)]
struct Sent {
    chat: String,
    client_id: String,
    /// The stored message id when the answer was a success.
    message_id: Option<String>,
}

/// Sends messages into `chat` over a socket until stopped, reconnecting when it closes.
async fn send_messages(ctx: Ctx, who: String, token: String, chat: String) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut socket: Option<Ws> = None;
    let mut n = 0;
    while !ctx.stopped() {
        let Some(ws) = socket.as_mut() else {
            socket = ctx.open_ws(&who, &token, None).await;
            if socket.is_none() {
                tokio::time::sleep(PAUSE).await;
            }
            continue;
        };
        n += 1;
        let client_id = format!("{who}-{n}");
        let frame = json!({"action": "chat.message.send", "requestId": client_id,
                           "chatId": chat, "clientId": client_id,
                           "message": {"text": format!("message {client_id}")}});
        let started = ctx.now();
        let outcome = ws_request(ws, frame, &client_id).await;
        let answer = ctx.record(format!("ws send {client_id}"), started, outcome);
        let message_id = match (&answer.verdict(), &answer.outcome) {
            (Ok(true), Outcome::Frame(reply)) => Some(
                reply["data"]["message"]["id"]
                    .as_str()
                    .expect("message id")
                    .to_string(),
            ),
            _ => None,
        };
        if matches!(answer.outcome, Outcome::Closed(_) | Outcome::Failed(_)) {
            socket = None;
        }
        sent.push(Sent {
            chat: chat.clone(),
            client_id,
            message_id,
        });
        tokio::time::sleep(PAUSE).await;
    }
    sent
}

/// Updates `user`'s bio until stopped: every bio tried, and whether it got a success.
async fn update_profiles(ctx: Ctx, user: (String, String)) -> Vec<(String, bool)> {
    let mut tried = Vec::new();
    let mut n = 0;
    while !ctx.stopped() {
        n += 1;
        let bio = format!("bio {n}");
        let answer = ctx
            .call(
                reqwest::Method::PUT,
                &format!("/v1/user/{}", user.0),
                Some(&user.1),
                Some(json!({ "bio": bio })),
                None,
            )
            .await;
        tried.push((bio, matches!(answer.verdict(), Ok(true))));
        tokio::time::sleep(PAUSE).await;
    }
    tried
}

/// Opens top-ups until stopped: every idempotency key, with the transaction id on success.
async fn open_top_ups(ctx: Ctx, who: String, token: String) -> Vec<(String, Option<String>)> {
    let mut opened = Vec::new();
    let mut n = 0;
    while !ctx.stopped() {
        n += 1;
        let key = format!("{who}-top-up-{n}");
        let (transaction, _) = top_up(&ctx, &token, &key).await;
        opened.push((key, transaction));
        tokio::time::sleep(PAUSE).await;
    }
    opened
}

async fn top_up(ctx: &Ctx, token: &str, key: &str) -> (Option<String>, Answer) {
    let answer = ctx
        .call(
            reqwest::Method::POST,
            "/v1/web/finance/top-up/session",
            Some(token),
            Some(json!({"coins": 100})),
            Some(key),
        )
        .await;
    let transaction = match (&answer.verdict(), &answer.outcome) {
        (Ok(true), Outcome::Http { body, .. }) => Some(
            body["data"]["transaction"]["id"]
                .as_str()
                .expect("transaction id")
                .to_string(),
        ),
        _ => None,
    };
    (transaction, answer)
}

/// Reads `path` until stopped.
async fn read(ctx: Ctx, path: String, token: String) {
    while !ctx.stopped() {
        ctx.call(reqwest::Method::GET, &path, Some(&token), None, None)
            .await;
        tokio::time::sleep(PAUSE).await;
    }
}

/// Opens a socket, authenticates (replaying from the start of the feed), pings and leaves,
/// until stopped: a client that keeps reconnecting.
async fn reconnect(ctx: Ctx, who: String, token: String) {
    while !ctx.stopped() {
        if let Some(mut ws) = ctx.open_ws(&who, &token, Some(0)).await {
            let started = ctx.now();
            let outcome = ws_request(
                &mut ws,
                json!({"action": "ping", "requestId": "ping"}),
                "ping",
            )
            .await;
            ctx.record(format!("ws ping {who}"), started, outcome);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A probe of `/readyz` and `/healthz`.
#[derive(Debug, Clone)]
struct Probe {
    started: Duration,
    ended: Duration,
    ready: Outcome,
    healthy: Outcome,
}

async fn probe(ctx: Ctx) -> Vec<Probe> {
    let mut probes = Vec::new();
    while !ctx.stopped() {
        let started = ctx.now();
        let ready = ctx
            .call(reqwest::Method::GET, "/readyz", None, None, None)
            .await
            .outcome;
        let healthy = ctx
            .call(reqwest::Method::GET, "/healthz", None, None, None)
            .await
            .outcome;
        probes.push(Probe {
            started,
            ended: ctx.now(),
            ready,
            healthy,
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    probes
}

fn is_ok(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Http { status, .. } if (200..300).contains(status))
}

/// Every message of `chat` (newest first), through the socket of a member.
async fn all_messages(ws: &mut Ws, chat: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        let mut frame = json!({"action": "chat.messages.get", "requestId": format!("page-{page}"),
                               "chatId": chat, "pageSize": 100});
        if let Some(key) = &after {
            frame["lastEvaluatedKey"] = json!(key);
        }
        let reply = ws.request(frame).await;
        assert_eq!(reply["success"], json!(true), "{reply}");
        messages.extend(
            reply["data"]["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .cloned(),
        );
        match reply["pagination"]["lastEvaluatedKey"].as_str() {
            Some(key) => after = Some(key.to_string()),
            None => break,
        }
    }
    messages
}

/// Every transaction of the caller.
async fn all_transactions(server: &Server, token: &str) -> Vec<Value> {
    let mut transactions = Vec::new();
    let mut path = "/v1/finance/transactions?pageSize=100".to_string();
    loop {
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        transactions.extend(body["data"].as_array().expect("list").iter().cloned());
        match body["pagination"]["lastEvaluatedKey"].as_str() {
            Some(key) => {
                path = format!("/v1/finance/transactions?pageSize=100&lastEvaluatedKey={key}")
            }
            None => break,
        }
    }
    transactions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stops_for_ten_seconds_under_load() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let direct = db.database_url.clone().expect("PostgreSQL URL");
    let proxy = Proxy::start(upstream_of(&direct)).await;
    let proxied = through(&direct, proxy.port);
    let server = Server::start_with(
        &db,
        &[
            ("DATABASE_URL", proxied.as_str()),
            // The load is not a flood: no 429 may hide the answers under test.
            ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000"),
        ],
    )
    .await;

    let user = |kind: &'static str| {
        let server = &server;
        async move {
            let (id, token, _) = server
                .sign_up(&unique_email(kind), "password-1", kind)
                .await;
            (id, token)
        }
    };
    let (s1, v1, s2, v2) = (
        user("senior").await,
        user("volunteer").await,
        user("senior").await,
        user("volunteer").await,
    );
    let chat1 = server.connect(&s1, &v1).await;
    let chat2 = server.connect(&s2, &v2).await;

    // The volunteer of chat 1 listens until the outage, when their network drops too.
    let (mut listener, _) = server.ws_authenticated(&v1.1, None).await;
    let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
    let listening = tokio::spawn(async move {
        let mut seen: Vec<(i64, String, Value)> = Vec::new();
        loop {
            tokio::select! {
                incoming = listener.next_within(Duration::from_secs(3600)) => match incoming {
                    Some(Incoming::Json(v)) => {
                        if let Some(position) = v["position"].as_i64() {
                            seen.push((position, v["action"].as_str().unwrap_or("").to_string(), v));
                        }
                    }
                    other => panic!("the listener's socket ended before the outage: {other:?}"),
                },
                _ = cut_rx.changed() => return seen,
            }
        }
    });

    let ctx = Ctx {
        base: server.base.clone(),
        ws_url: server.ws_url.clone(),
        http: server.http.clone(),
        t0: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
        answers: Arc::default(),
    };
    let senders: Vec<_> = [
        ("s1", &s1.1, &chat1),
        ("s2", &s2.1, &chat2),
        ("v2", &v2.1, &chat2),
    ]
    .into_iter()
    .map(|(who, token, chat)| {
        tokio::spawn(send_messages(
            ctx.clone(),
            who.to_string(),
            token.clone(),
            chat.clone(),
        ))
    })
    .collect();
    let updaters: Vec<_> = [&v1, &v2]
        .into_iter()
        .map(|v| tokio::spawn(update_profiles(ctx.clone(), v.clone())))
        .collect();
    let top_ups: Vec<_> = [("s1", &s1.1), ("s2", &s2.1)]
        .into_iter()
        .map(|(who, token)| tokio::spawn(open_top_ups(ctx.clone(), who.into(), token.clone())))
        .collect();
    let readers = vec![
        tokio::spawn(read(ctx.clone(), "/v1/chats".into(), s1.1.clone())),
        tokio::spawn(read(ctx.clone(), "/v1/auth".into(), v2.1.clone())),
        tokio::spawn(reconnect(ctx.clone(), "v1".into(), v1.1.clone())),
    ];
    let probing = tokio::spawn(probe(ctx.clone()));

    // Steady load, then the database stops.
    tokio::time::sleep(STEADY).await;
    let cut_at = ctx.now();
    cut_tx.send_replace(true);
    let before_cut = listening.await.expect("listener");
    let killed = proxy.cut().await;
    let cut_done = ctx.now();
    tokio::time::sleep(OUTAGE).await;
    let restore_at = ctx.now();
    proxy.restore().await;

    // It recovers by itself: /readyz turns green (the probe keeps polling).
    let green = loop {
        let probes_ok = {
            let answers = ctx.answers.lock().expect("answers");
            answers
                .iter()
                .filter(|a| a.what == "GET /readyz" && a.started >= restore_at)
                .find(|a| is_ok(&a.outcome))
                .map(Answer::ended)
        };
        if let Some(at) = probes_ok {
            break at;
        }
        assert!(
            ctx.now() - restore_at < RECOVERY_BOUND,
            "/readyz still failing {RECOVERY_BOUND:?} after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(STEADY).await;
    ctx.stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for task in senders {
        sent.extend(task.await.expect("sender"));
    }
    let mut bios = Vec::new();
    for task in updaters {
        bios.push(task.await.expect("updater"));
    }
    let mut opened = Vec::new();
    for task in top_ups {
        opened.push(task.await.expect("top-ups"));
    }
    for task in readers {
        task.await.expect("reader");
    }
    let probes = probing.await.expect("probe");
    let answers = ctx.answers.lock().expect("answers").clone();

    // Every answer, outage or not: a success or a 503 in the envelope, within the bound.
    let bad: Vec<String> = answers.iter().filter_map(|a| a.verdict().err()).collect();
    assert!(
        bad.is_empty(),
        "answers that are neither success nor 503: {bad:#?}"
    );
    let slowest = answers
        .iter()
        .max_by_key(|a| a.elapsed)
        .expect("some answers");
    assert!(
        slowest.elapsed < ANSWER_BOUND,
        "an answer took {:?}: {slowest:?}",
        slowest.elapsed
    );
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.what != "GET /readyz" && a.what != "GET /healthz")
        .filter(|a| a.started >= cut_at && a.started < restore_at)
        .collect();
    let unavailable = during
        .iter()
        .filter(|a| matches!(a.verdict(), Ok(false)))
        .count();
    let max_during = during.iter().map(|a| a.elapsed).max().unwrap_or_default();
    assert!(
        unavailable > 0,
        "the outage was not noticed ({} requests, {killed} connections cut)",
        during.len()
    );

    // /readyz fails while the database is away, /healthz never does.
    let inside: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.started >= cut_done && p.ended <= restore_at)
        .collect();
    assert!(!inside.is_empty(), "no /readyz probe during the outage");
    for p in &inside {
        match &p.ready {
            Outcome::Http { status: 503, body } => {
                assert_eq!(body["error"], json!("unavailable"), "{body}")
            }
            other => panic!("/readyz during the outage: {other:?}"),
        }
    }
    for p in &probes {
        assert!(is_ok(&p.healthy), "/healthz: {:?}", p.healthy);
    }

    // After the recovery every request succeeds.
    let late_failures: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.started >= green)
        .filter(|a| !matches!(a.verdict(), Ok(true)))
        .collect();
    assert!(
        late_failures.is_empty(),
        "failures after /readyz was green again: {late_failures:#?}"
    );
    let max_latency = answers.iter().map(|a| a.elapsed).max().unwrap_or_default();
    let after_restore: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.what != "GET /readyz" && a.what != "GET /healthz")
        .filter(|a| a.started >= restore_at)
        .collect();
    let first_success = after_restore
        .iter()
        .filter(|a| matches!(a.verdict(), Ok(true)))
        .map(|a| a.ended())
        .min()
        .unwrap_or_default();
    let max_after = after_restore
        .iter()
        .map(|a| a.elapsed)
        .max()
        .unwrap_or_default();
    let kinds = |filter: &dyn Fn(&Answer) -> bool| during.iter().filter(|a| filter(a)).count();
    eprintln!(
        "db_faults: during the outage {} WebSocket requests, {} REST writes, \
         {} REST reads, {} sockets closed with 1013; after the restore: first success {:?} \
         later, slowest {:?}",
        kinds(&|a| a.what.starts_with("ws ")),
        kinds(&|a| a.what.starts_with("PUT") || a.what.starts_with("POST")),
        kinds(&|a| a.what.starts_with("GET")),
        kinds(&|a| matches!(a.outcome, Outcome::Closed(_))),
        first_success.saturating_sub(restore_at),
        max_after,
    );
    // Writes stored right before the cut wait for the read models until the command gives up.
    for a in answers
        .iter()
        .filter(|a| a.elapsed > Duration::from_secs(6))
    {
        eprintln!("db_faults: slow answer (cut at {cut_at:?}): {a:?}");
    }
    eprintln!(
        "db_faults: {} answers in all; {} connections cut; during the 10 s outage {} requests, \
         {} answered 503, slowest {:?}; slowest overall {:?}; /readyz failing in {} probes, \
         green {:?} after the database returned",
        answers.len(),
        killed,
        during.len(),
        unavailable,
        max_during,
        max_latency,
        inside.len(),
        green.saturating_sub(restore_at),
    );

    // No half-applied profile update: the bio is the last success's or a later attempt's
    // (a 503 after the write was stored may still land).
    for (v, tried) in [&v1, &v2].into_iter().zip(&bios) {
        let (status, body) = server.get(&format!("/v1/user/{}", v.0), Some(&v.1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let last_ok = tried
            .iter()
            .rposition(|(_, ok)| *ok)
            .expect("a bio update succeeded");
        let allowed: Vec<&str> = tried[last_ok..].iter().map(|(b, _)| b.as_str()).collect();
        let bio = body["data"]["bio"].as_str().expect("bio");
        assert!(allowed.contains(&bio), "bio {bio:?}, allowed {allowed:?}");
    }

    // The listener comes back with `since` and gets every message it missed, in order.
    let since = before_cut.iter().map(|(p, _, _)| *p).max().unwrap_or(0);
    let heard: HashSet<String> = before_cut
        .iter()
        .filter(|(_, action, _)| action == "chat.message.new")
        .filter_map(|(_, _, v)| v["data"]["message"]["id"].as_str().map(String::from))
        .collect();
    let mut missed: HashSet<String> = sent
        .iter()
        .filter(|s| s.chat == chat1)
        .filter_map(|s| s.message_id.clone())
        .filter(|id| !heard.contains(id))
        .collect();
    assert!(!missed.is_empty(), "the listener missed nothing");
    let (mut listener, _) = server.ws_authenticated(&v1.1, Some(since)).await;
    let mut last = since;
    while !missed.is_empty() {
        let push = listener.recv().await;
        let Some(position) = push["position"].as_i64() else {
            continue;
        };
        assert!(position > last, "push {position} after {last}: {push}");
        last = position;
        if push["action"] == json!("chat.message.new") {
            if let Some(id) = push["data"]["message"]["id"].as_str() {
                missed.remove(id);
            }
        }
    }

    // Retrying every message that got no success, with its clientId, stores it exactly once.
    let mut sockets: HashMap<&str, Ws> = HashMap::new();
    for (who, token) in [("s1", &s1.1), ("s2", &s2.1), ("v2", &v2.1)] {
        sockets.insert(who, server.ws_authenticated(token, None).await.0);
    }
    for s in sent.iter().filter(|s| s.message_id.is_none()) {
        let who = s.client_id.split('-').next().expect("sender");
        let ws = sockets.get_mut(who).expect("socket");
        let reply = ws
            .request(
                json!({"action": "chat.message.send", "requestId": s.client_id,
                            "chatId": s.chat, "clientId": s.client_id,
                            "message": {"text": format!("message {}", s.client_id)}}),
            )
            .await;
        assert_eq!(
            reply["success"],
            json!(true),
            "retry of {}: {reply}",
            s.client_id
        );
    }
    let mut stored = 0;
    for chat in [&chat1, &chat2] {
        let ws = sockets.get_mut("s2").filter(|_| chat == &chat2);
        let messages = match ws {
            Some(ws) => all_messages(ws, chat).await,
            None => all_messages(sockets.get_mut("s1").expect("s1"), chat).await,
        };
        stored += messages.len();
        let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &messages {
            if let Some(client_id) = m["clientId"].as_str() {
                by_client
                    .entry(client_id.to_string())
                    .or_default()
                    .push(m["id"].as_str().expect("id").to_string());
            }
        }
        for s in sent.iter().filter(|s| &s.chat == chat) {
            let ids = by_client.get(&s.client_id).cloned().unwrap_or_default();
            assert_eq!(ids.len(), 1, "{} stored {} times", s.client_id, ids.len());
            if let Some(id) = &s.message_id {
                assert_eq!(&ids[0], id, "{} changed id", s.client_id);
            }
        }
        assert_eq!(
            by_client.len(),
            sent.iter().filter(|s| &s.chat == chat).count(),
            "messages nobody sent in {chat}"
        );
    }
    // The read models hold exactly what the log holds.
    let direct_db = db.connect().await;
    let logged: i64 = with_pool!(&direct_db, pool => {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Pair' AND event_type = 'MessageSent'",
        )
        .fetch_one(pool)
        .await
        .expect("count events")
    });
    assert_eq!(
        logged as usize, stored,
        "MessageSent events vs messages in the chats"
    );

    // Same for top-ups: a retried key answers one transaction; the list holds each key once.
    for ((who, token), opened) in [("s1", &s1.1), ("s2", &s2.1)].into_iter().zip(&opened) {
        let mut ids = HashSet::new();
        for (key, transaction) in opened {
            let (retried, answer) = top_up(&ctx, token, key).await;
            let retried = retried.unwrap_or_else(|| panic!("retry of {key}: {answer:?}"));
            if let Some(first) = transaction {
                assert_eq!(first, &retried, "{key} answered another transaction");
            }
            ids.insert(retried);
        }
        let listed: Vec<String> = all_transactions(&server, token)
            .await
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(listed.len(), opened.len(), "{who}: one transaction per key");
        assert_eq!(listed.into_iter().collect::<HashSet<_>>(), ids, "{who}");
    }

    // Fresh writes work, money included, and the ledger audit is clean.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{}", v1.0),
            Some(&v1.1),
            Some(json!({"bio": "after the outage"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, session) = {
        let (transaction, answer) = top_up(&ctx, &s1.1, "after-the-outage").await;
        let Outcome::Http { body, .. } = &answer.outcome else {
            panic!("{answer:?}")
        };
        (
            transaction.expect("top-up after the outage"),
            body["data"]["session"]["id"]
                .as_str()
                .expect("session")
                .to_string(),
        )
    };
    let response = server
        .http
        .post(format!("{}/v1/sandbox/checkout/{session}/pay", server.base))
        .send()
        .await
        .expect("pay");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, me) = server.get("/v1/auth", Some(&s1.1)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["data"]["user"]["ledger"]["coins"]["balance"], json!(100));
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["ok"], json!(true), "{report}");

    // The process never died: it still stops gracefully.
    drop(sockets);
    drop(listener);
    server.stop().await;
    proxy.cut().await;
}
