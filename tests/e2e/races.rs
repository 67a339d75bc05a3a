//! Issue 9, item 3: races beyond the earlier ones. The receiver accepts while the sender
//! cancels the same connect request; several sockets of one user mark overlapping messages
//! read while new ones arrive; many withdrawals drain one balance at once. Each time exactly
//! the allowed outcome happens, losers get a clean 4xx in the envelope, and the read models,
//! the pushes and the ledger audit agree with the winners.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use talkamie::http::connections::pair_id;

use crate::both_stores;
use crate::helpers::{Backend, Server, TestDb, Ws};
use crate::ledger::{balance, fund, ledger_server, settled, user};

both_stores!(
    accept_and_cancel_of_one_request_have_one_winner,
    concurrent_read_receipts_keep_unread_counts_exact,
    concurrent_withdrawals_never_overdraw,
);

/// A request fired from its own task after `delay_ms`: `(status, body)`.
fn spawn_call(
    server: &Server,
    method: Method,
    path: String,
    token: &str,
    body: Option<Value>,
    delay_ms: u64,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let http = server.http.clone();
    let url = format!("{}{path}", server.base);
    let token = token.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let mut request = http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, body)
    })
}

/// The loser of a race: a 4xx in the error envelope with one of `codes`.
fn assert_clean_loss(status: StatusCode, body: &Value, codes: &[&str]) {
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["statusCode"], json!(status.as_u16()), "{body}");
    let code = body["error"].as_str().unwrap_or_default();
    assert!(codes.contains(&code), "{status} {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn list(body: &Value) -> Vec<Value> {
    body["data"].as_array().expect("a list").clone()
}

fn ids(body: &Value) -> Vec<String> {
    list(body)
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_string())
        .collect()
}

