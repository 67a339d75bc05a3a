//! One WebSocket connection: authentication (first frame, `Authorization` header or `?token=`),
//! `ping`, the actions, timeouts (10 s unauthenticated, 60 s silent), the 64 KiB frame limit,
//! a per-socket rate limit, and delivery of the user's pushes (with replay after `since`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use chrono::{SecondsFormat, Utc};
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_projections::feed;
use talkamie_projections::profiles::FILE_URL_SCHEME;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::frames::{self, FrameId, PushFrame, Reply};
use crate::auth::extractor::{authenticate, bearer};
use crate::auth::Authenticated;
use crate::calls;
use crate::http::auth::extended_user;
use crate::http::envelope::ApiError;
use crate::http::profile::ProfileBody;
use crate::http::users::update_profile;
use crate::http::{alerts, chats, support};
use crate::state::AppState;

/// Frames (and reassembled fragmented messages) above this are refused.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Refused frames in a row before a flooding socket is closed.
const MAX_REFUSED_IN_A_ROW: u32 = 20;
const REPLAY_PAGE: i64 = 500;
/// Pushes sent in one turn of a socket's loop before it looks at incoming frames again.
const PUSHES_AT_ONCE: usize = 256;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    since: Option<i64>,
}

/// `GET /v1/ws`: upgrades to a WebSocket. A token in the header or query is checked before the
/// upgrade (401 in the envelope when it is bad).
pub async fn route(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<WsQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)
        .map(str::to_string)
        .or_else(|| query.token.clone());
    let pre_authenticated = match token {
        Some(token) => Some(authenticate(&state, &token).await?),
        None => None,
    };
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let socket = Socket::new(state.into_inner(), session);
    actix_web::rt::spawn(socket.run(stream, pre_authenticated, query.since));
    // From here the connection carries frames, under the socket's own timeouts: the HTTP
    // rules for slow request heads and bodies no longer apply to it.
    crate::http::slow_clients::exempt(&req);
    Ok(response)
}

struct Feed {
    who: Authenticated,
    socket_id: u64,
    rx: mpsc::Receiver<Arc<PushFrame>>,
    /// Highest position sent, so a row that arrives both by replay and live is sent once.
    last_sent: i64,
}

enum Flow {
    Continue,
    Close(CloseReason),
}

fn close(code: CloseCode, description: &str) -> Flow {
    Flow::Close(CloseReason {
        code,
        description: Some(description.to_string()),
    })
}

struct Socket {
    state: Arc<AppState>,
    session: Session,
    feed: Option<Feed>,
    limiter: DefaultDirectRateLimiter,
    refused_in_a_row: u32,
    last_heard: Instant,
    me: Option<CachedMe>,
}

/// The last `user.me` answer of this socket. It is given again while no event has been
/// projected since (every field comes from the read models, which only change when an event
/// is projected) and for at most `ME_FRESH_FOR`, which bounds what depends on the clock alone
/// (the calls of the local day, today's availability).
struct CachedMe {
    projected: talkamie_projections::Checkpoint,
    rendered: Instant,
    data: Value,
}

const ME_FRESH_FOR: Duration = Duration::from_secs(1);

