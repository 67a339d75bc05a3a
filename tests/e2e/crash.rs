//! Issue 9 item 1: crashes under load (PostgreSQL). Chat over WebSocket, top-ups through the
//! sandbox checkout and bookings with cancellations run steadily while the server is SIGKILLed
//! every 2 to 4 s and restarted on the same database and data dir, ten times. Afterwards:
//! every command that got a success answer is in the event log and in the read models; the
//! read models equal a fresh rebuild; `talkamie ledger audit` is clean; and a client that
//! resumed with `since` after every restart received each of its pushes exactly once.
//!
//! Clients retry what failed during a kill window with the same `clientId` / `Idempotency-Key`,
//! so a retry of a command whose answer was lost must answer the first result.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{Duration as Span, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use talkamie_projections::{with_pool, Db, Projection};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{read_models, Backend, Incoming, Server, TestDb, Ws};
use crate::ledger::{fund, user, WEBHOOK_SECRET};
use crate::schedules::verified_volunteer;

const KILLS: u64 = 10;
/// How long one command may take to be acknowledged, restarts included.
const RETRY_LIMIT: Duration = Duration::from_secs(60);
/// Between two attempts of a command whose attempt failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where the server listens now: every restart binds a new port (`PORT=0`).
#[derive(Clone)]
struct Endpoint(Arc<RwLock<String>>);

impl Endpoint {
    fn new(base: &str) -> Self {
        Endpoint(Arc::new(RwLock::new(base.to_string())))
    }

    fn base(&self) -> String {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, base: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = base.to_string();
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.base().replacen("http://", "ws://", 1))
    }
}

/// What the load tasks share: where the server is, when to stop, and how many attempts failed
/// (expected while the server is down).
#[derive(Clone)]
struct Load {
    endpoint: Endpoint,
    stop: Arc<AtomicBool>,
    failed_attempts: Arc<AtomicUsize>,
}