async fn accept_and_cancel_of_one_request_have_one_winner(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start(&db).await;
    let mut rng = StdRng::seed_from_u64(0x9_3_1);
    let (mut accepted_wins, mut canceled_wins) = (0, 0);
    for round in 0..20 {
        let senior = user(&server, "senior").await;
        let volunteer = user(&server, "volunteer").await;
        let (mut s_ws, _) = server.ws_authenticated(&senior.1, None).await;
        let (mut v_ws, _) = server.ws_authenticated(&volunteer.1, None).await;
        let (status, body) = server.request_connection(&senior, &volunteer).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let request_id = body["data"]["id"].as_str().expect("id").to_string();
        let chat_id = pair_id(&senior.0, &volunteer.0);

        // The race: a few milliseconds of jitter on either side, so both orders happen.
        let accept = spawn_call(
            &server,
            Method::POST,
            format!("/v1/user/{}/connection/accept", senior.0),
            &volunteer.1,
            None,
            rng.gen_range(0..4),
        );
        let cancel = spawn_call(
            &server,
            Method::DELETE,
            format!("/v1/user/{}/connection", volunteer.0),
            &senior.1,
            None,
            rng.gen_range(0..4),
        );
        let (accept_status, accept_body) = accept.await.expect("accept task");
        let (cancel_status, cancel_body) = cancel.await.expect("cancel task");
        let accepted = match (accept_status.is_success(), cancel_status.is_success()) {
            (true, false) => {
                assert_eq!(accept_status, StatusCode::OK, "{accept_body}");
                let data = &accept_body["data"];
                assert_eq!(data["connectRequest"]["id"], json!(request_id));
                assert_eq!(data["connectRequest"]["status"], json!("accepted"));
                assert_eq!(data["chat"]["id"], json!(chat_id), "{accept_body}");
                assert_clean_loss(cancel_status, &cancel_body, &["not_found", "conflict"]);
                accepted_wins += 1;
                true
            }
            (false, true) => {
                assert_eq!(cancel_status, StatusCode::OK, "{cancel_body}");
                assert_eq!(cancel_body["data"]["id"], json!(request_id));
                assert_eq!(cancel_body["data"]["status"], json!("canceled"));
                assert_clean_loss(accept_status, &accept_body, &["not_found", "conflict"]);
                canceled_wins += 1;
                false
            }
            _ => panic!(
                "round {round}: exactly one of accept and cancel wins: \
                 accept {accept_status} {accept_body}, cancel {cancel_status} {cancel_body}"
            ),
        };
        let want = if accepted { "accepted" } else { "canceled" };

        // Nothing is pending any more, on either side.
        let (_, body) = server
            .get("/v1/connections/pending", Some(&volunteer.1))
            .await;
        assert_eq!(body["data"], json!([]), "{body}");
        let (_, body) = server
            .get("/v1/connections/pending?direction=sent", Some(&senior.1))
            .await;
        assert_eq!(body["data"], json!([]), "{body}");

        // Connections, chats and counters follow the winner, for both users.
        for (me, other) in [(&senior, &volunteer), (&volunteer, &senior)] {
            let (_, body) = server.get("/v1/connections/users", Some(&me.1)).await;
            let connected = if accepted {
                vec![other.0.clone()]
            } else {
                vec![]
            };
            assert_eq!(ids(&body), connected, "round {round}: {body}");
            let (_, body) = server.get("/v1/chats", Some(&me.1)).await;
            let chats = if accepted {
                vec![chat_id.clone()]
            } else {
                vec![]
            };
            assert_eq!(ids(&body), chats, "round {round}: {body}");
            let (status, body) = server
                .get(&format!("/v1/chat/{chat_id}"), Some(&me.1))
                .await;
            let want_status = if accepted { 200 } else { 404 };
            assert_eq!(status.as_u16(), want_status, "round {round}: {body}");
            let (_, body) = server.get("/v1/auth", Some(&me.1)).await;
            let user = &body["data"]["user"];
            assert_eq!(user["totalPendingRequests"], json!(0), "{body}");
            assert_eq!(user["totalConnections"], json!(i32::from(accepted)));
        }
        // (Seniors do not see unverified volunteers' profiles; the volunteer sees the senior.)
        let (_, body) = server
            .get(&format!("/v1/user/{}", senior.0), Some(&volunteer.1))
            .await;
        let viewer = &body["data"]["viewer"];
        if accepted {
            assert_eq!(
                viewer["connectRequest"]["status"],
                json!("accepted"),
                "{body}"
            );
            assert_eq!(viewer["chat"]["id"], json!(chat_id), "{body}");
        } else {
            assert!(viewer.get("chat").is_none(), "{body}");
            assert!(
                !["pending", "accepted"]
                    .contains(&viewer["connectRequest"]["status"].as_str().unwrap_or("")),
                "{body}"
            );
        }

        // Alerts: the volunteer's request alert shows the winner; the senior hears of an
        // acceptance only.
        let (_, body) = server.get("/v1/alerts", Some(&volunteer.1)).await;
        let alerts = list(&body);
        assert_eq!(alerts.len(), 1, "{body}");
        assert_eq!(alerts[0]["connectRequest"]["id"], json!(request_id));
        assert_eq!(alerts[0]["connectRequest"]["status"], json!(want), "{body}");
        let (_, body) = server.get("/v1/alerts", Some(&senior.1)).await;
        let alerts = list(&body);
        if accepted {
            assert_eq!(alerts.len(), 1, "{body}");
            assert_eq!(alerts[0]["connectRequest"]["status"], json!("accepted"));
        } else {
            assert!(alerts.is_empty(), "{body}");
        }
        // ... and so do the pushes.
        let update = v_ws
            .push_where("alert.update", |p| {
                p["data"]["alert"]["connectRequest"]["id"] == json!(request_id)
            })
            .await;
        assert_eq!(
            update["data"]["alert"]["connectRequest"]["status"],
            json!(want),
            "{update}"
        );
        if accepted {
            let alert = s_ws
                .push_where("alert.new", |p| {
                    p["data"]["alert"]["connectRequest"]["id"] == json!(request_id)
                })
                .await;
            assert_eq!(
                alert["data"]["alert"]["connectRequest"]["status"],
                json!("accepted")
            );
        }

        // The pair is not stuck: after a cancel a new request goes through; after an accept
        // it is refused as already connected.
        let (status, body) = server.request_connection(&senior, &volunteer).await;
        if accepted {
            assert_clean_loss(status, &body, &["already_exists"]);
        } else {
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    eprintln!("accept/cancel races: accept won {accepted_wins}, cancel won {canceled_wins}");
}

/// Messages each senior sends while the reader sockets mark them.
const SENT_PER_CHAT: usize = 25;
/// Sockets of the one volunteer who reads both chats.
const READER_SOCKETS: usize = 3;

/// One socket of the reader, with the unread state its own push stream implies.
struct Reader {
    name: String,
    ws: Ws,
    rng: StdRng,
    /// Per chat, the message ids in the order their `chat.message.new` arrived.
    messages: HashMap<String, Vec<String>>,
    /// Per chat, how many leading messages the pushes say are read.
    read: HashMap<String, usize>,
    /// Receipt frames sent and not answered yet: request id -> (chat, [(message, status)]).
    outstanding: HashMap<String, (String, Vec<(String, String)>)>,
    /// Per chat, the highest message index an answered read receipt covered (+1).
    marked: HashMap<String, usize>,
    frames: usize,
}

impl Reader {
    fn new(name: String, ws: Ws, chats: &[String], seed: u64) -> Self {
        Reader {
            name,
            ws,
            rng: StdRng::seed_from_u64(seed),
            messages: chats.iter().map(|c| (c.clone(), Vec::new())).collect(),
            read: chats.iter().map(|c| (c.clone(), 0)).collect(),
            outstanding: HashMap::new(),
            marked: HashMap::new(),
            frames: 0,
        }
    }

    fn unread(&self, chat: &str) -> i64 {
        (self.messages[chat].len() - self.read[chat]) as i64
    }

    fn unread_chats(&self) -> i64 {
        self.messages.keys().filter(|c| self.unread(c) > 0).count() as i64
    }

    fn seen(&self) -> usize {
        self.messages.values().map(Vec::len).sum()
    }

    /// Checks one frame against this socket's model and updates it.
    fn observe(&mut self, frame: &Value) {
        let name = &self.name;
        if frame.get("position").is_none() {
            let request_id = frame["requestId"].as_str().unwrap_or_default().to_string();
            let (chat, asked) = self
                .outstanding
                .remove(&request_id)
                .unwrap_or_else(|| panic!("{name}: a reply to nothing: {frame}"));
            assert_eq!(frame["success"], json!(true), "{name}: {frame}");
            assert_eq!(frame["statusCode"], json!(200), "{name}: {frame}");
            let unread_chats = frame["data"]["viewer"]["totalUnreadChats"]
                .as_i64()
                .expect("totalUnreadChats");
            assert!((0..=2).contains(&unread_chats), "{name}: {frame}");
            let answered = &frame["data"]["messagesMap"];
            for (id, status) in &asked {
                let now = answered[id]["status"].as_str().unwrap_or_default();
                match status.as_str() {
                    "read" => assert_eq!(now, "read", "{name}: {id} {frame}"),
                    _ => assert!(["delivered", "read"].contains(&now), "{name}: {frame}"),
                }
                if status == "read" {
                    let index = self.messages[&chat]
                        .iter()
                        .position(|m| m == id)
                        .expect("a message this socket saw");
                    let marked = self.marked.entry(chat.clone()).or_insert(0);
                    *marked = (*marked).max(index + 1);
                }
            }
            return;
        }
        let data = &frame["data"];
        match frame["action"].as_str().unwrap_or_default() {
            "chat.message.new" => {
                let chat = data["chat"]["id"].as_str().expect("chat id").to_string();
                let id = data["message"]["id"].as_str().expect("id").to_string();
                let Some(messages) = self.messages.get_mut(&chat) else {
                    return;
                };
                messages.push(id);
                assert_eq!(
                    data["chat"]["totalUnreadMessages"],
                    json!(self.unread(&chat)),
                    "{name}: a new message adds exactly one unread: {frame}"
                );
                assert_eq!(
                    data["viewer"]["totalUnreadChats"],
                    json!(self.unread_chats()),
                    "{name}: {frame}"
                );
            }
            "chat.messages.update" => {
                let chat = data["chat"]["id"].as_str().expect("chat id").to_string();
                let map = data["messagesMap"].as_object().expect("messagesMap");
                for (id, delivery) in map {
                    let status = delivery["status"].as_str().unwrap_or_default();
                    assert!(
                        ["sent", "delivered", "read"].contains(&status),
                        "{name}: {frame}"
                    );
                    let index = self.messages[&chat]
                        .iter()
                        .position(|m| m == id)
                        .unwrap_or_else(|| {
                            panic!("{name}: a receipt for an unseen message: {frame}")
                        });
                    if status == "read" {
                        let read = self.read.get_mut(&chat).expect("chat");
                        *read = (*read).max(index + 1);
                    } else {
                        assert!(
                            index >= self.read[&chat],
                            "{name}: a read message went back to {status}: {frame}"
                        );
                    }
                }
            }
            "chats.update" => {
                for (chat, basic) in data["chatsMap"].as_object().expect("chatsMap") {
                    if !self.messages.contains_key(chat) {
                        continue;
                    }
                    let unread = basic["totalUnreadMessages"].as_i64().expect("unread");
                    assert!(unread >= 0, "{name}: {frame}");
                    assert_eq!(unread, self.unread(chat), "{name}: {frame}");
                }
                if let Some(total) = data["viewer"]["totalUnreadChats"].as_i64() {
                    assert_eq!(total, self.unread_chats(), "{name}: {frame}");
                }
            }
            _ => {}
        }
    }

    /// Sends a receipt for one to three messages of one chat, mostly recent ones, mostly
    /// `read`; the other sockets pick overlapping ones.
    async fn mark_some(&mut self) {
        let chats: Vec<String> = self
            .messages
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(c, _)| c.clone())
            .collect();
        if chats.is_empty() {
            return;
        }
        let chat = chats[self.rng.gen_range(0..chats.len())].clone();
        let messages = &self.messages[&chat];
        let mut asked = Vec::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let back = self.rng.gen_range(0..messages.len().min(6));
            let id = messages[messages.len() - 1 - back].clone();
            let status = if self.rng.gen_bool(0.8) {
                "read"
            } else {
                "delivered"
            };
            if asked.iter().all(|(a, _)| *a != id) {
                asked.push((id, status.to_string()));
            }
        }
        let map: serde_json::Map<String, Value> = asked
            .iter()
            .map(|(id, status)| (id.clone(), json!({ "status": status })))
            .collect();
        self.frames += 1;
        let request_id = format!("{}-{}", self.name, self.frames);
        self.ws
            .send(
                json!({"action": "chat.messages.update", "requestId": request_id,
                         "chatId": chat, "messagesMap": map}),
            )
            .await;
        self.outstanding.insert(request_id, (chat, asked));
    }

    /// Reads (and checks) frames until `done` holds.
    async fn until(&mut self, done: impl Fn(&Reader) -> bool) {
        while !done(self) {
            let frame = self.ws.recv().await;
            self.observe(&frame);
        }
    }
}

