//! Section 8 and 12: calls over the WebSocket (ringing on every socket of the callee, answers,
//! signalling relayed to the other side only, missed and limit-reached calls on the server's
//! clock), the billing saga (charge, earning, `call.ended` with `me`, `user.coins.low`) and
//! its exactly-once finish after a crash, with a clean ledger audit.

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};
use talkamie_aggregates::call::{Call, CallCommand};

use crate::both_stores;
use crate::helpers::{assert_error, Backend, Server, TestDb, Ws};
use crate::ledger::{balance, fund, ledger_server, user};
use crate::schedules::{no_push, verified_volunteer};

both_stores!(
    a_call_rings_is_answered_signalled_and_billed,
    calls_are_missed_rejected_and_ended_at_their_limit,
    bad_call_input_is_refused,
    billing_finishes_once_after_a_crash,
    a_call_a_side_abandoned_ends_when_they_left,
);

const TIMERS: [(&str, &str); 2] = [
    ("TALKAMIE_ADJUSTABLE_CLOCK", "true"),
    ("TALKAMIE_TIMER_POLL_MS", "100"),
];

/// A running server with a verified volunteer connected to a funded senior.
pub struct Pair {
    pub admin: String,
    pub senior: (String, String),
    pub volunteer: (String, String),
    pub chat_id: String,
}

pub async fn pair(server: &Server, db: &TestDb, coins: i64) -> Pair {
    let (_, admin) = server.admin(db).await;
    let volunteer = verified_volunteer(server, db, &admin).await;
    let senior = user(server, "senior").await;
    let chat_id = server.connect(&senior, &volunteer).await;
    if coins > 0 {
        fund(server, &senior.1, coins).await;
    }
    Pair {
        admin,
        senior,
        volunteer,
        chat_id,
    }
}

