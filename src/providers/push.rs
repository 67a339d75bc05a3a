//! Push notifications: sent for new messages, incoming calls, schedule reminders and alerts
//! when the user has no open socket and has push enabled (contract:
//! `push_notification_json_data` is `{action, title, body, data}`). `TALKAMIE_PUSH` picks the
//! provider:
//!
//! - `file` (default): [`FilePushProvider`] writes one pretty JSON file per notification under
//!   `<data dir>/push/`, so a developer (or a test) reads what would have been sent. Files are
//!   named `<UTC yyyymmddTHHMMSS.ffffff>-<uuid>.json`: they sort by time and never collide.
//!   Like the background-check sandbox failing the last name `Fail`, it has one way to exercise
//!   the unhappy path: a device token starting with `invalid` is answered
//!   [`Delivery::InvalidToken`] (the device should be dropped) and writes no file.
//! - `fcm`: [`FcmProvider`], Firebase Cloud Messaging's HTTP v1 API, authorised by a Google
//!   service account (`FCM_SERVICE_ACCOUNT`, the JSON key file; `FCM_ENDPOINT` for tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{SecondsFormat, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::{FcmSettings, PushKind, Settings};

/// One notification: `push_notification_json_data` of the contract.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PushMessage {
    pub action: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub token: String,
    /// `ios`, `android` or `web`.
    pub platform: String,
}

/// What the provider said about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The provider says this token is dead: drop the device.
    InvalidToken,
}

#[async_trait::async_trait]
pub trait PushProvider: Send + Sync {
    /// Sends `message` to one device of `user_id`. Err = a transient failure (logged, not retried).
    async fn send(
        &self,
        user_id: &str,
        device: &Device,
        message: &PushMessage,
    ) -> anyhow::Result<Delivery>;

    /// Removes stored copies of `user_id`'s notifications (a deleted account). Sent
    /// notifications cannot be recalled.
    async fn forget(&self, _user_id: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The provider `TALKAMIE_PUSH` names. FCM reads its service account here, so a bad key fails
/// at start rather than at the first notification.
pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<dyn PushProvider>> {
    Ok(match &settings.push {
        PushKind::File => Arc::new(FilePushProvider::new(settings.push_dir())?),
        PushKind::Fcm(fcm) => Arc::new(FcmProvider::new(fcm)?),
    })
}

/// Token prefix the file provider answers with [`Delivery::InvalidToken`].
pub const SANDBOX_INVALID_TOKEN_PREFIX: &str = "invalid";

/// Writes each notification as a JSON file (the local default).
pub struct FilePushProvider {
    dir: PathBuf,
}

impl FilePushProvider {
    /// Creates `dir` if needed.
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(FilePushProvider { dir })
    }
}

#[async_trait::async_trait]
impl PushProvider for FilePushProvider {
    async fn send(
        &self,
        user_id: &str,
        device: &Device,
        message: &PushMessage,
    ) -> anyhow::Result<Delivery> {
        if device.token.starts_with(SANDBOX_INVALID_TOKEN_PREFIX) {
            return Ok(Delivery::InvalidToken);
        }
        let now = Utc::now();
        let name = format!(
            "{}-{}.json",
            now.format("%Y%m%dT%H%M%S%.6f"),
            Uuid::new_v4()
        );
        let content = serde_json::to_vec_pretty(&json!({
            "userId": user_id,
            "device": {"token": device.token, "platform": device.platform},
            "notification": message,
            "sentAt": now.to_rfc3339_opts(SecondsFormat::Micros, true),
        }))?;
        // Written under a hidden temporary name and renamed: readers never see half a file.
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        tokio::fs::write(&temporary, content)
            .await
            .with_context(|| format!("writing {}", temporary.display()))?;
        if let Err(e) = tokio::fs::rename(&temporary, &path).await {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(e).with_context(|| format!("renaming to {}", path.display()));
        }
        Ok(Delivery::Sent)
    }

    async fn forget(&self, user_id: &str) -> anyhow::Result<()> {
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let owner = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|file| file["userId"].as_str().map(String::from));
            if owner.as_deref() == Some(user_id) {
                tokio::fs::remove_file(&path).await?;
            }
        }
        Ok(())
    }
}