/// A reader socket's part of the race: mark while messages arrive, until it has seen all of
/// them and every receipt it sent is answered.
async fn race_reader(mut reader: Reader, expected: usize) -> Reader {
    while reader.seen() < expected || !reader.outstanding.is_empty() {
        let frame = reader.ws.recv().await;
        let new_message = frame["action"] == json!("chat.message.new");
        reader.observe(&frame);
        if new_message && reader.rng.gen_bool(0.6) {
            reader.mark_some().await;
        }
    }
    reader
}

/// A senior's part of the race: `count` messages, a few milliseconds apart; their ids in order.
async fn race_sender(mut ws: Ws, chat: String, count: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for i in 0..count {
        let reply = ws
            .request(
                json!({"action": "chat.message.send", "requestId": format!("send-{i}"),
                            "chatId": chat, "message": {"text": format!("message {i}")}}),
            )
            .await;
        assert_eq!(reply["success"], json!(true), "{reply}");
        ids.push(
            reply["data"]["message"]["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
    }
    ids
}

async fn concurrent_read_receipts_keep_unread_counts_exact(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    // Receipts come faster than the default 20 frames per second of a socket.
    let server = Server::start_with(&db, &[("TALKAMIE_WS_FRAMES_PER_SECOND", "1000")]).await;
    let volunteer = user(&server, "volunteer").await;
    let mut seniors = Vec::new();
    let mut chats = Vec::new();
    for _ in 0..2 {
        let senior = user(&server, "senior").await;
        chats.push(server.connect(&senior, &volunteer).await);
        seniors.push(senior);
    }
    // Every reader socket is open before the first message, so each sees every push.
    let mut readers = Vec::new();
    for k in 0..READER_SOCKETS {
        let (ws, _) = server.ws_authenticated(&volunteer.1, None).await;
        let reader = Reader::new(format!("reader{k}"), ws, &chats, 0x9_3_2_0 + k as u64);
        readers.push(tokio::spawn(race_reader(reader, 2 * SENT_PER_CHAT)));
    }
    let mut senders = Vec::new();
    for (i, senior) in seniors.iter().enumerate() {
        let (ws, _) = server.ws_authenticated(&senior.1, None).await;
        senders.push(tokio::spawn(race_sender(
            ws,
            chats[i].clone(),
            SENT_PER_CHAT,
            0x9_3_2_9 + i as u64,
        )));
    }
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for (i, sender) in senders.into_iter().enumerate() {
        sent.insert(chats[i].clone(), sender.await.expect("sender"));
    }
    let mut readers: Vec<Reader> = futures_util::future::join_all(readers)
        .await
        .into_iter()
        .map(|r| r.expect("reader"))
        .collect();

    // Every socket saw the messages in the order they were sent; the read mark of each chat
    // is the furthest receipt any socket got answered.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for chat in &chats {
        let marked = readers
            .iter()
            .filter_map(|r| r.marked.get(chat).copied())
            .max()
            .unwrap_or(0);
        expected.insert(chat.clone(), (SENT_PER_CHAT - marked) as i64);
        for reader in &readers {
            assert_eq!(&reader.messages[chat], &sent[chat], "{}", reader.name);
        }
    }
    let receipts: usize = readers.iter().map(|r| r.frames).sum();
    eprintln!("read receipts: {receipts} receipt frames, unread left {expected:?}");
    assert!(receipts >= 10, "the race had receipts in it: {receipts}");

    // The read models agree...
    let check_rest = |expected: HashMap<String, i64>| {
        let server = &server;
        let token = volunteer.1.clone();
        async move {
            let (_, body) = server.get("/v1/chats", Some(&token)).await;
            for chat in list(&body) {
                let id = chat["id"].as_str().expect("id");
                assert_eq!(chat["totalUnreadMessages"], json!(expected[id]), "{body}");
            }
            let unread_chats = expected.values().filter(|n| **n > 0).count();
            let (_, body) = server.get("/v1/chats/unread", Some(&token)).await;
            assert_eq!(ids(&body).len(), unread_chats, "{body}");
            let (_, body) = server.get("/v1/auth", Some(&token)).await;
            assert_eq!(
                body["data"]["user"]["totalUnreadChats"],
                json!(unread_chats),
                "{body}"
            );
        }
    };
    check_rest(expected.clone()).await;
    // ... and so does every socket's push stream, once the last pushes arrive.
    for reader in &mut readers {
        let want = expected.clone();
        tokio::time::timeout(
            Duration::from_secs(20),
            reader.until(|r| want.iter().all(|(c, n)| r.unread(c) == *n)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: pushes did not settle", reader.name));
    }

    // Reading the last message of each chat on one socket clears everything, everywhere.
    for chat in &chats {
        let last = sent[chat].last().expect("a message").clone();
        let reader = &mut readers[0];
        reader.frames += 1;
        let request_id = format!("{}-{}", reader.name, reader.frames);
        reader
            .ws
            .send(
                json!({"action": "chat.messages.update", "requestId": request_id,
                         "chatId": chat, "messagesMap": {&last: {"status": "read"}}}),
            )
            .await;
        reader
            .outstanding
            .insert(request_id, (chat.clone(), vec![(last, "read".into())]));
        reader.until(|r| r.outstanding.is_empty()).await;
    }
    let zero: HashMap<String, i64> = chats.iter().map(|c| (c.clone(), 0)).collect();
    check_rest(zero).await;
    for reader in &mut readers {
        tokio::time::timeout(
            Duration::from_secs(20),
            reader.until(|r| r.unread_chats() == 0),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: pushes did not settle", reader.name));
    }
    // The senders see every message read.
    for (i, senior) in seniors.iter().enumerate() {
        let (_, body) = server
            .get(
                &format!("/v1/chat/{}/messages?pageSize=100", chats[i]),
                Some(&senior.1),
            )
            .await;
        let messages = list(&body);
        assert_eq!(messages.len(), SENT_PER_CHAT, "{body}");
        for message in messages {
            assert_eq!(message["delivery"]["status"], json!("read"), "{message}");
        }
    }
}

/// Withdrawals fired at once in each round: (start balance, amounts).
fn withdrawal_rounds(rng: &mut StdRng) -> Vec<(i64, Vec<i64>)> {
    vec![
        // Mixed amounts, summing far beyond the balance.
        (1000, (0..16).map(|_| rng.gen_range(100..=400)).collect()),
        // Everyone asks for the whole balance: exactly one wins.
        (1000, vec![1000; 10]),
        // Equal shares: exactly five fit.
        (1000, vec![200; 12]),
    ]
}

async fn concurrent_withdrawals_never_overdraw(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &[("TALKAMIE_WITHDRAWAL_LIMIT_COINS_30D", "100000000")]).await;
    let mut rng = StdRng::seed_from_u64(0x9_3_3);
    let rounds = withdrawal_rounds(&mut rng);
    for (round, (start, amounts)) in rounds.iter().enumerate() {
        let volunteer = user(&server, "volunteer").await;
        fund(&server, &volunteer.1, *start).await;
        assert_eq!(balance(&server, &volunteer.1).await, *start);
        let racers: Vec<_> = amounts
            .iter()
            .map(|coins| {
                spawn_call(
                    &server,
                    Method::POST,
                    "/v1/finance/withdraw".into(),
                    &volunteer.1,
                    Some(json!({"coins": coins, "paypal": {"email": "amie@example.com"}})),
                    0,
                )
            })
            .collect();
        let mut succeeded = Vec::new();
        let mut refused = Vec::new();
        for (racer, coins) in futures_util::future::join_all(racers)
            .await
            .into_iter()
            .zip(amounts)
        {
            let (status, body) = racer.expect("withdraw task");
            if status == StatusCode::CREATED {
                let tx = &body["data"]["transaction"];
                assert_eq!(tx["type"], json!("withdrawal"), "{body}");
                assert_eq!(tx["coins"]["amount"], json!(coins), "{body}");
                succeeded.push((tx["id"].as_str().expect("id").to_string(), *coins));
            } else {
                assert_clean_loss(status, &body, &["insufficient_coins"]);
                assert_eq!(status, StatusCode::CONFLICT);
                refused.push(*coins);
            }
        }
        let spent: i64 = succeeded.iter().map(|(_, c)| c).sum();
        let left = start - spent;
        eprintln!(
            "withdrawal round {round}: {} of {} succeeded, {spent} of {start} coins",
            succeeded.len(),
            amounts.len()
        );
        assert!(!succeeded.is_empty(), "round {round}: something fits");
        assert!(left >= 0, "round {round}: overdrawn by {}", -left);
        // Only withdrawals moved coins during the race, so the balance only fell: whatever
        // was refused for too few coins is more than what is left.
        for coins in &refused {
            assert!(
                *coins > left,
                "round {round}: {coins} refused with {left} left"
            );
        }
        // The GET endpoints agree, before and after the payouts settle.
        assert_eq!(balance(&server, &volunteer.1).await, left);
        for (id, coins) in &succeeded {
            let tx = settled(&server, &volunteer.1, id).await;
            assert_eq!(tx["status"], json!("succeeded"), "{tx}");
            assert_eq!(tx["coins"]["amount"], json!(coins));
        }
        assert_eq!(balance(&server, &volunteer.1).await, left);
        let (status, body) = server
            .get(&format!("/v1/user/{}", volunteer.0), Some(&volunteer.1))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["data"]["ledger"]["coins"]["balance"],
            json!(left),
            "{body}"
        );
        let (_, body) = server
            .get("/v1/finance/withdrawals?pageSize=100", Some(&volunteer.1))
            .await;
        let mut listed: Vec<String> = list(&body)
            .iter()
            .filter(|t| t["type"] == json!("withdrawal"))
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect();
        let mut won: Vec<String> = succeeded.iter().map(|(id, _)| id.clone()).collect();
        listed.sort();
        won.sort();
        assert_eq!(listed, won, "round {round}: {body}");
    }
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["ok"], json!(true), "{report}");
    assert_eq!(report["sum"], json!(0), "{report}");
    assert_eq!(
        report["accounts"]["platform:withdrawals-pending"],
        json!(0),
        "{report}"
    );
    server.stop().await;
}
