//! Calls over the WebSocket: a senior rings a volunteer in an accepted chat, the callee answers
//! or declines, either side hangs up. The server measures the time (from accept to end), marks
//! calls nobody answered as missed, and ends calls that reach their limit (the senior's balance
//! or the volunteer's `maxDuration`). The Call aggregate decides; `billing` charges the call.
//!
//! The signalling between the two apps (`call.signal`) is relayed through the push feed, so it
//! reaches the other side on whichever instance their sockets are.

pub mod abandoned;
pub mod billing;

use chrono::Duration;
use serde_json::{json, Value};
use talkamie_aggregates::calendar::CallKind;
use talkamie_aggregates::call::{Call, CallCommand, CallError, CallEvent};
use talkamie_aggregates::pair::{Attachment, PairCommand};
use talkamie_projections::calls::{self, CallRow, Due, Unfinished};
use talkamie_projections::{ledger, schedules, users};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::http::chats::member_chat;
use crate::http::connections::execute_pair;
use crate::http::envelope::ApiError;
use crate::http::schedules::users_as_seen_by;
use crate::http::validate::required_text;
use crate::state::AppState;
use crate::store::{system_metadata, Metadata};

/// A call started this long before a scheduled slot belongs to that schedule.
const EARLY_FOR_SCHEDULE: Duration = Duration::minutes(10);
/// Calls a timer round handles at most.
const TIMER_BATCH: i64 = 100;
/// Signalling fields a client may send (SDP offers and answers, ICE candidates).
const SIGNAL_FIELDS: [&str; 3] = ["type", "sdp", "candidate"];

/// How a broken call rule is answered.
pub fn call_rejected(error: CallError) -> ApiError {
    let message = error.to_string();
    match error {
        CallError::AlreadyStarted => ApiError::conflict("already_exists", message),
        CallError::NotFound | CallError::NotMember => ApiError::not_found("call"),
        CallError::InsufficientCoins { .. } => ApiError::conflict("insufficient_coins", message),
        CallError::NotCallee => {
            ApiError::new(actix_web::http::StatusCode::FORBIDDEN, "forbidden", message)
        }
        CallError::WrongStatus(_) | CallError::StillRinging => {
            ApiError::conflict("call_state", message)
        }
    }
}

/// Runs a command on call `call_id`.
pub async fn execute(
    state: &AppState,
    call_id: &str,
    command: CallCommand,
    metadata: Metadata,
) -> Result<Vec<CallEvent>, ApiError> {
    state
        .store
        .execute::<Call>(call_id, command, metadata)
        .await
        .map_err(|e| ApiError::from_command(e, call_rejected))
}

/// The call `call_id` if `user_id` is on it; else 404 (others' calls do not exist for them).
pub async fn member_call(
    state: &AppState,
    call_id: &str,
    user_id: &str,
) -> Result<CallRow, ApiError> {
    if call_id.chars().any(char::is_control) {
        return Err(ApiError::not_found("call"));
    }
    calls::find((&state.store.db).into(), call_id)
        .await?
        .filter(|call| call.is_member(user_id))
        .ok_or_else(|| ApiError::not_found("call"))
}

/// `basic_call` of each row as `viewer` sees it.
pub async fn render_calls(
    state: &AppState,
    viewer: &str,
    rows: &[CallRow],
) -> Result<Vec<Value>, ApiError> {
    let others: Vec<String> = rows
        .iter()
        .map(|c| c.other_side(viewer).to_string())
        .collect();
    let people = users_as_seen_by(state, viewer, &others).await?;
    Ok(rows
        .iter()
        .map(|c| {
            let user = people
                .get(c.other_side(viewer))
                .cloned()
                .unwrap_or(Value::Null);
            c.to_json(viewer, user)
        })
        .collect())
}

/// `full_call` as `viewer` sees it.
pub async fn render_full(state: &AppState, viewer: &str, row: &CallRow) -> Result<Value, ApiError> {
    let other = row.other_side(viewer).to_string();
    let mut people = users_as_seen_by(state, viewer, std::slice::from_ref(&other)).await?;
    Ok(row.to_full_json(viewer, people.remove(&other).unwrap_or(Value::Null)))
}

/// `{call}` as `viewer` sees it now (the reply of every call action).
async fn reply(state: &AppState, viewer: &str, call_id: &str) -> Result<Value, ApiError> {
    let row = member_call(state, call_id, viewer).await?;
    let call = render_calls(state, viewer, std::slice::from_ref(&row))
        .await?
        .pop()
        .unwrap_or(Value::Null);
    Ok(json!({ "call": call }))
}

fn busy(message: String) -> ApiError {
    ApiError::conflict("busy", message)
}

