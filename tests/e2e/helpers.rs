//! The test harness: a real `talkamie serve` process per test (own port, own data dir, own
//! PostgreSQL database), a JSON HTTP client and a WebSocket client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use talkamie_projections::{Db, Projection};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `sqlite` and `postgres` tests that run `$name(backend)`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
}

/// A store for one test: a temp data dir, plus a fresh PostgreSQL database when asked.
pub struct TestDb {
    pub data_dir: tempfile::TempDir,
    pub database_url: Option<String>,
}

impl TestDb {
    /// `None` when the PostgreSQL variant cannot run because `TEST_DATABASE_URL` is unset.
    /// With it set, an unreachable server fails the test (never a silent skip).
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
                    eprintln!("TEST_DATABASE_URL is unset: skipping the PostgreSQL variant");
                    return None;
                };
                Some(create_database(&admin_url).await)
            }
        };
        Some(TestDb {
            data_dir,
            database_url,
        })
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "TALKAMIE_DATA_DIR".to_string(),
            self.data_dir.path().display().to_string(),
        )];
        if let Some(url) = &self.database_url {
            env.push(("DATABASE_URL".to_string(), url.clone()));
        }
        env
    }

    pub fn mail_dir(&self) -> std::path::PathBuf {
        self.data_dir.path().join("mail")
    }

    /// A direct connection to the test's database (for store-level checks).
    pub async fn connect(&self) -> talkamie_projections::Db {
        let settings = talkamie::config::Settings::from_map(&self.env().into_iter().collect())
            .expect("settings");
        talkamie::store::connect(&settings).await.expect("connect")
    }
}

/// Drops the test's PostgreSQL database, so runs do not pile up databases on the server.
/// A `Server` borrows its `TestDb`, so it has been killed by now; `WITH (FORCE)` ends any
/// connection the test itself left open.
impl Drop for TestDb {
    fn drop(&mut self) {
        let (Some(url), Ok(admin_url)) =
            (self.database_url.take(), std::env::var("TEST_DATABASE_URL"))
        else {
            return;
        };
        let Some((_, name)) = url.rsplit_once('/') else {
            return;
        };
        let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a small runtime does the work, and the test waits for it.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&statement).execute(&mut conn).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test database {name}");
        }
    }
}

async fn create_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("talkamie_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but {admin_url} answers: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .expect("TEST_DATABASE_URL ends with /<database>");
    format!("{base}/{name}")
}

/// A running `talkamie serve`.
pub struct Server {
    child: Child,
    pub base: String,
    pub ws_url: String,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(db: &TestDb) -> Server {
        Self::start_with(db, &[]).await
    }