/// The OAuth scope that lets a service account send FCM messages.
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// FCM error codes that mean the token will never work again. `INVALID_ARGUMENT` is not one:
/// FCM also answers it for a message it cannot take, and that must not drop good devices.
const DEAD_TOKEN_CODES: [&str; 2] = ["UNREGISTERED", "SENDER_ID_MISMATCH"];

/// The fields of a Google service-account key file we use. No `Debug`: it holds the key.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    /// Names the key to Google (the JWT's `kid`); optional.
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "google_token_uri")]
    token_uri: String,
}

fn google_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; optional in OAuth 2, Google always sends it.
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// Firebase Cloud Messaging, HTTP v1 (`POST /v1/projects/{project}/messages:send`).
pub struct FcmProvider {
    client: reqwest::Client,
    endpoint: String,
    account: ServiceAccount,
    key: EncodingKey,
    /// The OAuth access token; the lock is held while fetching so concurrent sends wait for one
    /// fetch instead of each asking Google.
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl FcmProvider {
    /// Reads and checks the service-account file.
    pub fn new(settings: &FcmSettings) -> anyhow::Result<Self> {
        let path = &settings.service_account;
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "FCM_SERVICE_ACCOUNT {} cannot be read (it must be a Google service-account \
                 JSON file)",
                path.display()
            )
        })?;
        let account: ServiceAccount = serde_json::from_str(&text).with_context(|| {
            format!(
                "FCM_SERVICE_ACCOUNT {} is not a service-account JSON file with project_id, \
                 client_email and private_key",
                path.display()
            )
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).with_context(|| {
            format!(
                "the private_key in FCM_SERVICE_ACCOUNT {} is not an RSA PEM key",
                path.display()
            )
        })?;
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("building the HTTP client for FCM")?;
        Ok(FcmProvider {
            client,
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            account,
            key,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a fresh one from the token endpoint.
    async fn access_token(&self) -> anyhow::Result<String> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `rejected` (unless another send already replaced it).
    async fn drop_token(&self, rejected: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == rejected) {
            *cached = None;
        }
    }

    /// OAuth 2 JWT bearer grant (RFC 7523) with an RS256 assertion signed by the account's key.
    async fn fetch_token(&self) -> anyhow::Result<CachedToken> {
        let iat = Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: &self.account.client_email,
            scope: FCM_SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.account.private_key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .context("signing the FCM token assertion")?;
        let asked = Instant::now();
        let response = self
            .client
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .context("asking for an FCM access token")?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("the FCM token endpoint answered {status}: {body}");
        }
        let answer: TokenAnswer = serde_json::from_str(&body)
            .with_context(|| format!("the FCM token endpoint's answer is unreadable: {body}"))?;
        Ok(CachedToken {
            value: answer.access_token,
            // From when it was asked for, so a slow answer never makes it look fresher.
            // Google says an hour; a wild answer must not overflow the clock.
            renew_at: asked
                + Duration::from_secs(answer.expires_in.min(24 * 3600))
                    .saturating_sub(TOKEN_MARGIN),
        })
    }

    async fn post_message(
        &self,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, String)> {
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.account.project_id
        );
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .context("sending to FCM")?;
        let status = response.status();
        Ok((status, response.text().await.unwrap_or_default()))
    }
}

/// The FCM v1 request for one device. FCM `data` values must be strings, so `data` travels
/// as JSON text in `payload`.
fn fcm_message(device: &Device, message: &PushMessage) -> Value {
    json!({"message": {
        "token": device.token,
        "notification": {"title": message.title, "body": message.body},
        "data": {"action": message.action, "payload": message.data.to_string()},
    }})
}

/// Whether an FCM error answer says the token is dead (the device should be dropped).
fn is_dead_token(status: StatusCode, body: &str) -> bool {
    // Only FCM's own error codes count: a 404 from a wrong project id or a proxy must not
    // drop every device.
    if !matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        return false;
    }
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    let error = &body["error"];
    let details = error["details"].as_array().into_iter().flatten();
    std::iter::once(&error["status"])
        .chain(details.map(|detail| &detail["errorCode"]))
        .filter_map(Value::as_str)
        .any(|code| DEAD_TOKEN_CODES.contains(&code))
}

