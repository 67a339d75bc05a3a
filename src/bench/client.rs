//! The bench's view of the API: a JSON HTTP client, users, connected pairs, verified
//! volunteers, and authenticated WebSocket connections.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type WsSink = SplitSink<WsStream, Message>;
pub type WsSource = SplitStream<WsStream>;

/// Sign-ups run this many at a time (each hashes a password on the server).
const SETUP_CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub email: String,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(20))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// The WebSocket address of this server.
    pub fn ws_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        format!("{rest}/v1/ws")
    }

    /// A request whose answer must be a success envelope; returns its `data`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| path.to_string())?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!(
                "{path}: {status} {}",
                text.chars().take(300).collect::<String>()
            );
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(value.get("data").cloned().unwrap_or(Value::Null))
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn sign_up(&self, kind: &str) -> anyhow::Result<User> {
        let email = format!("bench-{kind}-{}@example.com", uuid::Uuid::new_v4().simple());
        let data = self
            .post(
                "/v1/auth/sign-up",
                None,
                json!({"email": email, "password": "bench-password", "name": "Bench User",
                       "type": kind}),
            )
            .await?;
        user_of(&data, email)
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<User> {
        let data = self
            .post(
                "/v1/auth/sign-in",
                None,
                json!({"email": email, "password": password}),
            )
            .await?;
        user_of(&data, email.to_string())
    }

    /// `count` new users of `kind`, a few sign-ups at a time.
    pub async fn sign_up_many(&self, kind: &str, count: usize) -> anyhow::Result<Vec<User>> {
        futures_util::stream::iter(0..count)
            .map(|_| self.sign_up(kind))
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// The senior asks, the volunteer accepts; returns the chat id.
    pub async fn connect(&self, senior: &User, volunteer: &User) -> anyhow::Result<String> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/user/{}/connection", volunteer.id),
            Some(&senior.token),
            None,
        )
        .await?;
        let data = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/user/{}/connection/accept", senior.id),
                Some(&volunteer.token),
                None,
            )
            .await?;
        data["chat"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("accepting a connection gave no chat id: {data}"))
    }

    /// `count` seniors each connected with a volunteer of their own: `(senior, volunteer, chat)`.
    pub async fn pairs(&self, count: usize) -> anyhow::Result<Vec<(User, User, String)>> {
        futures_util::stream::iter(0..count)
            .map(|_| async {
                let senior = self.sign_up("senior").await?;
                let volunteer = self.sign_up("volunteer").await?;
                let chat = self.connect(&senior, &volunteer).await?;
                Ok::<_, anyhow::Error>((senior, volunteer, chat))
            })
            .buffer_unordered(SETUP_CONCURRENCY / 2)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Buys `coins` through the sandbox checkout: a payment session, then Pay (which sends
    /// the signed webhook that credits the wallet).
    pub async fn top_up_session(&self, user: &User, coins: i64) -> anyhow::Result<String> {
        let data = self
            .post(
                "/v1/web/finance/top-up/session",
                Some(&user.token),
                json!({"coins": coins}),
            )
            .await?;
        data["session"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no session id: {data}"))
    }

    pub async fn pay(&self, session: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/sandbox/checkout/{session}/pay", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("sandbox pay: {}", response.status());
        }
        Ok(())
    }

    /// Makes a new volunteer verified: certificate upload, profile, email code (read from the
    /// server's mail directory), and both admin verification steps; then opens the whole week.
    pub async fn verified_volunteer(&self, admin: &User, mail_dir: &Path) -> anyhow::Result<User> {
        let volunteer = self.sign_up("volunteer").await?;
        let token = Some(volunteer.token.as_str());
        let signed = self
            .post(
                "/v1/signed/urls",
                token,
                json!({"type": "user", "items": {"cert.pdf":
                    {"mimeType": "application/pdf", "objectType": "certificate"}}}),
            )
            .await?;
        let upload = signed["items"]["cert.pdf"]["uploadUrl"]
            .as_str()
            .ok_or_else(|| anyhow!("no upload url: {signed}"))?;
        let response = self
            .http
            .put(upload)
            .header("content-type", "application/pdf")
            .body(b"%PDF-1.4\n".to_vec())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("certificate upload: {}", response.status());
        }
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/user/{}", volunteer.id),
            token,
            Some(json!({"name": "Bench Amie", "dob": "1990-02-03",
                        "specialization": "geriatric-nursing", "licenseId": "GN-1",
                        "certificate": "cert.pdf", "certificateState": "CA"})),
        )
        .await?;
        self.post(
            "/v1/otp",
            None,
            json!({"email": volunteer.email, "purpose": "verify-email"}),
        )
        .await?;
        let code = mailed_code(mail_dir, &volunteer.email).await?;
        self.post(
            "/v1/otp/verify",
            None,
            json!({"email": volunteer.email, "code": code, "purpose": "verify-email"}),
        )
        .await?;
        for step in ["admin", "background"] {
            self.post(
                &format!("/v1/admin/user/{}/verification", volunteer.id),
                Some(&admin.token),
                json!({"step": step, "status": "complete"}),
            )
            .await?;
        }
        let day = json!([{"start": "00:00", "end": "23:30"}]);
        self.post(
            "/v1/availability/weekly",
            token,
            json!({"sun": day, "mon": day, "tue": day, "wed": day, "thu": day, "fri": day,
                   "sat": day}),
        )
        .await?;
        Ok(volunteer)
    }
}

