//! Slow-loris defence: every request head and body of a connection is bounded in time, not
//! only the connection's first head (actix-http's `client_request_timeout` bounds that one
//! only; a later head, or a body, could be sent one byte a minute and hold a connection open
//! for ever).
//!
//! Each accepted TCP stream is wrapped in a [`Guarded`] stream before actix-http's HTTP/1
//! dispatcher gets it. The wrapper feeds every byte the dispatcher reads into a second copy of
//! actix-http's own request decoder (`h1::Codec`), so it knows where each head and each body
//! ends exactly as the dispatcher does (same parser, same framing: `Content-Length`, chunked,
//! WebSocket upgrade). While the client owes bytes it enforces:
//!
//! - **head**: a request head must be complete within `head` of its first byte;
//! - **body**: while a body is expected, the server waits for the client at most `body_gap` at a
//!   time (nginx's `client_body_timeout`: a stalled upload is cut), and in all at most
//!   `body_gap` plus one second per `body_min_rate` bytes received (Apache's `mod_reqtimeout`
//!   `MinRate`). The gap alone would let a body trickle in a byte every `body_gap` for days;
//!   the rate floor makes holding a connection cost the client bandwidth. Only time spent
//!   waiting for the client counts: while the server does not read (its handler consumes the
//!   body slowly), the client is not to blame.
//!
//! Nothing is enforced between requests: while a handler works, and while a kept-alive
//! connection is idle (actix's keep-alive timer closes those). A WebSocket stops being watched
//! once its upgrade is accepted ([`exempt`]): it has its own silence timeout.
//!
//! A broken rule makes `poll_read` fail with `TimedOut`, which ends actix's dispatcher: the
//! connection is closed without an answer (the wrapper cannot know whether a response is half
//! written on it, so it writes nothing of its own).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::h1::{Codec, Message, MessageType};
use actix_http::{HttpService, Protocol, Request, Response, ServiceConfig};
use actix_server::Server;
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::HttpRequest;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The two bounds (`TALKAMIE_REQUEST_HEAD_TIMEOUT_SECS`, `TALKAMIE_REQUEST_BODY_GAP_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request head's first byte to its end.
    pub head: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_gap: Duration,
    /// Bytes per second a body must average (after `body_gap` of credit); 0: no floor.
    pub body_min_rate: u64,
}

impl Limits {
    /// Of a body's total credit of waiting time, what is left.
    fn body_allowance(&self, received: u64, waited: Duration) -> Duration {
        if self.body_min_rate == 0 {
            return self.body_gap;
        }
        let earned = Duration::from_millis(received.saturating_mul(1000) / self.body_min_rate);
        (self.body_gap + earned).saturating_sub(waited)
    }
}

/// What else the server is built with (the rest are actix-web's `HttpServer` defaults).
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    pub limits: Limits,
    /// Idle kept-alive connections are closed after this.
    pub keep_alive: Duration,
    /// Seconds in-flight requests get to finish once the server is stopped.
    pub shutdown_grace_secs: u64,
}

/// The HTTP server on `listener`, built as actix-web's `HttpServer::listen` builds it (same
/// timeouts, graceful shutdown signal, peer and local addresses; signals disabled: the caller
/// stops it), except that each accepted stream is [`Guarded`] before the HTTP/1 dispatcher
/// reads it. `HttpServer` has no way to wrap the stream, hence the assembly by hand.
pub fn server<F, I, S, B>(
    listener: std::net::TcpListener,
    options: ServerOptions,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let builder = Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_grace_secs);
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen("talkamie-http", listener, move || {
        // Once per worker thread.
        let decoder_config = ServiceConfig::default();
        let shutdown = shutdown.clone();
        let host = addr.to_string();
        let app = app()
            .into_factory()
            .map_err(|err| err.into().error_response());
        let http = HttpService::build()
            .keep_alive(options.keep_alive)
            // actix-web's defaults: the first head within 5 s (else 408), 1 s to close.
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .on_connect_ext(on_connect)
            // `AppConfig::new`, which `HttpServer` uses, is public only under this name.
            .finish(map_config(app, move |()| {
                AppConfig::__priv_test_new(false, host.clone(), addr)
            }));
        fn_service(move |io: TcpStream| {
            // Pushes and answers are small frames written as they come: without this, Nagle's
            // algorithm holds one back until the client's delayed ACK (~40 ms).
            let _ = io.set_nodelay(true);
            let peer = io.peer_addr().ok();
            let io = Guarded::new(io, options.limits, decoder_config.clone());
            async move { Ok::<_, DispatchError>((io, Protocol::Http1, peer)) }
        })
        .and_then(http)
    })?;
    Ok(builder.run())
}

/// Put in each connection's data (`HttpRequest::conn_data`): lets a route end the watch.
#[derive(Clone)]
struct Exemption(Rc<Cell<bool>>);

/// Stops watching the connection of `req`: the WebSocket route calls it when it accepts the
/// upgrade, so the socket's frames are not mistaken for a slow request body. A no-op on a
/// connection that is not [`Guarded`].
pub fn exempt(req: &HttpRequest) {
    if let Some(exemption) = req.conn_data::<Exemption>() {
        exemption.0.set(true);
    }
}

/// For `HttpServiceBuilder::on_connect_ext`: makes [`exempt`] reach this connection.
fn on_connect<T>(io: &Guarded<T>, data: &mut actix_http::Extensions) {
    data.insert(Exemption(io.exempt.clone()));
}

/// An accepted stream whose reads are watched (see the module notes).
pub struct Guarded<T> {
    io: T,
    /// `None` once exempt (an accepted WebSocket): reads pass through untouched.
    watch: Option<Box<Watch>>,
    exempt: Rc<Cell<bool>>,
}

impl<T> Guarded<T> {
    /// `config` only feeds the shadow decoder (which reads none of it); one per worker thread
    /// is enough, it is cheap to clone.
    pub fn new(io: T, limits: Limits, config: ServiceConfig) -> Self {
        Guarded {
            io,
            watch: Some(Box::new(Watch {
                limits,
                codec: Codec::new(config),
                unread: BytesMut::new(),
                phase: Phase::Idle,
                timer: None,
                waiting_since: None,
                body_received: 0,
                body_waited: Duration::ZERO,
                broken: None,
            })),
            exempt: Rc::new(Cell::new(false)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: nothing owed.
    Idle,
    /// A head has started; `timer` ends at its deadline.
    Head,
    /// A body (or an upgrade's stream, until the route exempts it) is expected.
    Body,
    /// The decoder refused the input: actix answers 400 and closes; `timer` is a backstop.
    Refused,
}

struct Watch {
    limits: Limits,
    /// actix-http's request decoder, fed the same bytes as the real one.
    codec: Codec,
    /// Bytes the decoder has not consumed yet (a partial head or chunk-size line).
    unread: BytesMut,
    phase: Phase,
    /// Made on first need, then reset: most connections never need one.
    timer: Option<Pin<Box<Sleep>>>,
    /// In `Body`: since when the server waits for the client (from the first read that found
    /// nothing); `timer` is armed for this wait.
    waiting_since: Option<Instant>,
    /// Payload bytes of the current body, and the time spent waiting for them.
    body_received: u64,
    body_waited: Duration,
    /// The rule that ended the connection.
    broken: Option<&'static str>,
}

impl Watch {
    fn arm(&mut self, after: Duration) {
        self.arm_at(Instant::now() + after);
    }

    fn arm_at(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Follows the requests through `bytes`, just read from the client.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.phase == Phase::Refused {
            return;
        }
        self.unread.extend_from_slice(bytes);
        // Whatever these bytes are, the wait for the client (if any) is over.
        if let Some(since) = self.waiting_since.take() {
            self.body_waited += since.elapsed();
        }
        loop {
            match self.codec.decode(&mut self.unread) {
                Ok(Some(Message::Item(_head))) => {
                    self.phase = if self.codec.message_type() == MessageType::None {
                        Phase::Idle
                    } else {
                        self.body_received = 0;
                        self.body_waited = Duration::ZERO;
                        Phase::Body
                    };
                }
                Ok(Some(Message::Chunk(Some(chunk)))) => {
                    self.body_received += chunk.len() as u64;
                }
                Ok(Some(Message::Chunk(None))) => self.phase = Phase::Idle,
                Ok(None) => break,
                Err(_) => {
                    self.phase = Phase::Refused;
                    self.unread = BytesMut::new();
                    self.arm(self.limits.head);
                    return;
                }
            }
        }
        // Bytes left between requests start the next head (pipelined, or the start of one).
        if self.phase == Phase::Idle && !self.unread.is_empty() {
            self.phase = Phase::Head;
            self.arm(self.limits.head);
        }
    }

    /// Called when a read found nothing: `Ready(rule)` once the client is too late.
    fn poll_late(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        let rule = match self.phase {
            Phase::Idle => return Poll::Pending,
            Phase::Head | Phase::Refused => "head",
            Phase::Body => {
                if self.waiting_since.is_none() {
                    let now = Instant::now();
                    self.waiting_since = Some(now);
                    let left = self
                        .limits
                        .body_allowance(self.body_received, self.body_waited);
                    self.arm_at(now + left.min(self.limits.body_gap));
                }
                "body"
            }
        };
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx).map(|()| rule),
            None => Poll::Pending,
        }
    }
}

fn timed_out(rule: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client was too slow sending a request {rule}"),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.exempt.get() {
            this.watch = None;
        }
        let Some(watch) = this.watch.as_deref_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if let Some(rule) = watch.broken {
            return Poll::Ready(Err(timed_out(rule)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                watch.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match watch.poll_late(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(rule) => {
                    watch.broken = Some(rule);
                    metrics::counter!(crate::metrics::HTTP_SLOW_CLIENTS_CLOSED, "rule" => rule)
                        .increment(1);
                    tracing::debug!(rule, "closing a connection: request {rule} too slow");
                    Poll::Ready(Err(timed_out(rule)))
                }
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits {
        head: Duration::from_millis(400),
        body_gap: Duration::from_millis(300),
        // 100 ms more of waiting allowed per byte received.
        body_min_rate: 10,
    };
    /// Long enough past either limit that a rule would have fired.
    const WELL_PAST: Duration = Duration::from_millis(1200);

    #[derive(Debug, PartialEq, Eq)]
    enum Read {
        Bytes(usize),
        TimedOut,
        /// Nothing to read, and no rule broken, for the whole wait.
        Waiting,
    }

    /// A guarded server end and the client end.
    fn pair() -> (Guarded<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        (
            Guarded::new(server, LIMITS, ServiceConfig::default()),
            client,
        )
    }

    /// What the server reads within `wait` (as the dispatcher does: everything available).
    async fn read(server: &mut Guarded<DuplexStream>, wait: Duration) -> Read {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(wait, server.read(&mut buf)).await {
            Err(_) => Read::Waiting,
            Ok(Ok(n)) => Read::Bytes(n),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Read::TimedOut,
            Ok(Err(e)) => panic!("unexpected error {e}"),
        }
    }

    async fn send(client: &mut DuplexStream, server: &mut Guarded<DuplexStream>, bytes: &[u8]) {
        client.write_all(bytes).await.expect("write");
        assert_eq!(read(server, WELL_PAST).await, Read::Bytes(bytes.len()));
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

    #[actix_web::test]
    async fn whole_requests_then_silence_are_left_alone() {
        let (mut server, mut client) = pair();
        // A silent new connection: actix's own first-head timer covers it, not this.
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
        send(&mut client, &mut server, GET).await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
        // A body sent whole, then the handler takes its time.
        send(
            &mut client,
            &mut server,
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{\"a\"",
        )
        .await;
        send(&mut client, &mut server, b":1}").await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
    }

    #[actix_web::test]
    async fn a_later_head_sent_slowly_times_out() {
        let (mut server, mut client) = pair();
        send(&mut client, &mut server, GET).await;
        let started = Instant::now();
        // One byte every 100 ms: the head keeps moving, but is never done in time.
        let outcome = loop {
            send(&mut client, &mut server, b"G").await;
            match read(&mut server, Duration::from_millis(100)).await {
                Read::Waiting => {}
                other => break other,
            }
            assert!(started.elapsed() < WELL_PAST, "never timed out");
        };
        assert_eq!(outcome, Read::TimedOut);
        assert!(started.elapsed() >= LIMITS.head);
        // And it stays broken.
        assert_eq!(read(&mut server, WELL_PAST).await, Read::TimedOut);
    }

    #[actix_web::test]
    async fn a_stalled_body_times_out_a_moving_one_does_not() {
        let (mut server, mut client) = pair();
        send(
            &mut client,
            &mut server,
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n12",
        )
        .await;
        // Moving: 3 bytes every 150 ms (20 bytes a second, over the floor of 10), 900 ms in all.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            send(&mut client, &mut server, b"345").await;
        }
        let stalled = Instant::now();
        assert_eq!(read(&mut server, WELL_PAST).await, Read::TimedOut);
        assert!(stalled.elapsed() >= LIMITS.body_gap);
    }

    #[actix_web::test]
    async fn a_body_trickled_below_the_rate_floor_times_out() {
        let (mut server, mut client) = pair();
        send(
            &mut client,
            &mut server,
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n",
        )
        .await;
        // A byte every 200 ms: each pause under the 300 ms gap, but 5 bytes a second against a
        // floor of 10. After n bytes the server waited ~200n ms for 300 + 100n of credit.
        let started = Instant::now();
        let outcome = loop {
            send(&mut client, &mut server, b"x").await;
            match read(&mut server, Duration::from_millis(200)).await {
                Read::Waiting => {}
                other => break other,
            }
            assert!(started.elapsed() < 2 * WELL_PAST, "never timed out");
        };
        assert_eq!(outcome, Read::TimedOut);
        assert!(started.elapsed() >= LIMITS.body_gap);
    }

    #[actix_web::test]
    async fn chunked_bodies_and_pipelined_heads_are_followed() {
        let (mut server, mut client) = pair();
        let head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        send(&mut client, &mut server, head).await;
        send(&mut client, &mut server, b"3\r\nabc\r\n").await;
        // The last chunk ends the body: silence after it is the handler's time.
        send(&mut client, &mut server, b"0\r\n\r\n").await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
        // A whole request and the start of the next in one read: the next head is owed.
        let mut both = GET.to_vec();
        both.extend_from_slice(b"GET /he");
        send(&mut client, &mut server, &both).await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::TimedOut);
    }

    #[actix_web::test]
    async fn garbage_is_cut_off_too() {
        let (mut server, mut client) = pair();
        // actix answers 400 and closes; if it read on, the backstop would end it.
        send(&mut client, &mut server, b"\x00\x01 not http\r\n\r\n").await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::TimedOut);
    }

    #[actix_web::test]
    async fn an_exempt_connection_is_no_longer_watched() {
        let (mut server, mut client) = pair();
        let upgrade = b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
                        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        send(&mut client, &mut server, upgrade).await;
        // Until the route accepts it, the upgrade's stream is a body like any other.
        assert_eq!(read(&mut server, WELL_PAST).await, Read::TimedOut);

        let (mut server, mut client) = pair();
        send(&mut client, &mut server, upgrade).await;
        server.exempt.set(true);
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
        send(&mut client, &mut server, b"\x89\x80abcd").await;
        assert_eq!(read(&mut server, WELL_PAST).await, Read::Waiting);
        assert!(server.watch.is_none());
    }
}