    pub async fn start_with(db: &TestDb, extra_env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_talkamie"));
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("PORT", "0")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in db.env() {
            command.env(k, v);
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn talkamie");
        let stdout = child.stdout.take().expect("stdout");
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(addr) = line.strip_prefix("talkamie listening on http://") {
                            break Some(addr.to_string());
                        }
                    }
                    _ => break None,
                }
            };
            // Keep draining so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            addr
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), addr)
            .await
            .expect("server started within 60 s")
            .expect("reader")
            .expect("server printed its address");
        Server {
            child,
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/v1/ws"),
            // A hang must fail the test, not block the run.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                // Drop idle connections well before the server's keep-alive closes them, so a
                // request never goes out on a connection the server is closing.
                .pool_idle_timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the process to exit.
    pub async fn stop(mut self) {
        let pid = self.pid().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let waited = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (self, status)
        });
        let (server, status) = tokio::time::timeout(Duration::from_secs(30), waited)
            .await
            .expect("server exits within 30 s of SIGTERM")
            .expect("wait");
        assert!(status.expect("exit status").success(), "graceful exit");
        std::mem::forget(server);
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call("GET", path, token, None).await
    }

    /// Signs up and returns `(user id, access, refresh)`.
    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        kind: &str,
    ) -> (String, String, String) {
        let (status, body) = self
            .post(
                "/v1/auth/sign-up",
                None,
                json!({"email": email, "password": password, "name": "Test User", "type": kind}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        account(&body)
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/v1/auth/sign-in",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn ws(&self) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(&self.ws_url)
            .await
            .expect("ws connect");
        Ws { stream }
    }

    pub async fn ws_authenticated(&self, token: &str, since: Option<i64>) -> (Ws, Value) {
        let mut ws = self.ws().await;
        let mut frame = json!({"action": "authenticate", "token": token, "requestId": "auth"});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        ws.send(frame).await;
        let reply = ws.recv().await;
        assert_eq!(reply["success"], json!(true), "{reply}");
        (ws, reply)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(user id, access, refresh)` of a `user_account` answer.
pub fn account(body: &Value) -> (String, String, String) {
    let data = &body["data"];
    (
        data["user"]["id"].as_str().expect("user id").to_string(),
        data["tokens"]["access"]
            .as_str()
            .expect("access")
            .to_string(),
        data["tokens"]["refresh"]
            .as_str()
            .expect("refresh")
            .to_string(),
    )
}

pub fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Asserts an error envelope with `status` and machine `code`.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["statusCode"], json!(want_status), "{body}");
    assert_eq!(body["error"], json!(want_code), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What the server sent next: a JSON frame or a close.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, message: Message) -> bool {
        self.stream.send(message).await.is_ok()
    }

    /// The next text frame or close within `timeout`; `None` on timeout.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(Incoming::Json(
                        serde_json::from_str(&text).expect("JSON frame"),
                    ))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Incoming::Closed(frame.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Incoming::Closed(None)),
            }
        }
    }

    /// The next JSON frame (fails on close or after 10 s).
    pub async fn recv(&mut self) -> Value {
        match self.next_within(Duration::from_secs(10)).await {
            Some(Incoming::Json(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends a frame and returns its reply (skipping pushes).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        loop {
            let v = self.recv().await;
            if v.get("position").is_none() {
                return v;
            }
        }
    }

    /// The next push with `action` whose frame satisfies `wanted`, skipping everything else
    /// (earlier pushes of the same action included).
    pub async fn push_where(&mut self, action: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.push(action).await;
            if wanted(&v) {
                return v;
            }
        }
    }

    /// The next push with `action`, skipping replies and other pushes.
    pub async fn push(&mut self, action: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["action"] == json!(action) && v.get("position").is_some() {
                return v;
            }
        }
    }
}

impl TestDb {
    /// Runs `talkamie <args>` against this store; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_talkamie"));
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "error");
        for (k, v) in self.env() {
            command.env(k, v);
        }
        let output = command.output().expect("run talkamie");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Server {
    /// Creates an admin with the CLI and signs in: `(id, access token)`.
    pub async fn admin(&self, db: &TestDb) -> (String, String) {
        let email = unique_email("admin");
        let (ok, stdout, stderr) = db.cli(&[
            "admin",
            "create",
            "--email",
            &email,
            "--password",
            "admin-password",
        ]);
        assert!(ok, "admin create failed: {stderr}");
        assert!(stdout.contains("admin created"), "{stdout}");
        let (status, body) = self.sign_in(&email, "admin-password").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (id, access, _) = account(&body);
        (id, access)
    }
}

impl Server {
    /// SIGKILL: the process dies at once, mid-work, like a crashed machine.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestDb {
    /// The six-digit code of the last mail to `email` that says `lead` right before it.
    pub fn mailed_code(&self, email: &str, lead: &str) -> String {
        let mail = std::fs::read_dir(self.mail_dir())
            .expect("mail dir")
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .find(|t| t.contains(email) && t.contains(lead))
            .unwrap_or_else(|| panic!("no mail to {email} with {lead:?}"));
        mail.split(lead)
            .nth(1)
            .expect("code")
            .chars()
            .take(6)
            .collect()
    }
}

impl Server {
    /// `from` asks `to` to connect (each `(id, token)`); the raw answer.
    pub async fn request_connection(
        &self,
        from: &(String, String),
        to: &(String, String),
    ) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/v1/user/{}/connection", to.0),
            Some(&from.1),
            None,
        )
        .await
    }

    /// Connects `senior` with `volunteer` (each `(id, token)`): request and accept; returns the
    /// chat id.
    pub async fn connect(&self, senior: &(String, String), volunteer: &(String, String)) -> String {
        let (status, body) = self.request_connection(senior, volunteer).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = self
            .call(
                "POST",
                &format!("/v1/user/{}/connection/accept", senior.0),
                Some(&volunteer.1),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["chat"]["id"]
            .as_str()
            .expect("chat id")
            .to_string()
    }
}

/// Every row of every rebuildable read model as text, table by table (the feed is a delivery
/// log that is never rebuilt: `Projection::rebuildable`).
pub async fn read_models(db: &Db) -> BTreeMap<&'static str, Vec<String>> {
    let mut dump = BTreeMap::new();
    for projection in Projection::ALL.into_iter().filter(|p| p.rebuildable()) {
        for table in projection.tables() {
            let rows: Vec<String> = match db {
                Db::Postgres(pool) => {
                    let sql = format!("SELECT CAST(t AS TEXT) FROM {table} AS t ORDER BY 1");
                    sqlx::query_scalar(&sql).fetch_all(pool).await
                }
                Db::Sqlite(pool) => {
                    let columns: Vec<String> = sqlx::query_scalar(&format!(
                        "SELECT name FROM pragma_table_info('{table}')"
                    ))
                    .fetch_all(pool)
                    .await
                    .expect("columns of a read model");
                    let sql = format!(
                        "SELECT json_array({}) FROM {table} ORDER BY 1",
                        columns.join(", ")
                    );
                    sqlx::query_scalar(&sql).fetch_all(pool).await
                }
            }
            .expect("dump a read model");
            dump.insert(*table, rows);
        }
    }
    dump
}