fn user_of(data: &Value, email: String) -> anyhow::Result<User> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    Ok(User {
        id: text(&data["user"]["id"]).ok_or_else(|| anyhow!("no user id: {data}"))?,
        token: text(&data["tokens"]["access"]).ok_or_else(|| anyhow!("no token: {data}"))?,
        email,
    })
}

/// The six-digit code of the newest mail to `email` (the mail is written right after the
/// request answers, so look a few times).
async fn mailed_code(mail_dir: &Path, email: &str) -> anyhow::Result<String> {
    const LEAD: &str = "code to verify your email: ";
    for _ in 0..50 {
        if let Ok(entries) = std::fs::read_dir(mail_dir) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if text.contains(email) {
                    if let Some(rest) = text.split(LEAD).nth(1) {
                        return Ok(rest.chars().take(6).collect());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no verification mail to {email} in {}", mail_dir.display())
}

/// Opens a socket and authenticates it with the first frame (within 30 s: a socket that never
/// opens is a failure to count, not a hang).
pub async fn open_socket(ws_url: &str, token: &str) -> anyhow::Result<WsStream> {
    tokio::time::timeout(Duration::from_secs(30), open_socket_now(ws_url, token))
        .await
        .map_err(|_| anyhow!("opening and authenticating a socket took over 30 s"))?
}

async fn open_socket_now(ws_url: &str, token: &str) -> anyhow::Result<WsStream> {
    // Small buffers: the bench holds 20,000 sockets next to the server (tungstenite's default
    // read buffer is 128 KiB each); frames here are a few KiB at most.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    ws.send(Message::text(
        json!({"action": "authenticate", "token": token, "requestId": "auth"}).to_string(),
    ))
    .await?;
    loop {
        let frame = next_json(&mut ws).await?;
        if frame["requestId"] == json!("auth") {
            if frame["success"] != json!(true) {
                bail!("authenticate refused: {frame}");
            }
            return Ok(ws);
        }
    }
}

/// The next JSON text frame (pings are answered by tungstenite itself).
pub async fn next_json<S>(stream: &mut S) -> anyhow::Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    Ok(serde_json::from_str(&next_text(stream).await?)?)
}

/// The next text frame.
async fn next_text<S>(stream: &mut S) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => bail!("socket closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("socket closed"),
        }
    }
}

/// Sends a frame and waits for the reply with the same `requestId` (pushes are skipped).
pub async fn request(ws: &mut WsStream, frame: Value) -> anyhow::Result<Value> {
    let id = frame["requestId"].clone();
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let reply = next_json(ws).await?;
        if reply.get("position").is_none() && reply["requestId"] == id {
            return Ok(reply);
        }
    }
}

/// Enough of a frame to match a reply and judge it, without building its `data` (the load
/// tool shares the machine with the server: its own parsing must stay cheap).
#[derive(serde::Deserialize)]
struct ReplyHead {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
    success: Option<bool>,
    position: Option<i64>,
}

/// Sends `frame` (which carries `"requestId": id`) and returns whether its reply succeeded.
pub async fn request_succeeds(ws: &mut WsStream, frame: String, id: &str) -> anyhow::Result<bool> {
    ws.send(Message::text(frame)).await?;
    loop {
        let head: ReplyHead = serde_json::from_str(&next_text(ws).await?)?;
        if head.position.is_none() && head.request_id.as_deref() == Some(id) {
            return Ok(head.success == Some(true));
        }
    }
}

/// Reads `VmRSS` of a local process, in KiB.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}