/// `call.start {chatId, type}`: the senior rings the volunteer of an accepted chat.
pub async fn start(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let chat_id = required_text(frame, "chatId")?;
    let kind = match frame.get("type").and_then(Value::as_str) {
        Some("audio") => CallKind::Audio,
        Some("video") => CallKind::Video,
        _ => return Err(ApiError::invalid(json!({"type": "must be audio or video"}))),
    };
    let db = &state.store.db;
    let caller = users::find_by_id(db, &who.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if caller.user_type != "senior" {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only seniors start calls",
        ));
    }
    let chat = member_chat(state, &chat_id, &who.user_id).await?;
    if !chat.is_open {
        return Err(ApiError::unprocessable(
            "chat_not_accepted",
            "calls run in an accepted chat: the connection or message request must be accepted first",
        ));
    }
    let callee = users::find_by_id(db, &chat.other_id)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    if !callee.is_volunteer() || !callee.verified() {
        return Err(ApiError::unprocessable(
            "not_verified",
            "calls are with verified volunteers",
        ));
    }
    let mine = calls::unfinished_of(db.into(), &caller.id, Unfinished::OpenOrUnbilled).await?;
    if mine.iter().any(CallRow::is_open) {
        return Err(busy("you are already on a call".into()));
    }
    // The last call must be paid for before this one's limit is set from the balance.
    for ended in &mine {
        billing::settle(state, &ended.id).await?;
    }
    if !calls::unfinished_of(db.into(), &callee.id, Unfinished::Open)
        .await?
        .is_empty()
    {
        return Err(busy("they are on another call; try again later".into()));
    }
    let now = state.clock.now();
    let balance = ledger::balance(db.into(), &caller.id).await?;
    let schedule_id =
        schedules::scheduled_now(db.into(), &caller.id, &callee.id, now, EARLY_FOR_SCHEDULE)
            .await?;
    let call_id = Uuid::new_v4().to_string();
    let command = CallCommand::Start {
        chat_id,
        caller: caller.id.clone(),
        callee: callee.id.clone(),
        kind,
        schedule_id,
        balance,
        coins_per_minute: state.settings.coins.call_coins_per_minute as i64,
        max_duration_secs: callee.max_call_duration,
        at: now,
    };
    execute(state, &call_id, command, who.metadata()).await?;
    reply(state, &who.user_id, &call_id).await
}

fn call_id(frame: &Value) -> Result<String, ApiError> {
    required_text(frame, "callId")
}

/// `call.accept` / `call.reject {callId}`: the callee answers a ringing call.
pub async fn answer(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
    accept: bool,
) -> Result<Value, ApiError> {
    let id = call_id(frame)?;
    member_call(state, &id, &who.user_id).await?;
    if accept {
        let open =
            calls::unfinished_of((&state.store.db).into(), &who.user_id, Unfinished::Open).await?;
        if open.iter().any(|c| c.id != id && c.status == "accepted") {
            return Err(busy("end your other call first".into()));
        }
    }
    let (by, at) = (who.user_id.clone(), state.clock.now());
    let command = if accept {
        CallCommand::Accept { by, at }
    } else {
        CallCommand::Reject { by, at }
    };
    let events = execute(state, &id, command, who.metadata()).await?;
    if !accept && !events.is_empty() {
        post_call_message(state, &id).await;
    }
    reply(state, &who.user_id, &id).await
}

/// `call.end {callId}`: either side hangs up (while ringing too: the caller gives up); the call
/// is billed before the answer, so the reply and `call.ended` show what it cost.
pub async fn end(state: &AppState, who: &Authenticated, frame: &Value) -> Result<Value, ApiError> {
    let id = call_id(frame)?;
    member_call(state, &id, &who.user_id).await?;
    let command = CallCommand::End {
        by: Some(who.user_id.clone()),
        at: state.clock.now(),
    };
    end_and_bill(state, &id, command, who.metadata()).await?;
    reply(state, &who.user_id, &id).await
}

/// Runs a command that may end the call (`End`, `Abandon`); when it did, bills the call and
/// posts its chat line. A billing failure is left to the sweep.
async fn end_and_bill(
    state: &AppState,
    call_id: &str,
    command: CallCommand,
    metadata: Metadata,
) -> Result<(), ApiError> {
    if execute(state, call_id, command, metadata).await?.is_empty() {
        return Ok(());
    }
    if let Err(error) = billing::settle(state, call_id).await {
        tracing::warn!(call_id, error = %error.message, "billing did not finish; the sweep retries");
    }
    post_call_message(state, call_id).await;
    Ok(())
}

/// Before an account is deleted: its open calls end and every call of it is billed while the
/// wallets are open (an error stops the deletion, so no charge is lost to the forfeit).
pub async fn finish_calls_of(
    state: &AppState,
    user_id: &str,
    metadata: Metadata,
) -> Result<(), ApiError> {
    let db = &state.store.db;
    for call in calls::unfinished_of(db.into(), user_id, Unfinished::OpenOrUnbilled).await? {
        if call.is_open() {
            let command = CallCommand::End {
                by: Some(user_id.to_string()),
                at: state.clock.now(),
            };
            end_and_bill(state, &call.id, command, metadata.clone()).await?;
        }
        billing::settle(state, &call.id).await?;
    }
    Ok(())
}