/// Moves the clock of each of `servers` forward (`POST /v1/admin/clock`).
pub async fn advance(servers: &[&Server], admin: &str, seconds: i64) {
    for server in servers {
        let (status, body) = server
            .post(
                "/v1/admin/clock",
                Some(admin),
                json!({"advanceSeconds": seconds}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Sends a call action and returns the reply's `data.call` (asserting success).
pub async fn act(ws: &mut Ws, frame: Value) -> Value {
    let reply = ws.request(frame).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    reply["data"]["call"].clone()
}

async fn start(ws: &mut Ws, chat_id: &str) -> Value {
    act(
        ws,
        json!({"action": "call.start", "chatId": chat_id, "type": "audio"}),
    )
    .await
}

/// Both sides on sockets and a call the volunteer answered: `(senior, volunteer, call id)`.
pub async fn answered_call(server: &Server, p: &Pair) -> (Ws, Ws, String) {
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    let (mut volunteer_ws, _) = server.ws_authenticated(&p.volunteer.1, None).await;
    let call = start(&mut senior_ws, &p.chat_id).await;
    let call_id = call["id"].as_str().expect("id").to_string();
    act(
        &mut volunteer_ws,
        json!({"action": "call.accept", "callId": call_id}),
    )
    .await;
    (senior_ws, volunteer_ws, call_id)
}

fn error_of(reply: &Value) -> (u64, String) {
    assert_eq!(reply["success"], json!(false), "{reply}");
    (
        reply["statusCode"].as_u64().unwrap_or(0),
        reply["error"].as_str().unwrap_or("").to_string(),
    )
}

async fn a_call_rings_is_answered_signalled_and_billed(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let one = ledger_server(&db, &TIMERS).await;
    // With PostgreSQL the volunteer sits on a second instance: rings and signals cross over.
    let two = match backend {
        Backend::Postgres => Some(ledger_server(&db, &TIMERS).await),
        Backend::Sqlite => None,
    };
    let volunteer_server = two.as_ref().unwrap_or(&one);
    let servers: Vec<&Server> = std::iter::once(&one).chain(two.as_ref()).collect();
    let p = pair(&one, &db, 1000).await;
    let (mut senior_ws, _) = one.ws_authenticated(&p.senior.1, None).await;
    let (mut phone, _) = volunteer_server
        .ws_authenticated(&p.volunteer.1, None)
        .await;
    let (mut tablet, _) = volunteer_server
        .ws_authenticated(&p.volunteer.1, None)
        .await;

    let call = start(&mut senior_ws, &p.chat_id).await;
    let call_id = call["id"].as_str().expect("call id").to_string();
    assert_eq!(call["status"], "ringing", "{call}");
    assert_eq!(call["direction"], "outgoing");
    assert_eq!(call["type"], "audio");
    assert_eq!(call["user"]["id"], json!(p.volunteer.0));
    assert_eq!(call["chat"]["id"], json!(p.chat_id));
    // Every socket of the callee rings.
    for ws in [&mut phone, &mut tablet] {
        let incoming = ws.push("call.incoming").await;
        assert_eq!(incoming["data"]["call"]["id"], json!(call_id));
        assert_eq!(incoming["data"]["call"]["direction"], "incoming");
        assert_eq!(incoming["data"]["call"]["user"]["id"], json!(p.senior.0));
        assert_eq!(incoming["data"]["chat"]["id"], json!(p.chat_id));
    }

    // Signalling reaches the other side only, as sent.
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    let reply = senior_ws
        .request(json!({"action": "call.signal", "callId": call_id, "signal": offer}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    assert_eq!(reply["data"], Value::Null);
    for ws in [&mut phone, &mut tablet] {
        let signal = ws.push("call.signal").await;
        assert_eq!(signal["data"], json!({"callId": call_id, "signal": offer}));
    }
    assert!(no_push(&mut senior_ws, "call.signal", Duration::from_millis(500)).await);
    let candidate = json!({"candidate": {"candidate": "candidate:1 1 UDP 1 10.0.0.1 9 typ host",
                                         "sdpMid": "0", "sdpMLineIndex": 0}});
    let reply = phone
        .request(json!({"action": "call.signal", "callId": call_id, "signal": candidate}))
        .await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    let signal = senior_ws.push("call.signal").await;
    assert_eq!(signal["data"]["signal"], candidate);

    // The volunteer answers on the phone; the senior and the tablet hear of it.
    let call = act(
        &mut phone,
        json!({"action": "call.accept", "callId": call_id}),
    )
    .await;
    assert_eq!(call["status"], "accepted", "{call}");
    assert_eq!(call["direction"], "incoming");
    for ws in [&mut senior_ws, &mut tablet] {
        let accepted = ws.push("call.accepted").await;
        assert_eq!(accepted["data"]["call"]["status"], "accepted");
    }

    // A minute and a second later the senior hangs up: two started minutes.
    advance(&servers, &p.admin, 61).await;
    let call = act(
        &mut senior_ws,
        json!({"action": "call.end", "callId": call_id}),
    )
    .await;
    assert_eq!(call["status"], "ended", "{call}");
    let duration = call["duration"].as_i64().expect("duration");
    assert!((61..110).contains(&duration), "{call}");
    assert_eq!(call["coins"], json!({"charged": 100, "earned": 70}));
    let ended = senior_ws.push("call.ended").await;
    assert_eq!(ended["data"]["call"]["id"], json!(call_id));
    assert_eq!(ended["data"]["me"]["id"], json!(p.senior.0));
    assert_eq!(ended["data"]["me"]["ledger"]["coins"]["balance"], 900);
    assert_eq!(ended["data"]["me"]["dailyInfo"]["totalCalls"], 1);
    for ws in [&mut phone, &mut tablet] {
        let ended = ws.push("call.ended").await;
        assert_eq!(ended["data"]["call"]["coins"]["earned"], 70);
        assert_eq!(ended["data"]["me"]["ledger"]["coins"]["balance"], 70);
    }
    // 900 is above the low-balance threshold (250): no warning.
    assert!(no_push(&mut senior_ws, "user.coins.low", Duration::from_millis(500)).await);
    assert_eq!(balance(&one, &p.senior.1).await, 900);
    assert_eq!(balance(&one, &p.volunteer.1).await, 70);

    // The call, as each side and a stranger see it.
    let (status, body) = one
        .get(&format!("/v1/call/{call_id}"), Some(&p.senior.1))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let full = &body["data"];
    assert_eq!(full["caller"]["id"], json!(p.senior.0));
    assert_eq!(full["callee"]["id"], json!(p.volunteer.0));
    assert_eq!(full["endedBy"]["id"], json!(p.senior.0));
    assert_eq!(full["endReason"], "hung-up");
    assert_eq!(full["price"], 100);
    assert_eq!(full["coinsPerMinute"], 50);
    // 1000 coins buy 20 minutes.
    assert_eq!(full["maxDuration"], 1200);
    let stranger = user(&one, "senior").await;
    let (status, body) = one
        .get(&format!("/v1/call/{call_id}"), Some(&stranger.1))
        .await;
    assert_error(status, &body, 404, "not_found");

    // Histories: the direction is the viewer's; keyword matches the other person's name.
    let (status, body) = one.get("/v1/calls/histories", Some(&p.senior.1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pagination"]["totalItems"], 1);
    assert_eq!(body["data"][0]["direction"], "outgoing");
    assert_eq!(body["data"][0]["status"], "ended");
    let (_, body) = one.get("/v1/calls/histories", Some(&p.volunteer.1)).await;
    assert_eq!(body["data"][0]["direction"], "incoming");
    assert_eq!(body["data"][0]["user"]["id"], json!(p.senior.0));
    let (_, body) = one
        .get("/v1/calls/histories?keyword=amie", Some(&p.senior.1))
        .await;
    assert_eq!(body["pagination"]["totalItems"], 1, "{body}");
    let (_, body) = one
        .get("/v1/calls/histories?keyword=nobody", Some(&p.senior.1))
        .await;
    assert_eq!(body["pagination"]["totalItems"], 0, "{body}");
    let (_, body) = one.get("/v1/calls/histories", Some(&stranger.1)).await;
    assert_eq!(body["data"], json!([]));

    // The ledger links the call; the chat records it; today's count shows it.
    let (_, body) = one.get("/v1/finance/transactions", Some(&p.senior.1)).await;
    let charges: Vec<&Value> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| t["type"] == "charge")
        .collect();
    assert_eq!(charges.len(), 1, "{body}");
    assert_eq!(charges[0]["call"]["id"], json!(call_id));
    assert_eq!(charges[0]["coins"]["amount"], 100);
    let (_, body) = one.get("/v1/finance/earnings", Some(&p.volunteer.1)).await;
    assert_eq!(body["data"][0]["type"], "earning", "{body}");
    assert_eq!(body["data"][0]["call"]["id"], json!(call_id));
    assert_eq!(body["data"][0]["coins"]["amount"], 70);
    let (_, body) = one
        .get(
            &format!("/v1/chat/{}/messages", p.chat_id),
            Some(&p.volunteer.1),
        )
        .await;
    let line = body["data"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["type"] == "call")
        .unwrap_or_else(|| panic!("no call message in {body}"))
        .clone();
    assert_eq!(line["call"]["id"], json!(call_id));
    assert!(
        line["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Audio call (1:")),
        "{line}"
    );
    let (_, me) = one.get("/v1/auth", Some(&p.volunteer.1)).await;
    assert_eq!(me["data"]["user"]["dailyInfo"]["totalCalls"], 1, "{me}");

    // Every coin accounted for: the platform kept 30, the clearing account is back at zero.
    let (ok, stdout, stderr) = db.cli(&["ledger", "audit", "--format", "json"]);
    assert!(ok, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["sum"], 0);
    assert_eq!(report["accounts"]["platform:revenue"], 30, "{report}");
    assert_eq!(
        report["accounts"]["platform:calls-clearing"]
            .as_i64()
            .unwrap_or(0),
        0
    );
}

async fn calls_are_missed_rejected_and_ended_at_their_limit(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &TIMERS).await;
    let p = pair(&server, &db, 300).await;
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    let (mut volunteer_ws, _) = server.ws_authenticated(&p.volunteer.1, None).await;

    // Nobody answers for 45 seconds: missed, on both sides, and in the chat.
    let call = start(&mut senior_ws, &p.chat_id).await;
    let missed_id = call["id"].clone();
    volunteer_ws.push("call.incoming").await;
    advance(&[&server], &p.admin, 30).await;
    assert!(no_push(&mut senior_ws, "call.missed", Duration::from_millis(600)).await);
    advance(&[&server], &p.admin, 16).await;
    for ws in [&mut senior_ws, &mut volunteer_ws] {
        let missed = ws.push("call.missed").await;
        assert_eq!(missed["data"]["call"]["id"], missed_id);
        assert_eq!(missed["data"]["call"]["status"], "missed");
    }
    let reply = volunteer_ws
        .request(json!({"action": "call.accept", "callId": missed_id}))
        .await;
    assert_eq!(error_of(&reply), (409, "call_state".into()));

    // Declined: only the callee answers.
    let call = start(&mut senior_ws, &p.chat_id).await;
    let rejected_id = call["id"].clone();
    let reply = senior_ws
        .request(json!({"action": "call.accept", "callId": rejected_id}))
        .await;
    assert_eq!(error_of(&reply), (403, "forbidden".into()));
    let call = act(
        &mut volunteer_ws,
        json!({"action": "call.reject", "callId": rejected_id}),
    )
    .await;
    assert_eq!(call["status"], "rejected");
    let rejected = senior_ws.push("call.rejected").await;
    assert_eq!(rejected["data"]["call"]["id"], rejected_id);

    // The caller gives up while it rings: ended, nothing charged.
    let call = start(&mut senior_ws, &p.chat_id).await;
    let call = act(
        &mut senior_ws,
        json!({"action": "call.end", "callId": call["id"]}),
    )
    .await;
    assert_eq!(call["status"], "ended");
    assert_eq!(call["duration"], 0);
    assert_eq!(call["coins"], json!({"charged": 0, "earned": 0}));
    volunteer_ws.push("call.ended").await;
    assert_eq!(balance(&server, &p.senior.1).await, 300);

    // 300 coins buy six minutes: the server ends the call there and charges exactly that.
    let call = start(&mut senior_ws, &p.chat_id).await;
    let limited_id = call["id"].clone();
    act(
        &mut volunteer_ws,
        json!({"action": "call.accept", "callId": limited_id}),
    )
    .await;
    advance(&[&server], &p.admin, 5 * 60).await;
    assert!(no_push(&mut senior_ws, "call.ended", Duration::from_millis(600)).await);
    advance(&[&server], &p.admin, 65).await;
    let ended = senior_ws.push("call.ended").await;
    let call = &ended["data"]["call"];
    assert_eq!(call["id"], limited_id);
    assert_eq!(call["duration"], 360, "{ended}");
    assert_eq!(call["coins"], json!({"charged": 300, "earned": 210}));
    assert_eq!(ended["data"]["me"]["ledger"]["coins"]["balance"], 0);
    let low = senior_ws.push("user.coins.low").await;
    assert_eq!(low["data"], json!({"balance": 0, "lowBalanceCoins": 250}));
    let ended = volunteer_ws.push("call.ended").await;
    assert_eq!(ended["data"]["me"]["ledger"]["coins"]["balance"], 210);
    let (_, body) = server
        .get(
            &format!("/v1/call/{}", limited_id.as_str().unwrap_or("")),
            Some(&p.volunteer.1),
        )
        .await;
    assert_eq!(body["data"]["endReason"], "limit-reached", "{body}");
    assert_eq!(body["data"]["endedBy"], Value::Null);

    // Nothing left to pay with: refused before it rings.
    let reply = senior_ws
        .request(json!({"action": "call.start", "chatId": p.chat_id, "type": "video"}))
        .await;
    assert_eq!(error_of(&reply), (409, "insufficient_coins".into()));

    // The volunteer's maxDuration caps a call that the balance would let run longer.
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/user/{}", p.volunteer.0),
            Some(&p.volunteer.1),
            Some(json!({"maxCallDuration": 120})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fund(&server, &p.senior.1, 1000).await;
    let call = start(&mut senior_ws, &p.chat_id).await;
    let capped_id = call["id"].as_str().expect("id").to_string();
    let (_, body) = server
        .get(&format!("/v1/call/{capped_id}"), Some(&p.senior.1))
        .await;
    assert_eq!(body["data"]["maxDuration"], 120, "{body}");
    act(
        &mut volunteer_ws,
        json!({"action": "call.accept", "callId": capped_id}),
    )
    .await;
    advance(&[&server], &p.admin, 125).await;
    let ended = senior_ws
        .push_where("call.ended", |f| {
            f["data"]["call"]["id"] == json!(capped_id)
        })
        .await;
    assert_eq!(ended["data"]["call"]["duration"], 120);
    assert_eq!(ended["data"]["call"]["coins"]["charged"], 100);
    assert_eq!(balance(&server, &p.senior.1).await, 900);

    // History, newest first, with every outcome.
    let (_, body) = server
        .get("/v1/calls/histories?pageSize=2", Some(&p.senior.1))
        .await;
    assert_eq!(body["pagination"]["totalItems"], 5, "{body}");
    assert_eq!(body["data"][0]["id"], json!(capped_id));
    let key = body["pagination"]["lastEvaluatedKey"]
        .as_str()
        .expect("more pages")
        .to_string();
    let mut statuses: Vec<String> = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .collect();
    let mut key = Some(key);
    while let Some(k) = key {
        let (_, page) = server
            .get(
                &format!("/v1/calls/histories?pageSize=2&lastEvaluatedKey={k}"),
                Some(&p.senior.1),
            )
            .await;
        statuses.extend(
            page["data"]
                .as_array()
                .expect("list")
                .iter()
                .map(|c| c["status"].as_str().unwrap_or("").to_string()),
        );
        key = page["pagination"]["lastEvaluatedKey"]
            .as_str()
            .map(str::to_string);
    }
    assert_eq!(
        statuses,
        ["ended", "ended", "ended", "rejected", "missed"],
        "newest first"
    );
    let (ok, stdout, _) = db.cli(&["ledger", "audit", "--format", "json"]);
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert!(ok && report["ok"] == json!(true), "{report}");
}

async fn bad_call_input_is_refused(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &TIMERS).await;
    let p = pair(&server, &db, 1000).await;
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    let (mut volunteer_ws, _) = server.ws_authenticated(&p.volunteer.1, None).await;
    let stranger = user(&server, "senior").await;
    let (mut stranger_ws, _) = server.ws_authenticated(&stranger.1, None).await;

    let cases = [
        (
            json!({"action": "call.start", "type": "audio"}),
            400,
            "invalid_input",
        ),
        (
            json!({"action": "call.start", "chatId": p.chat_id, "type": "fax"}),
            400,
            "invalid_input",
        ),
        (
            json!({"action": "call.start", "chatId": 42, "type": "audio"}),
            400,
            "invalid_input",
        ),
        (
            json!({"action": "call.start", "chatId": "no-such-chat", "type": "audio"}),
            404,
            "not_found",
        ),
        (json!({"action": "call.accept"}), 400, "invalid_input"),
        (
            json!({"action": "call.reject", "callId": 7}),
            400,
            "invalid_input",
        ),
        (
            json!({"action": "call.end", "callId": "bad\u{0}id"}),
            400,
            "invalid_input",
        ),
        (
            json!({"action": "call.end", "callId": "no-such-call"}),
            404,
            "not_found",
        ),
    ];
    for (frame, status, code) in cases {
        let reply = senior_ws.request(frame.clone()).await;
        assert_eq!(error_of(&reply), (status, code.to_string()), "{frame}");
    }
    // Volunteers do not start calls; strangers cannot call into others' chats.
    let reply = volunteer_ws
        .request(json!({"action": "call.start", "chatId": p.chat_id, "type": "audio"}))
        .await;
    assert_eq!(error_of(&reply), (403, "forbidden".into()));
    let reply = stranger_ws
        .request(json!({"action": "call.start", "chatId": p.chat_id, "type": "audio"}))
        .await;
    assert_eq!(error_of(&reply), (404, "not_found".into()));

    let call = start(&mut senior_ws, &p.chat_id).await;
    let call_id = call["id"].clone();
    // One call at a time.
    let reply = senior_ws
        .request(json!({"action": "call.start", "chatId": p.chat_id, "type": "audio"}))
        .await;
    assert_eq!(error_of(&reply), (409, "busy".into()));
    // Nobody else reads, answers, ends or signals it.
    for action in ["call.accept", "call.reject", "call.end"] {
        let reply = stranger_ws
            .request(json!({"action": action, "callId": call_id}))
            .await;
        assert_eq!(error_of(&reply), (404, "not_found".into()), "{action}");
    }
    let reply = stranger_ws
        .request(json!({"action": "call.signal", "callId": call_id, "signal": {"type": "offer"}}))
        .await;
    assert_eq!(error_of(&reply), (404, "not_found".into()));
    let (status, body) = server
        .get(
            &format!("/v1/call/{}", call_id.as_str().unwrap_or("")),
            Some(&stranger.1),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    // Signals are objects of signalling fields.
    for signal in [
        json!("offer"),
        json!({}),
        json!({"type": 7}),
        json!({"type": "offer", "script": "alert(1)"}),
    ] {
        let reply = senior_ws
            .request(json!({"action": "call.signal", "callId": call_id, "signal": signal}))
            .await;
        assert_eq!(error_of(&reply), (400, "invalid_input".into()), "{signal}");
    }
    assert!(no_push(&mut volunteer_ws, "call.signal", Duration::from_millis(300)).await);
    // Once it is over, it takes no more signals or answers; ending again changes nothing.
    act(
        &mut senior_ws,
        json!({"action": "call.end", "callId": call_id}),
    )
    .await;
    let reply = senior_ws
        .request(json!({"action": "call.signal", "callId": call_id, "signal": {"type": "offer"}}))
        .await;
    assert_eq!(error_of(&reply), (409, "call_state".into()));
    let reply = volunteer_ws
        .request(json!({"action": "call.accept", "callId": call_id}))
        .await;
    assert_eq!(error_of(&reply), (409, "call_state".into()));
    let call = act(
        &mut volunteer_ws,
        json!({"action": "call.end", "callId": call_id}),
    )
    .await;
    assert_eq!(call["status"], "ended");
    // REST side.
    let (status, body) = server
        .get("/v1/calls/histories?pageSize=0", Some(&p.senior.1))
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server
        .get(
            "/v1/calls/histories?lastEvaluatedKey=forged",
            Some(&p.senior.1),
        )
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server.get("/v1/calls/histories", None).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = server
        .get("/v1/calls/histories?keyword=a%00b", Some(&p.senior.1))
        .await;
    assert_error(status, &body, 400, "invalid_input");
    let (status, body) = server.get("/v1/call/a%00b", Some(&p.senior.1)).await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(balance(&server, &p.senior.1).await, 1000);
}

/// The server dies after a call ended but before it was billed (the Ended event is in the log,
/// no coin has moved). The restarted server's sweep finishes the billing once; rebuilding the
/// read models from the log shows the same single charge and a clean audit.
async fn billing_finishes_once_after_a_crash(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &TIMERS).await;
    let p = pair(&server, &db, 1000).await;
    let (senior_ws, volunteer_ws, call_id) = answered_call(&server, &p).await;
    drop((senior_ws, volunteer_ws));
    server.kill();

    // What the crashed server had written: the call's end, 90 seconds after it was answered.
    let settings =
        talkamie::config::Settings::from_map(&db.env().into_iter().collect()).expect("settings");
    let store = talkamie::store::Store::open(&settings)
        .await
        .expect("open the store");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projector = tokio::spawn(store.projector.clone().run(stopped));
    let end = CallCommand::End {
        by: Some(p.senior.0.clone()),
        at: Utc::now() + chrono::Duration::seconds(90),
    };
    let events = store
        .execute::<Call>(&call_id, end, talkamie::store::system_metadata("test"))
        .await
        .expect("end the call");
    assert_eq!(events.len(), 1);
    stop.send_replace(true);
    projector.await.expect("projector stopped");

    let server = ledger_server(&db, &TIMERS).await;
    assert_eq!(balance(&server, &p.senior.1).await, 1000, "not billed yet");
    // Past the sweep's grace period on the restarted server's clock.
    advance(&[&server], &p.admin, 120).await;
    let (mut senior_ws, _) = server.ws_authenticated(&p.senior.1, Some(0)).await;
    let ended = senior_ws
        .push_where("call.ended", |f| f["data"]["call"]["id"] == json!(call_id))
        .await;
    // 90 seconds (plus the moments the test took): two started minutes.
    assert_eq!(ended["data"]["call"]["coins"]["charged"], 100, "{ended}");
    assert_eq!(ended["data"]["me"]["ledger"]["coins"]["balance"], 900);
    assert_eq!(balance(&server, &p.volunteer.1).await, 70);
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.stop().await;

    // Replay: rebuild every read model from the log, restart, and look again.
    let (ok, stdout, stderr) = db.cli(&["projections", "rebuild"]);
    assert!(ok, "{stdout}{stderr}");
    let server = ledger_server(&db, &TIMERS).await;
    advance(&[&server], &p.admin, 120).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(balance(&server, &p.senior.1).await, 900);
    assert_eq!(balance(&server, &p.volunteer.1).await, 70);
    let (_, body) = server
        .get("/v1/finance/transactions", Some(&p.senior.1))
        .await;
    let charges = body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| t["type"] == "charge")
        .count();
    assert_eq!(charges, 1, "{body}");
    let (ok, stdout, _) = db.cli(&["ledger", "audit", "--format", "json"]);
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert!(ok && report["ok"] == json!(true), "{report}");
    assert_eq!(report["accounts"]["platform:revenue"], 30, "{report}");
}

/// The senior's app vanishes mid-call (every socket closed). The call goes on for a minute in
/// case they reconnect, then the server ends it as of the moment they left.
async fn a_call_a_side_abandoned_ends_when_they_left(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = ledger_server(&db, &TIMERS).await;
    let p = pair(&server, &db, 1000).await;
    let (mut senior_ws, mut volunteer_ws, call_id) = answered_call(&server, &p).await;
    senior_ws.push("call.accepted").await;
    // A reconnect within the minute keeps the call.
    drop(senior_ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    advance(&[&server], &p.admin, 40).await;
    let (senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    advance(&[&server], &p.admin, 40).await;
    assert!(no_push(&mut volunteer_ws, "call.ended", Duration::from_millis(800)).await);
    // Gone for good: ended a minute later, counted until they left.
    drop(senior_ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    advance(&[&server], &p.admin, 30).await;
    assert!(no_push(&mut volunteer_ws, "call.ended", Duration::from_millis(800)).await);
    advance(&[&server], &p.admin, 31).await;
    let ended = volunteer_ws.push("call.ended").await;
    let call = &ended["data"]["call"];
    assert_eq!(call["id"], json!(call_id));
    // Answered, then 80 s (plus the test's own moments) until the senior left for good.
    let duration = call["duration"].as_i64().expect("duration");
    assert!((80..120).contains(&duration), "{ended}");
    assert_eq!(call["coins"], json!({"charged": 100, "earned": 70}));
    let (_, body) = server
        .get(&format!("/v1/call/{call_id}"), Some(&p.senior.1))
        .await;
    assert_eq!(body["data"]["endReason"], "connection-lost", "{body}");
    assert_eq!(balance(&server, &p.senior.1).await, 900);

    // The senior deletes their account mid-call: the call ends and is paid before the wallet
    // is forfeited.
    let (senior_ws, _) = server.ws_authenticated(&p.senior.1, None).await;
    let call = {
        let mut senior_ws = senior_ws;
        start(&mut senior_ws, &p.chat_id).await
    };
    act(
        &mut volunteer_ws,
        json!({"action": "call.accept", "callId": call["id"]}),
    )
    .await;
    advance(&[&server], &p.admin, 20).await;
    let (status, body) = server
        .call(
            "DELETE",
            &format!("/v1/user/{}", p.senior.0),
            Some(&p.senior.1),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ended = volunteer_ws
        .push_where("call.ended", |f| f["data"]["call"]["id"] == call["id"])
        .await;
    assert_eq!(
        ended["data"]["call"]["coins"],
        json!({"charged": 50, "earned": 35})
    );
    assert_eq!(balance(&server, &p.volunteer.1).await, 70 + 35);
    let (ok, stdout, _) = db.cli(&["ledger", "audit", "--format", "json"]);
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    assert!(ok && report["ok"] == json!(true), "{report}");
}