#[async_trait::async_trait]
impl PushProvider for FcmProvider {
    async fn send(
        &self,
        _user_id: &str,
        device: &Device,
        message: &PushMessage,
    ) -> anyhow::Result<Delivery> {
        let body = fcm_message(device, message);
        let mut retried = false;
        loop {
            let token = self.access_token().await?;
            let (status, answer) = self.post_message(&token, &body).await?;
            if status.is_success() {
                return Ok(Delivery::Sent);
            }
            if is_dead_token(status, &answer) {
                return Ok(Delivery::InvalidToken);
            }
            // A revoked or expired-early access token: fetch a new one, once.
            if status == StatusCode::UNAUTHORIZED && !retried {
                self.drop_token(&token).await;
                retried = true;
                continue;
            }
            return Err(anyhow!("FCM answered {status}: {answer}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    const PRIVATE_KEY: &str =
        include_str!("../../tests/fixtures/push/TEST_ONLY_fcm_service_account_key.pem");
    const PUBLIC_KEY: &str =
        include_str!("../../tests/fixtures/push/TEST_ONLY_fcm_service_account_key.pub.pem");
    const CLIENT_EMAIL: &str = "push@demo-project.iam.gserviceaccount.com";

    fn message() -> PushMessage {
        PushMessage {
            action: "chat.message".into(),
            title: "Ada".into(),
            body: "Hello there".into(),
            data: json!({"chatId": "c-1", "messageId": 7}),
        }
    }

    fn device(token: &str) -> Device {
        Device {
            token: token.into(),
            platform: "android".into(),
        }
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn the_file_provider_writes_one_json_file_per_notification() {
        let data = tempfile::tempdir().unwrap();
        let settings = Settings::from_map(&HashMap::from([(
            "TALKAMIE_DATA_DIR".to_string(),
            data.path().display().to_string(),
        )]))
        .unwrap();
        let provider = from_settings(&settings).unwrap();
        let dir = settings.push_dir();
        assert!(dir.is_dir(), "from_settings creates <data dir>/push");

        let sent = provider
            .send("user-1", &device("tok-a"), &message())
            .await
            .unwrap();
        assert_eq!(sent, Delivery::Sent);
        let files = files_in(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
        // <yyyymmddTHHMMSS.ffffff>-<uuid>.json
        assert!(name.ends_with(".json"), "{name}");
        let (stamp, rest) = name.split_at(22);
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.6f").is_ok(),
            "{name}"
        );
        assert!(Uuid::parse_str(&rest[1..rest.len() - 5]).is_ok(), "{name}");
        let written: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(written["userId"], "user-1");
        assert_eq!(
            written["device"],
            json!({"token": "tok-a", "platform": "android"})
        );
        assert_eq!(
            written["notification"],
            json!({"action": "chat.message", "title": "Ada", "body": "Hello there",
                   "data": {"chatId": "c-1", "messageId": 7}})
        );
        let notification: PushMessage =
            serde_json::from_value(written["notification"].clone()).unwrap();
        assert_eq!(notification, message());
        let sent_at = written["sentAt"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(sent_at).is_ok(),
            "{sent_at}"
        );

        // A second notification is a second file, sorting after the first.
        provider
            .send("user-2", &device("tok-b"), &message())
            .await
            .unwrap();
        let files = files_in(&dir);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[0].file_name().unwrap().to_str().unwrap(), name);
        let second: Value = serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
        assert_eq!(second["userId"], "user-2");

        // The sandbox's dead token: reported, nothing written (no temporary file either).
        let dead = provider
            .send("user-1", &device("invalid-token-1"), &message())
            .await
            .unwrap();
        assert_eq!(dead, Delivery::InvalidToken);
        assert_eq!(files_in(&dir).len(), 2);
    }

    /// What the stand-in for Google received and how it should answer.
    #[derive(Default)]
    struct Fake {
        token_uri: String,
        /// Claims of each accepted token assertion.
        token_requests: Mutex<Vec<Value>>,
        /// `(Authorization header, body)` of each `messages:send`.
        sends: Mutex<Vec<(String, Value)>>,
        /// Answer the next this-many sends with 401.
        unauthorized: AtomicUsize,
        /// Answer sends with 500.
        broken: AtomicBool,
    }

    #[derive(serde::Deserialize)]
    struct TokenForm {
        grant_type: String,
        assertion: String,
    }

    async fn fake_token(fake: web::Data<Fake>, form: web::Form<TokenForm>) -> HttpResponse {
        if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"}));
        }
        let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&fake.token_uri]);
        validation.set_issuer(&[CLIENT_EMAIL]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let claims = match jsonwebtoken::decode::<Value>(&form.assertion, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                return HttpResponse::BadRequest()
                    .json(json!({"error": "invalid_grant", "error_description": e.to_string()}))
            }
        };
        if claims["scope"] != FCM_SCOPE {
            return HttpResponse::BadRequest().json(json!({"error": "invalid_scope"}));
        }
        fake.token_requests.lock().unwrap().push(claims);
        HttpResponse::Ok()
            .json(json!({"access_token": "tok-1", "expires_in": 3600, "token_type": "Bearer"}))
    }

    async fn fake_send(
        fake: web::Data<Fake>,
        request: HttpRequest,
        body: web::Bytes,
    ) -> HttpResponse {
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        fake.sends
            .lock()
            .unwrap()
            .push((authorization.clone(), body.clone()));
        let unauthorized = json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}});
        if authorization != "Bearer tok-1" {
            return HttpResponse::Unauthorized().json(unauthorized);
        }
        if fake
            .unauthorized
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return HttpResponse::Unauthorized().json(unauthorized);
        }
        if fake.broken.load(Ordering::SeqCst) {
            return HttpResponse::InternalServerError()
                .json(json!({"error": {"code": 500, "status": "INTERNAL"}}));
        }
        if body["message"]["token"] == "dead-token" {
            return HttpResponse::NotFound().json(json!({"error": {
                "code": 404,
                "status": "NOT_FOUND",
                "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }],
            }}));
        }
        HttpResponse::Ok().json(json!({"name": "projects/demo-project/messages/1"}))
    }

    /// Serves the fake on a free port; returns its base URL, its state and the server's handle.
    fn start_fake() -> (String, web::Data<Fake>, actix_web::dev::ServerHandle) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = web::Data::new(Fake {
            token_uri: format!("{base}/token"),
            ..Fake::default()
        });
        let state = fake.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/token", web::post().to(fake_token))
                .route(
                    "/v1/projects/demo-project/messages:send",
                    web::post().to(fake_send),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        (base, fake, handle)
    }

    fn service_account(token_uri: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let account = json!({
            "type": "service_account",
            "project_id": "demo-project",
            "private_key_id": "test-key-1",
            "private_key": PRIVATE_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": token_uri,
        });
        file.write_all(account.to_string().as_bytes()).unwrap();
        file
    }

    #[tokio::test]
    async fn fcm_sends_with_a_cached_token_and_maps_the_answers() {
        let (base, fake, server) = start_fake();
        let account = service_account(&fake.token_uri);
        let settings = Settings::from_map(&HashMap::from([
            ("TALKAMIE_PUSH".to_string(), "fcm".to_string()),
            (
                "FCM_SERVICE_ACCOUNT".to_string(),
                account.path().display().to_string(),
            ),
            ("FCM_ENDPOINT".to_string(), format!("{base}/")),
        ]))
        .unwrap();
        let provider = from_settings(&settings).unwrap();

        // Two sends: both delivered, one token fetched.
        for token in ["device-1", "device-2"] {
            let delivery = provider
                .send("user-1", &device(token), &message())
                .await
                .unwrap();
            assert_eq!(delivery, Delivery::Sent);
        }
        {
            let tokens = fake.token_requests.lock().unwrap();
            assert_eq!(tokens.len(), 1, "the access token is cached");
            let claims = &tokens[0];
            assert_eq!(claims["iss"], CLIENT_EMAIL);
            assert_eq!(claims["aud"], fake.token_uri.as_str());
            assert_eq!(claims["scope"], FCM_SCOPE);
            let (iat, exp) = (
                claims["iat"].as_i64().unwrap(),
                claims["exp"].as_i64().unwrap(),
            );
            assert_eq!(exp - iat, 3600);
            assert!((Utc::now().timestamp() - iat).abs() < 60);
        }
        {
            let sends = fake.sends.lock().unwrap();
            assert_eq!(sends.len(), 2);
            assert!(sends.iter().all(|(auth, _)| auth == "Bearer tok-1"));
            let body = &sends[0].1;
            assert_eq!(body["message"]["token"], "device-1");
            assert_eq!(
                body["message"]["notification"],
                json!({"title": "Ada", "body": "Hello there"})
            );
            let data = body["message"]["data"].as_object().unwrap();
            assert_eq!(data.len(), 2, "{data:?}");
            assert_eq!(data["action"], "chat.message");
            let payload: Value = serde_json::from_str(data["payload"].as_str().unwrap()).unwrap();
            assert_eq!(payload, json!({"chatId": "c-1", "messageId": 7}));
            assert_eq!(sends[1].1["message"]["token"], "device-2");
        }

        // FCM says the token is unregistered: drop the device.
        let dead = provider
            .send("user-1", &device("dead-token"), &message())
            .await
            .unwrap();
        assert_eq!(dead, Delivery::InvalidToken);

        // A 401 drops the cached access token and retries once with a fresh one.
        fake.unauthorized.store(1, Ordering::SeqCst);
        let retried = provider
            .send("user-1", &device("device-1"), &message())
            .await
            .unwrap();
        assert_eq!(retried, Delivery::Sent);
        assert_eq!(fake.token_requests.lock().unwrap().len(), 2);
        // ...but only once.
        fake.unauthorized.store(2, Ordering::SeqCst);
        let sends_before = fake.sends.lock().unwrap().len();
        let err = provider
            .send("user-1", &device("device-1"), &message())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("401"), "{err}");
        assert_eq!(fake.sends.lock().unwrap().len(), sends_before + 2);
        assert_eq!(fake.token_requests.lock().unwrap().len(), 3);

        // A server error is a transient failure, with the status and body in the error.
        fake.broken.store(true, Ordering::SeqCst);
        let err = provider
            .send("user-1", &device("device-1"), &message())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("500") && err.contains("INTERNAL"), "{err}");

        server.stop(false).await;
    }

    #[test]
    fn fcm_errors_that_mean_a_dead_token() {
        let error = |status: &str, code: &str| {
            json!({"error": {"status": status, "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
            ]}})
            .to_string()
        };
        // A bare 404 (a wrong project or endpoint) says nothing about the token.
        assert!(!is_dead_token(StatusCode::NOT_FOUND, ""));
        assert!(is_dead_token(
            StatusCode::NOT_FOUND,
            &error("NOT_FOUND", "UNREGISTERED")
        ));
        assert!(!is_dead_token(
            StatusCode::BAD_REQUEST,
            &error("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        ));
        assert!(is_dead_token(
            StatusCode::FORBIDDEN,
            &error("PERMISSION_DENIED", "SENDER_ID_MISMATCH")
        ));
        assert!(is_dead_token(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"status": "UNREGISTERED"}}).to_string()
        ));
        assert!(!is_dead_token(
            StatusCode::FORBIDDEN,
            &error("PERMISSION_DENIED", "THIRD_PARTY_AUTH_ERROR")
        ));
        assert!(!is_dead_token(StatusCode::BAD_REQUEST, "not json"));
        assert!(!is_dead_token(
            StatusCode::TOO_MANY_REQUESTS,
            &error("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        ));
        assert!(!is_dead_token(
            StatusCode::INTERNAL_SERVER_ERROR,
            &error("INTERNAL", "UNREGISTERED")
        ));
    }

    #[test]
    fn fcm_refuses_a_missing_or_broken_service_account() {
        let missing = FcmProvider::new(&FcmSettings {
            service_account: PathBuf::from("/nonexistent/fcm.json"),
            endpoint: "https://fcm.googleapis.com".into(),
        });
        let err = missing.err().unwrap().to_string();
        assert!(err.contains("FCM_SERVICE_ACCOUNT"), "{err}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(
            json!({"project_id": "p", "client_email": "e", "private_key": "not a key"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let broken = FcmProvider::new(&FcmSettings {
            service_account: file.path().to_path_buf(),
            endpoint: "https://fcm.googleapis.com".into(),
        });
        let err = broken.err().unwrap().to_string();
        assert!(err.contains("private_key"), "{err}");
    }
}