/// `call.signal {callId, signal}`: WebRTC signalling relayed to the other side only.
pub async fn signal(
    state: &AppState,
    who: &Authenticated,
    frame: &Value,
) -> Result<Value, ApiError> {
    let id = call_id(frame)?;
    let signal = match frame.get("signal") {
        Some(Value::Object(map)) if !map.is_empty() => map,
        _ => {
            return Err(ApiError::invalid(
                json!({"signal": "is required: an object with type, sdp and/or candidate"}),
            ))
        }
    };
    if let Some(key) = signal.keys().find(|k| !SIGNAL_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            json!({ format!("signal.{key}"): "is not a signalling field (type, sdp, candidate)" }),
        ));
    }
    for key in ["type", "sdp"] {
        if signal.get(key).is_some_and(|v| !v.is_string()) {
            return Err(ApiError::invalid(
                json!({ format!("signal.{key}"): "must be a string" }),
            ));
        }
    }
    let call = member_call(state, &id, &who.user_id).await?;
    if !call.is_open() {
        return Err(ApiError::conflict(
            "call_state",
            format!("the call is {}", call.status),
        ));
    }
    let payload = json!({ "callId": id, "signal": signal });
    state
        .store
        .projector
        .relay(
            call.other_side(&who.user_id),
            "call.signal",
            &payload,
            state.clock.now(),
        )
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Value::Null)
}

/// The chat line that records how a call went (once per call, from the caller).
pub(crate) async fn post_call_message(state: &AppState, call_id: &str) {
    let result = async {
        let Some(call) = calls::find((&state.store.db).into(), call_id).await? else {
            return Ok(());
        };
        let command = PairCommand::SendMessage {
            message_id: Uuid::new_v4().to_string(),
            sender: call.caller_id.clone(),
            text: summary(&call),
            client_id: Some(format!("call:{call_id}")),
            attachment: Some(Attachment::Call(call_id.to_string())),
            at: state.clock.now(),
        };
        execute_pair(state, &call.chat_id, command, system_metadata("calls"))
            .await
            .map(|_| ())
    }
    .await;
    if let Err(error) = result {
        // The chat may have closed meanwhile; the call itself is recorded either way.
        tracing::info!(call_id, error = %error.message, "no chat message for this call");
    }
}

/// "Audio call (2:05)", "Missed video call", ...
fn summary(call: &CallRow) -> String {
    let kind = call.kind.as_str();
    match call.status.as_str() {
        "rejected" => format!("Declined {kind} call"),
        "missed" => format!("Missed {kind} call"),
        "ended" if call.accepted_at.is_none() => format!("Canceled {kind} call"),
        _ => {
            let mut label = kind.to_string();
            if let Some(first) = label.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            let (minutes, seconds) = (call.duration_secs / 60, call.duration_secs % 60);
            format!("{label} call ({minutes}:{seconds:02})")
        }
    }
}

/// One timer round: calls that rang too long are missed, running calls past their limit or
/// abandoned by a side end (and are billed). Every instance runs it; the Call aggregate makes
/// each happen once.
pub async fn run_due(state: &AppState) -> Result<(), ApiError> {
    if let Err(error) = end_abandoned(state).await {
        tracing::warn!(error = %error.message, "abandoned calls not checked this round");
    }
    let now = state.clock.now();
    let ring_timeout = state.settings.timers.ring_timeout_secs as i64;
    let rang_before = now - Duration::seconds(ring_timeout);
    let db = &state.store.db;
    for due in calls::due(db.into(), rang_before, now, TIMER_BATCH).await? {
        let (id, command) = match due {
            Due::Miss(id) => (
                id,
                CallCommand::Miss {
                    ring_timeout_secs: ring_timeout,
                    at: now,
                },
            ),
            Due::End(id) => (id, CallCommand::End { by: None, at: now }),
        };
        let result = match command {
            CallCommand::Miss { .. } => {
                match execute(state, &id, command, system_metadata("call-timers")).await {
                    Ok(events) if !events.is_empty() => {
                        post_call_message(state, &id).await;
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            _ => end_and_bill(state, &id, command, system_metadata("call-timers")).await,
        };
        if let Err(error) = result {
            tracing::warn!(call_id = %id, error = %error.message, "call timer failed; retrying");
        }
    }
    Ok(())
}

/// Ends running calls a side has not been connected to for the grace period.
async fn end_abandoned(state: &AppState) -> Result<(), ApiError> {
    let db = &state.store.db;
    let running = calls::running(db.into()).await?;
    if running.is_empty() {
        return Ok(());
    }
    let people: Vec<String> = running
        .iter()
        .flat_map(|(_, caller, callee)| [caller.clone(), callee.clone()])
        .collect();
    // Presence that cannot be read is not taken for "gone": skip the round instead.
    let online = state.hub.online_checked(db, &people).await?;
    let observed: Vec<(String, bool)> = running
        .into_iter()
        .map(|(id, caller, callee)| (id, online.contains(&caller) && online.contains(&callee)))
        .collect();
    let now = state.clock.now();
    for (id, since) in state
        .abandoned_calls
        .observe(&observed, now, abandoned::GRACE)
    {
        let command = CallCommand::Abandon { since };
        if let Err(error) = end_and_bill(state, &id, command, system_metadata("call-timers")).await
        {
            tracing::warn!(call_id = %id, error = %error.message, "could not end an abandoned call");
        }
    }
    Ok(())
}