impl Load {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn failed(&self) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// One HTTP attempt against the current server; `None` when it could not be reached or the
/// answer was cut off (a kill).
async fn attempt(
    load: &Load,
    http: &reqwest::Client,
    method: Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Option<(StatusCode, String)> {
    let mut request = http.request(method, format!("{}{path}", load.endpoint.base()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.ok()?;
    let status = response.status();
    let text = response.text().await.ok()?;
    Some((status, text))
}

/// Answers a client retries: the server is restarting, catching up or busy.
fn transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::CONFLICT
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Sends `frame` and waits for the reply with `request_id`; the pushes that arrive meanwhile
/// are returned too. `None` when the socket broke or stayed silent.
async fn ws_request(ws: &mut Ws, frame: Value, request_id: &str) -> Option<(Value, Vec<Value>)> {
    if !ws.send_raw(Message::text(frame.to_string())).await {
        return None;
    }
    let mut pushes = Vec::new();
    loop {
        match ws.next_within(Duration::from_secs(15)).await {
            Some(Incoming::Json(v)) if v.get("position").is_some() => pushes.push(v),
            Some(Incoming::Json(v)) if v["requestId"] == json!(request_id) => {
                return Some((v, pushes))
            }
            Some(Incoming::Json(_)) => {}
            Some(Incoming::Closed(_)) | None => return None,
        }
    }
}

/// An authenticated socket (resuming after `since`), with the pushes that came before the
/// reply; `None` while the server is down.
async fn open_socket(load: &Load, token: &str, since: Option<i64>) -> Option<(Ws, Vec<Value>)> {
    let url = load.endpoint.ws_url();
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    let Ok(Ok((stream, _))) = connected else {
        return None;
    };
    let mut ws = Ws { stream };
    let mut frame = json!({"action": "authenticate", "token": token, "requestId": "auth"});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    let (reply, early) = ws_request(&mut ws, frame, "auth").await?;
    (reply["success"] == json!(true)).then_some((ws, early))
}

/// `(clientId, message id)` of every acknowledged `chat.message.send`.
async fn chat_sender(
    load: Load,
    token: String,
    chat: String,
    tag: String,
) -> Vec<(String, String)> {
    let mut acknowledged = Vec::new();
    let mut socket: Option<Ws> = None;
    for n in 0.. {
        if load.stopping() {
            break;
        }
        let client_id = format!("{tag}-{n}");
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < RETRY_LIMIT,
                "message {client_id} not acknowledged within {RETRY_LIMIT:?}"
            );
            if socket.is_none() {
                socket = open_socket(&load, &token, None).await.map(|(ws, _)| ws);
            }
            let Some(ws) = socket.as_mut() else {
                load.failed().await;
                continue;
            };
            let frame = json!({"action": "chat.message.send", "requestId": client_id,
                               "chatId": chat, "clientId": client_id,
                               "message": {"text": format!("still here {client_id}")}});
            match ws_request(ws, frame, &client_id).await {
                Some((reply, _)) if reply["success"] == json!(true) => {
                    let id = reply["data"]["message"]["id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no message id in {reply}"));
                    acknowledged.push((client_id, id.to_string()));
                    break;
                }
                Some((reply, _)) => {
                    let status = reply["statusCode"].as_u64().unwrap_or(0);
                    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
                    assert!(transient(status), "{client_id} refused: {reply}");
                    load.failed().await;
                }
                None => {
                    socket = None;
                    load.failed().await;
                }
            }
        }
        // A steady load, under the per-socket frame limit.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    acknowledged
}

/// `(transaction id, coins)` of every top-up whose payment the checkout confirmed.
async fn top_ups(load: Load, token: String) -> Vec<(String, i64)> {
    let http = http_client();
    let mut paid = Vec::new();
    for n in 0.. {
        if load.stopping() {
            break;
        }
        let key = format!("crash-top-up-{n}");
        let coins = 100 + n;
        let started = Instant::now();
        let (transaction, session) = loop {
            assert!(started.elapsed() < RETRY_LIMIT, "top-up {key} never opened");
            let body = json!({ "coins": coins });
            let path = "/v1/web/finance/top-up/session";
            match attempt(
                &load,
                &http,
                Method::POST,
                path,
                Some(&token),
                Some(&key),
                Some(body),
            )
            .await
            {
                Some((StatusCode::CREATED, text)) => {
                    let body = parse(&text);
                    let data = &body["data"];
                    break (
                        data["transaction"]["id"]
                            .as_str()
                            .expect("tx id")
                            .to_string(),
                        data["session"]["id"].as_str().expect("session").to_string(),
                    );
                }
                Some((status, text)) => {
                    assert!(transient(status), "top-up {key}: {status} {text}");
                    load.failed().await;
                }
                None => load.failed().await,
            }
        };
        loop {
            assert!(started.elapsed() < RETRY_LIMIT, "top-up {key} never paid");
            let path = format!("/v1/sandbox/checkout/{session}/pay");
            match attempt(&load, &http, Method::POST, &path, None, None, None).await {
                // Paid now, or (a retry after a lost answer) paid before.
                Some((StatusCode::OK | StatusCode::CONFLICT, html))
                    if html.contains(r#"data-status="succeeded""#) =>
                {
                    break
                }
                Some((status, html)) => {
                    assert!(
                        status.is_server_error(),
                        "top-up {key} payment: {status} {html}"
                    );
                    load.failed().await;
                }
                None => load.failed().await,
            }
        }
        paid.push((transaction, coins));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    paid
}

struct Booking {
    id: String,
    /// The `schedule` message the booking answer carried.
    message: Option<String>,
    canceled: bool,
}

/// Books 20-minute calls in consecutive half hours from tomorrow on, and cancels every other one.
async fn bookings(load: Load, token: String, volunteer: String) -> Vec<Booking> {
    let http = http_client();
    let tomorrow = Utc::now().date_naive() + Span::days(1);
    let first = Utc.from_utc_datetime(&tomorrow.and_hms_opt(0, 0, 0).expect("midnight"));
    let mut booked = Vec::new();
    for n in 0.. {
        if load.stopping() {
            break;
        }
        let key = format!("crash-booking-{n}");
        let from = first + Span::minutes(30 * n);
        let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = json!({"title": format!("Tea {n}"), "type": "audio", "recurrence": "none",
                          "startDateTime": iso(from),
                          "endDateTime": iso(from + Span::minutes(20))});
        let path = format!("/v1/user/{volunteer}/schedule");
        let started = Instant::now();
        let mut booking = loop {
            assert!(
                started.elapsed() < RETRY_LIMIT,
                "booking {key} never acknowledged"
            );
            let sent = Some(body.clone());
            match attempt(
                &load,
                &http,
                Method::POST,
                &path,
                Some(&token),
                Some(&key),
                sent,
            )
            .await
            {
                Some((StatusCode::CREATED, text)) => {
                    let body = parse(&text);
                    break Booking {
                        id: body["data"]["schedule"]["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("no schedule id in {body}"))
                            .to_string(),
                        message: body["data"]["message"]["id"].as_str().map(str::to_string),
                        canceled: false,
                    };
                }
                Some((status, text)) => {
                    // A retry names the same schedule, which never clashes with itself.
                    assert!(
                        status.is_server_error()
                            || (status == StatusCode::CONFLICT
                                && parse(&text)["error"] == "conflict"),
                        "booking {key}: {status} {text}"
                    );
                    load.failed().await;
                }
                None => load.failed().await,
            }
        };
        if n % 2 == 0 {
            let path = format!("/v1/schedule/{}", booking.id);
            loop {
                assert!(
                    started.elapsed() < RETRY_LIMIT,
                    "cancel of {key} never acknowledged"
                );
                match attempt(
                    &load,
                    &http,
                    Method::DELETE,
                    &path,
                    Some(&token),
                    None,
                    None,
                )
                .await
                {
                    Some((StatusCode::OK, _)) => break,
                    Some((status, text)) => {
                        assert!(transient(status), "cancel {key}: {status} {text}");
                        load.failed().await;
                    }
                    None => load.failed().await,
                }
            }
            booking.canceled = true;
        }
        booked.push(booking);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    booked
}

/// What the resuming client saw: every push in arrival order, and how often it (re)connected.
struct Received {
    pushes: Vec<Value>,
    connections: usize,
}

/// The volunteer's client: keeps the last feed position it saw and, whenever its socket breaks
/// (a kill), reconnects with `since` = that position. Ends after `drain` is set and the feed
/// stayed quiet for 3 s.
async fn resuming_client(load: Load, token: String, drain: Arc<AtomicBool>) -> Received {
    let mut received = Received {
        pushes: Vec::new(),
        connections: 0,
    };
    let mut last = 0;
    let take = |push: Value, last: &mut i64, pushes: &mut Vec<Value>| {
        if let Some(position) = push["position"].as_i64() {
            *last = (*last).max(position);
        }
        pushes.push(push);
    };
    'reconnect: loop {
        let Some((mut ws, early)) = open_socket(&load, &token, Some(last)).await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        received.connections += 1;
        for push in early {
            take(push, &mut last, &mut received.pushes);
        }
        loop {
            let quiet = if drain.load(Ordering::SeqCst) { 3 } else { 1 };
            match ws.next_within(Duration::from_secs(quiet)).await {
                Some(Incoming::Json(frame)) if frame.get("position").is_some() => {
                    take(frame, &mut last, &mut received.pushes)
                }
                Some(Incoming::Json(_)) => {}
                Some(Incoming::Closed(_)) => continue 'reconnect,
                None if drain.load(Ordering::SeqCst) => break 'reconnect,
                None => {}
            }
        }
    }
    received
}

/// Every event of the log: `(aggregate type, aggregate id, event type, payload)`.
async fn events(db: &Db) -> Vec<(String, String, String, Value)> {
    with_pool!(db, pool => {
        sqlx::query_as::<_, (String, String, String, sqlx::types::Json<Value>)>(
            "SELECT aggregate_type, aggregate_id, event_type, payload FROM events ORDER BY position",
        )
        .fetch_all(pool)
        .await
        .expect("read the log")
        .into_iter()
        .map(|(kind, id, event, payload)| (kind, id, event, payload.0))
        .collect()
    })
}

/// Waits until every projection's checkpoint is the last event of the log.
async fn caught_up(db: &Db) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at_end: i64 = with_pool!(db, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM projection_checkpoints c,
                        (SELECT transaction_id::text::bigint AS xid, position FROM events
                          ORDER BY transaction_id DESC, position DESC LIMIT 1) e
                  WHERE c.last_xid = e.xid AND c.last_position = e.position",
            )
            .fetch_one(pool)
            .await
            .expect("checkpoints")
        });
        if at_end == Projection::ALL.len() as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the projections never caught up with the log after the crashes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ids of every message of `chat` as the read model serves them (all pages).
async fn chat_message_ids(server: &Server, token: &str, chat: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut path = format!("/v1/chat/{chat}/messages?pageSize=100");
    loop {
        let (status, body) = server.get(&path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for message in body["data"].as_array().expect("messages") {
            ids.insert(message["id"].as_str().expect("message id").to_string());
        }
        match body["pagination"]["lastEvaluatedKey"].as_str() {
            Some(key) => {
                path = format!("/v1/chat/{chat}/messages?pageSize=100&lastEvaluatedKey={key}")
            }
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_ten_sigkills() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let began = Instant::now();
    let env = [
        ("TALKAMIE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        // The load is steady on purpose; the per-user message limit is not under test here.
        ("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", "100000"),
    ];
    let mut server = Server::start_with(&db, &env).await;
    let (_, admin) = server.admin(&db).await;
    let volunteer = verified_volunteer(&server, &db, &admin).await;
    let day = json!([{"start": "00:00", "end": "24:00"}]);
    let (status, body) = server
        .post(
            "/v1/availability/weekly",
            Some(&volunteer.1),
            json!({"sun": day, "mon": day, "tue": day, "wed": day, "thu": day, "fri": day,
                   "sat": day}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let writer = user(&server, "senior").await;
    let booker = user(&server, "senior").await;
    let buyer = user(&server, "senior").await;
    let writer_chat = server.connect(&writer, &volunteer).await;
    let booker_chat = server.connect(&booker, &volunteer).await;
    fund(&server, &booker.1, 5000).await;

    let load = Load {
        endpoint: Endpoint::new(&server.base),
        stop: Arc::new(AtomicBool::new(false)),
        failed_attempts: Arc::new(AtomicUsize::new(0)),
    };
    let drain = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(resuming_client(
        load.clone(),
        volunteer.1.clone(),
        drain.clone(),
    ));
    let senders: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(chat_sender(
                load.clone(),
                writer.1.clone(),
                writer_chat.clone(),
                format!("crash-chat-{i}"),
            ))
        })
        .collect();
    let buying = tokio::spawn(top_ups(load.clone(), buyer.1.clone()));
    let booking = tokio::spawn(bookings(
        load.clone(),
        booker.1.clone(),
        volunteer.0.clone(),
    ));

    // SIGKILL every 2 to 4 s, then start again on the same database and data dir.
    let load_began = Instant::now();
    let mut restart_time = Duration::ZERO;
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(2000 + (k * 677) % 2000)).await;
        server.kill();
        let restarting = Instant::now();
        server = Server::start_with(&db, &env).await;
        restart_time += restarting.elapsed();
        load.endpoint.set(&server.base);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop.store(true, Ordering::SeqCst);
    let mut chat_acks = Vec::new();
    for sender in senders {
        chat_acks.extend(sender.await.expect("chat sender"));
    }
    let paid = buying.await.expect("top-ups");
    let booked = booking.await.expect("bookings");
    let load_time = load_began.elapsed();
    assert!(!chat_acks.is_empty() && !paid.is_empty() && !booked.is_empty());

    // With the server up and caught up: every acknowledged command is in the log...
    let pool = db.connect().await;
    caught_up(&pool).await;
    let log = events(&pool).await;
    let mut sent_in: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for (kind, chat, event, payload) in &log {
        if kind == "Pair" && event == "MessageSent" {
            let sent = &payload["MessageSent"];
            sent_in.entry(chat.clone()).or_default().push((
                sent["message_id"].as_str().expect("message_id").to_string(),
                sent["client_id"].as_str().map(str::to_string),
            ));
        }
    }
    let logged_messages: BTreeSet<String> = sent_in
        .values()
        .flatten()
        .map(|(id, _)| id.clone())
        .collect();
    for (client_id, message_id) in &chat_acks {
        assert!(
            logged_messages.contains(message_id),
            "acknowledged message {client_id} ({message_id}) is not in the log"
        );
    }
    // ...once: a retried clientId never stored a second message.
    for (chat, sent) in &sent_in {
        let mut by_client: HashMap<&str, usize> = HashMap::new();
        for (_, client_id) in sent {
            if let Some(client_id) = client_id {
                *by_client.entry(client_id).or_default() += 1;
            }
        }
        let twice: Vec<_> = by_client.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "chat {chat}: clientIds stored twice: {twice:?}"
        );
    }
    let ack_ids: BTreeSet<&String> = chat_acks.iter().map(|(_, id)| id).collect();
    assert_eq!(ack_ids.len(), chat_acks.len(), "one message per clientId");

    let postings: Vec<&str> = log
        .iter()
        .filter(|(kind, id, event, _)| kind == "Wallet" && *id == buyer.0 && event == "Posted")
        .map(|(_, _, _, payload)| payload["Posted"]["transaction_id"].as_str().expect("tx"))
        .collect();
    for (transaction, _) in &paid {
        let credited = postings.iter().filter(|t| **t == transaction).count();
        assert_eq!(
            credited, 1,
            "paid top-up {transaction} is posted {credited} times"
        );
    }
    let host_booked: BTreeSet<&str> = log
        .iter()
        .filter(|(kind, id, event, _)| {
            kind == "Calendar" && *id == volunteer.0 && event == "Booked"
        })
        .filter_map(|(_, _, _, payload)| payload["Booked"]["schedule"]["id"].as_str())
        .collect();
    let host_released: BTreeSet<&str> = log
        .iter()
        .filter(|(kind, id, event, _)| {
            kind == "Calendar" && *id == volunteer.0 && event == "Released"
        })
        .filter_map(|(_, _, _, payload)| payload["Released"]["schedule_id"].as_str())
        .collect();
    let booking_messages: Vec<(&String, Option<&String>)> =
        booked.iter().map(|b| (&b.id, b.message.as_ref())).collect();
    for booking in &booked {
        assert!(
            host_booked.contains(booking.id.as_str()),
            "booking {} is not in the log",
            booking.id
        );
        assert_eq!(
            host_released.contains(booking.id.as_str()),
            booking.canceled,
            "cancellation of {} in the log",
            booking.id
        );
    }

    // ...and in the read models, as the API serves them.
    let served = chat_message_ids(&server, &writer.1, &writer_chat).await;
    let logged_here: BTreeSet<String> = sent_in[&writer_chat]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        served, logged_here,
        "the chat serves exactly the logged messages"
    );
    let served_booker = chat_message_ids(&server, &booker.1, &booker_chat).await;
    let missing_messages: Vec<_> = booking_messages
        .iter()
        .filter(|(_, m)| m.is_none())
        .collect();
    assert!(
        missing_messages.is_empty(),
        "acknowledged bookings answered without their schedule message: {missing_messages:?}"
    );
    for (schedule, message) in &booking_messages {
        let message = message.expect("checked above");
        assert!(
            logged_messages.contains(message) && served_booker.contains(message),
            "the schedule message of {schedule} is in the log and the chat"
        );
    }
    let mut credited = 0;
    for (transaction, coins) in &paid {
        let (status, body) = server
            .get(
                &format!("/v1/finance/transaction/{transaction}"),
                Some(&buyer.1),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["data"]["transaction"]["status"],
            json!("succeeded"),
            "{body}"
        );
        assert_eq!(
            body["data"]["transaction"]["coins"]["amount"],
            json!(coins),
            "{body}"
        );
        credited += coins;
    }
    let (_, me) = server.get("/v1/auth", Some(&buyer.1)).await;
    let balance = me["data"]["user"]["ledger"]["coins"]["balance"].as_i64();
    // Top-ups whose answer was lost and whose retry opened nothing new are all paid by the
    // retry, so the balance is exactly the paid ones: each credited once.
    assert_eq!(
        balance,
        Some(credited),
        "buyer's balance is the sum of paid top-ups"
    );
    for booking in &booked {
        let (status, body) = server
            .get(&format!("/v1/schedule/{}", booking.id), Some(&booker.1))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want = if booking.canceled {
            "canceled"
        } else {
            "upcoming"
        };
        assert_eq!(body["data"]["status"], json!(want), "{body}");
    }

    // The resuming client received each of its pushes exactly once, in order: everything in
    // its feed up to now (later rows, from timers, may still arrive before it stops).
    let feed_end: i64 = with_pool!(&pool, p => {
        sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM feed WHERE user_id = $1")
            .bind(&volunteer.0)
            .fetch_one(p)
            .await
            .expect("feed end")
    });
    drain.store(true, Ordering::SeqCst);
    let received = client.await.expect("resuming client");
    let positions: Vec<i64> = received
        .pushes
        .iter()
        .map(|p| p["position"].as_i64().expect("position"))
        .collect();
    let out_of_order: Vec<_> = positions.windows(2).filter(|w| w[0] >= w[1]).collect();
    assert!(
        out_of_order.is_empty(),
        "pushes repeated or out of order (positions): {out_of_order:?}"
    );
    let seen_to = feed_end.max(positions.last().copied().unwrap_or(0));
    let feed: Vec<i64> = with_pool!(&pool, p => {
        sqlx::query_scalar(
            "SELECT position FROM feed WHERE user_id = $1 AND position <= $2
                AND action <> 'session.ended' ORDER BY position",
        )
        .bind(&volunteer.0)
        .bind(seen_to)
        .fetch_all(p)
        .await
        .expect("feed")
    });
    let missed: Vec<_> = feed.iter().filter(|p| !positions.contains(p)).collect();
    assert!(
        missed.is_empty(),
        "pushes of the feed never received: {missed:?}"
    );
    assert_eq!(positions, feed, "exactly the volunteer's feed");
    let mut pushed_messages: HashMap<&str, usize> = HashMap::new();
    for push in &received.pushes {
        if push["action"] == json!("chat.message.new") {
            let id = push["data"]["message"]["id"].as_str().expect("message id");
            *pushed_messages.entry(id).or_default() += 1;
        }
    }
    let to_volunteer: BTreeSet<&String> = sent_in[&writer_chat]
        .iter()
        .chain(&sent_in[&booker_chat])
        .map(|(id, _)| id)
        .collect();
    for id in &to_volunteer {
        let times = pushed_messages.get(id.as_str()).copied().unwrap_or(0);
        assert_eq!(times, 1, "message {id} was pushed {times} times");
    }
    assert_eq!(
        pushed_messages.len(),
        to_volunteer.len(),
        "no other message was pushed"
    );

    // The read models equal a fresh rebuild from the log.
    server.stop().await;
    let (ok, _, stderr) = db.cli(&["projections", "list"]);
    assert!(ok, "projections list (catches up): {stderr}");
    let live = read_models(&pool).await;
    assert!(live["messages"].len() >= chat_acks.len());
    let (ok, _, stderr) = db.cli(&["projections", "rebuild"]);
    assert!(ok, "projections rebuild: {stderr}");
    let rebuilt = read_models(&pool).await;
    for (table, rows) in &live {
        let again = &rebuilt[table];
        let gone: Vec<_> = rows.iter().filter(|r| !again.contains(r)).take(3).collect();
        let new: Vec<_> = again.iter().filter(|r| !rows.contains(r)).take(3).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "{table}: live rows not rebuilt {gone:?}; rebuilt rows not live {new:?}"
        );
        assert_eq!(rows.len(), again.len(), "{table}: rows live and rebuilt");
    }

    // The ledger is auditable.
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit"]);
    assert!(ok, "ledger audit:\n{stdout}\n{stderr}");

    eprintln!(
        "crash: {KILLS} SIGKILLs in {load_time:?} of load (restarts took {restart_time:?}); \
         acknowledged: {} messages, {} paid top-ups, {} bookings ({} cancelled); \
         {} failed attempts retried; {} pushes received over {} connections, {} of them \
         chat.message.new; {} events; {} read-model rows compared; {:?} in all",
        chat_acks.len(),
        paid.len(),
        booked.len(),
        booked.iter().filter(|b| b.canceled).count(),
        load.failed_attempts.load(Ordering::Relaxed),
        received.pushes.len(),
        received.connections,
        pushed_messages.len(),
        log.len(),
        live.values().map(Vec::len).sum::<usize>(),
        began.elapsed(),
    );
}