impl Socket {
    fn new(state: Arc<AppState>, session: Session) -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let per_second = state.settings.ws_frames_per_second;
        let limiter = RateLimiter::direct(
            Quota::per_second(n(per_second)).allow_burst(n(per_second.saturating_mul(2))),
        );
        Socket {
            state,
            session,
            feed: None,
            limiter,
            refused_in_a_row: 0,
            last_heard: Instant::now(),
            me: None,
        }
    }

    async fn run(
        mut self,
        mut stream: AggregatedMessageStream,
        pre_authenticated: Option<Authenticated>,
        since: Option<i64>,
    ) {
        let opened = Instant::now();
        let auth_timeout = Duration::from_secs(self.state.settings.ws_auth_timeout_secs);
        let idle_timeout = Duration::from_secs(self.state.settings.ws_idle_timeout_secs);
        let mut shutdown = self.state.hub.shutdown_signal();
        if let Some(who) = pre_authenticated {
            if let Err(reason) = Box::pin(self.start_feed(who, since)).await {
                return self.finish(Some(reason)).await;
            }
        }
        let reason = loop {
            let idle_deadline = self.last_heard + idle_timeout;
            let deadline = match self.feed {
                Some(_) => idle_deadline,
                None => idle_deadline.min(opened + auth_timeout),
            };
            let flow = tokio::select! {
                _ = shutdown.changed() => close(CloseCode::Away, "server shutting down"),
                // Boxed: the work of a frame or a push lives on the heap only while it runs,
                // so an idle socket's task stays small (20,000 of them on one instance).
                message = stream.next() => Box::pin(self.on_message(message)).await,
                row = next_row(&mut self.feed) => match row {
                    Some(row) => Box::pin(self.send_pushes(row)).await,
                    None => close(CloseCode::Again, "too far behind; reconnect with since"),
                },
                _ = tokio::time::sleep_until(deadline) => match self.feed {
                    None if Instant::now() >= opened + auth_timeout =>
                        close(CloseCode::Policy, "not authenticated in time"),
                    _ => close(CloseCode::Normal, "idle for too long"),
                },
            };
            if let Flow::Close(reason) = flow {
                break Some(reason);
            }
        };
        self.finish(reason).await;
    }

    /// `extended_user` of this socket's user, from the cache when nothing changed since.
    async fn me(&mut self, who: &Authenticated) -> Result<Value, ApiError> {
        let projected = self.state.store.projector.applied();
        if let Some(cached) = &self.me {
            if cached.projected == projected && cached.rendered.elapsed() < ME_FRESH_FOR {
                return Ok(cached.data.clone());
            }
        }
        let rendered = Instant::now();
        let data = extended_user(&self.state, &who.user_id).await?;
        self.me = Some(CachedMe {
            projected,
            rendered,
            data: data.clone(),
        });
        Ok(data)
    }

    async fn finish(mut self, reason: Option<CloseReason>) {
        if let Some(feed) = self.feed.take() {
            self.state.hub.unregister(&feed.who.user_id, feed.socket_id);
        }
        let _ = self.session.close(reason).await;
    }

    async fn on_message(
        &mut self,
        message: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
    ) -> Flow {
        match message {
            None | Some(Ok(AggregatedMessage::Close(_))) => close(CloseCode::Normal, "bye"),
            Some(Ok(AggregatedMessage::Text(text))) => {
                self.last_heard = Instant::now();
                self.on_text(&text).await
            }
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                self.last_heard = Instant::now();
                self.send_raw_pong(&bytes).await
            }
            Some(Ok(AggregatedMessage::Pong(_))) => {
                self.last_heard = Instant::now();
                Flow::Continue
            }
            Some(Ok(AggregatedMessage::Binary(_))) => {
                self.last_heard = Instant::now();
                let error =
                    ApiError::bad_request("frames are JSON text; binary frames are not accepted");
                self.send_text(frames::error(&FrameId::default(), &error))
                    .await
            }
            Some(Err(error)) if is_too_large(&error) => {
                let error = ApiError::new(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
                );
                let _ = self
                    .send_text(frames::error(&FrameId::default(), &error))
                    .await;
                close(CloseCode::Size, "frame too large")
            }
            Some(Err(error)) => close(CloseCode::Protocol, &error.to_string()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        if self.limiter.check().is_err() {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row > MAX_REFUSED_IN_A_ROW {
                return close(CloseCode::Policy, "rate limited");
            }
            let error = ApiError::rate_limited(1);
            return self
                .send_text(frames::error(&FrameId::default(), &error))
                .await;
        }
        self.refused_in_a_row = 0;
        let frames::Incoming { id, action, frame } = match frames::parse(text) {
            Ok(incoming) => incoming,
            Err(refused) => {
                let (id, error) = *refused;
                return self.send_text(frames::error(&id, &error)).await;
            }
        };
        match self.dispatch(&action, frame).await {
            Ok(Some(data)) => self.send_text(frames::reply(&id, data)).await,
            Ok(None) => Flow::Continue,
            Err(error) => self.send_text(frames::error(&id, &error)).await,
        }
    }

    /// Runs one action. `Ok(None)` means the reply was already sent (authenticate + replay).
    async fn dispatch(&mut self, action: &str, frame: Value) -> Result<Option<Reply>, ApiError> {
        match action {
            "ping" => {
                let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
                return Ok(Some(json!({ "pong": true, "serverTime": now }).into()));
            }
            "authenticate" => return self.on_authenticate(&frame).await.map(|_| None),
            _ => {}
        }
        let Some(feed) = &self.feed else {
            return Err(ApiError::unauthenticated("authenticate first"));
        };
        let who = feed.who.clone();
        match action {
            "user.me" => Ok(Some(self.me(&who).await?.into())),
            "user.get" => {
                let user_id = frame
                    .get("userId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid(json!({ "userId": "is required" })))?;
                let reader = crate::http::users::me(&self.state, &who).await?;
                Ok(Some(
                    crate::http::users::user_as_seen_by(&self.state, &reader, user_id)
                        .await?
                        .into(),
                ))
            }
            "user.update" => {
                let body: ProfileBody = serde_json::from_value(frame)
                    .map_err(|e| ApiError::invalid(json!({ "frame": e.to_string() })))?;
                Ok(Some(update_profile(&self.state, &who, &body).await?.into()))
            }
            "chat.message.send" => Ok(Some(
                chats::send_message(&self.state, &who, &frame).await?.into(),
            )),
            "chat.messages.get" => {
                let (data, pagination) = chats::get_messages(&self.state, &who, &frame).await?;
                Ok(Some(Reply {
                    data,
                    pagination: Some(pagination),
                }))
            }
            "chat.messages.update" => Ok(Some(
                chats::update_messages(&self.state, &who, &frame)
                    .await?
                    .into(),
            )),
            "call.start" => Ok(Some(calls::start(&self.state, &who, &frame).await?.into())),
            "call.accept" => Ok(Some(
                calls::answer(&self.state, &who, &frame, true).await?.into(),
            )),
            "call.reject" => Ok(Some(
                calls::answer(&self.state, &who, &frame, false)
                    .await?
                    .into(),
            )),
            "call.end" => Ok(Some(calls::end(&self.state, &who, &frame).await?.into())),
            "call.signal" => Ok(Some(calls::signal(&self.state, &who, &frame).await?.into())),
            "support.message.send" => Ok(Some(
                support::send_message(&self.state, &who, &frame)
                    .await?
                    .into(),
            )),
            "support.messages.get" => {
                let (data, pagination) = support::get_messages(&self.state, &who, &frame).await?;
                Ok(Some(Reply {
                    data,
                    pagination: Some(pagination),
                }))
            }
            "support.messages.update" => Ok(Some(
                support::update_messages(&self.state, &who, &frame)
                    .await?
                    .into(),
            )),
            "alerts.update" => Ok(Some(
                alerts::update_alerts(&self.state, &who, &frame)
                    .await?
                    .into(),
            )),
            _ => Err(ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "unknown_action",
                format!("unknown action {action}"),
            )),
        }
    }

    async fn on_authenticate(&mut self, frame: &Value) -> Result<(), ApiError> {
        if self.feed.is_some() {
            return Err(ApiError::conflict(
                "already_authenticated",
                "this socket is already authenticated",
            ));
        }
        let token = frame.get("token").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(json!({ "token": "is required (an access token)" }))
        })?;
        let since = match frame.get("since") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|p| *p >= 0).ok_or_else(|| {
                ApiError::invalid(
                    json!({ "since": "must be a feed position (a whole number >= 0)" }),
                )
            })?),
        };
        let who = authenticate(&self.state, token).await?;
        let user = extended_user(&self.state, &who.user_id).await?;
        let id = FrameId {
            action: json!("authenticate"),
            request_id: frame.get("requestId").cloned().unwrap_or(Value::Null),
        };
        // Register before replying, so no push written from now on can be missed; the reply
        // then shows this user online.
        let mut user = user;
        user["online"] = json!(true);
        if let Err(reason) = self
            .start_feed_with_reply(who, since, Some(frames::reply(&id, user.into())))
            .await
        {
            let _ = self.session.clone().close(Some(reason)).await;
        }
        Ok(())
    }

    async fn start_feed(
        &mut self,
        who: Authenticated,
        since: Option<i64>,
    ) -> Result<(), CloseReason> {
        self.start_feed_with_reply(who, since, None).await
    }

    /// Registers the socket with the hub, sends `reply` (if any), then replays the rows after
    /// `since`; live rows already queued are then deduplicated by position.
    async fn start_feed_with_reply(
        &mut self,
        who: Authenticated,
        since: Option<i64>,
        reply: Option<String>,
    ) -> Result<(), CloseReason> {
        let (socket_id, rx) = self.state.hub.register(&who.user_id);
        let user_id = who.user_id.clone();
        self.feed = Some(Feed {
            who,
            socket_id,
            rx,
            last_sent: since.unwrap_or(0),
        });
        if let Some(reply) = reply {
            if let Flow::Close(reason) = self.send_text(reply).await {
                return Err(reason);
            }
        }
        let Some(mut after) = since else {
            return Ok(());
        };
        loop {
            let rows = feed::read_user_after(&self.state.store.db, &user_id, after, REPLAY_PAGE)
                .await
                .map_err(|_| CloseReason {
                    code: CloseCode::Again,
                    description: Some("the database is unavailable; reconnect".into()),
                })?;
            let count = rows.len() as i64;
            for row in rows {
                after = row.position;
                if let Flow::Close(reason) = self.send_push(&PushFrame::from_row(&row)).await {
                    return Err(reason);
                }
            }
            if count < REPLAY_PAGE {
                return Ok(());
            }
        }
    }

    /// Sends `first` and every push already queued behind it (up to `PUSHES_AT_ONCE`). The
    /// loop takes one branch per turn and a frame's turn lasts as long as its command, so one
    /// push per turn fell behind under load: pushes queued until the socket was dropped.
    async fn send_pushes(&mut self, first: Arc<PushFrame>) -> Flow {
        let mut next = Some(first);
        let mut sent = 0;
        while let Some(row) = next.take() {
            if let Flow::Close(reason) = self.send_push(&row).await {
                return Flow::Close(reason);
            }
            sent += 1;
            if sent < PUSHES_AT_ONCE {
                next = self.feed.as_mut().and_then(|feed| feed.rx.try_recv().ok());
            }
        }
        Flow::Continue
    }

    async fn send_push(&mut self, push: &PushFrame) -> Flow {
        let Some(feed) = &mut self.feed else {
            return Flow::Continue;
        };
        if push.position <= feed.last_sent {
            return Flow::Continue;
        }
        feed.last_sent = push.position;
        if push.action == feed::SESSION_ENDED {
            // Only the sockets of the ended session hear of it, and then they close.
            if push.data()["sessionId"].as_str() != Some(feed.who.session_id.as_str()) {
                return Flow::Continue;
            }
            if let Flow::Close(reason) = self.send_text(push.text.clone()).await {
                return Flow::Close(reason);
            }
            return close(CloseCode::Policy, "session ended");
        }
        if push.text.contains(FILE_URL_SCHEME) {
            let mut data = push.data();
            self.state.files.sign_urls(&mut data);
            return self.send_text(push.with_data(&data)).await;
        }
        self.send_text(push.text.clone()).await
    }

    async fn send_text(&mut self, text: String) -> Flow {
        match self.session.text(text).await {
            Ok(()) => Flow::Continue,
            Err(_) => close(CloseCode::Normal, "closed"),
        }
    }

    async fn send_raw_pong(&mut self, bytes: &[u8]) -> Flow {
        match self.session.pong(bytes).await {
            Ok(()) => Flow::Continue,
            Err(_) => close(CloseCode::Normal, "closed"),
        }
    }
}

/// The next live row for an authenticated socket; never resolves before authentication.
async fn next_row(feed: &mut Option<Feed>) -> Option<Arc<PushFrame>> {
    match feed {
        Some(feed) => feed.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A frame over the limit, or fragments that add up to more. actix-ws reports the latter only
/// as an I/O error with this text; without this, such a message was closed as a protocol
/// error (1002) instead of being refused like a single oversized frame (413, then 1009).
fn is_too_large(error: &actix_ws::ProtocolError) -> bool {
    match error {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(e) => e.to_string().contains("maximum continuation size"),
        _ => false,
    }
}
