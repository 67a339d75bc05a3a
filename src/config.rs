//! One typed configuration. Every key is an environment variable; a `talkamie.toml` (or the
//! file named by `TALKAMIE_CONFIG`) may set the same keys, and the environment wins.
//! Each key and its default is listed in the README.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailerKind {
    /// `.eml` files under `<data dir>/mail/` (lettre's file transport).
    File,
    /// SMTP via `SMTP_URL` (e.g. `smtps://user:pass@smtp.example.com`).
    Smtp(String),
}

/// A coin package offered for purchase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoinPackage {
    pub coins: u64,
    pub price_cents: u64,
}

/// `GET /v1/constants/coins` (contract section 9), each value configurable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CoinSettings {
    pub coins_per_usd: u64,
    pub min_purchase_coins: u64,
    pub min_withdrawal_coins: u64,
    #[serde(rename = "withdrawalLimitCoins30d")]
    pub withdrawal_limit_coins_30d: u64,
    pub call_coins_per_minute: u64,
    pub volunteer_share_percent: u64,
    pub low_balance_coins: u64,
    pub packages: Vec<CoinPackage>,
}

/// Where uploaded files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    /// `<data dir>/files/`, served by this server behind signed URLs.
    Local,
    /// An S3-compatible bucket; clients upload and read with presigned URLs.
    S3(S3Settings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `true`: `endpoint/bucket/key` (MinIO and most S3-compatible stores); `false`: virtual host.
    pub path_style: bool,
}

/// Where push notifications go (`TALKAMIE_PUSH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// JSON files under `<data dir>/push/` (`file`, default).
    File,
    /// Firebase Cloud Messaging, HTTP v1 API (`fcm`).
    Fcm(FcmSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmSettings {
    /// `FCM_SERVICE_ACCOUNT`: the Google service-account JSON file (read when the provider starts).
    pub service_account: PathBuf,
    /// `FCM_ENDPOINT`: where the FCM API is (tests point it at a stand-in).
    pub endpoint: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub host: String,
    pub data_dir: PathBuf,
    /// `None`: the embedded SQLite store in the data dir.
    pub database_url: Option<String>,
    pub jwt_secret: Option<String>,
    /// Base of generated links; `None` means `http://<host>:<bound port>`.
    pub public_url: Option<String>,
    pub cors_origins: Vec<String>,
    pub mailer: MailerKind,
    pub mail_from: String,
    pub log_format_json: bool,
    /// Seconds an unauthenticated WebSocket may stay open.
    pub ws_auth_timeout_secs: u64,
    /// Seconds a silent WebSocket may stay open.
    pub ws_idle_timeout_secs: u64,
    /// Frames one socket may send per second (bursts of twice that).
    pub ws_frames_per_second: u32,
    /// Chat messages one sender may send per minute (bursts of a quarter of that, at least 30).
    pub chat_messages_per_minute: u32,
    /// Commands one instance works on at once; more are refused at once with 503.
    pub max_commands_in_flight: u32,
    /// Aggregates kept in memory between commands (0: load every one from the store).
    pub aggregate_cache: usize,
    /// Seconds from a request head's first byte to its end (every head, not only the first).
    pub request_head_timeout_secs: u64,
    /// Longest pause, in seconds, between two reads of a request body.
    pub request_body_gap_secs: u64,
    /// Bytes per second a request body must average (after the gap's credit); 0: no floor.
    pub request_body_min_rate: u64,
    pub coins: CoinSettings,
    pub storage: StorageKind,
    pub ledger: LedgerSettings,
    pub timers: TimerSettings,
    pub push: PushKind,
}

/// Timed work: reminders, ringing calls, sagas left half-way.
#[derive(Debug, Clone)]
pub struct TimerSettings {
    /// Milliseconds between looks for due timers.
    pub poll_ms: u64,
    /// Seconds a call rings before it is `missed`.
    pub ring_timeout_secs: u64,
    /// Lets an admin move the server's clock forward (`POST /v1/admin/clock`), so tests of
    /// reminders and timeouts never wait for minutes. Never enable it in production.
    pub adjustable_clock: bool,
}

/// Which payment provider takes top-ups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentsKind {
    /// The built-in checkout page and signed webhook (`TALKAMIE_PAYMENTS=sandbox`, default).
    Sandbox,
    /// Stripe Checkout Sessions (`TALKAMIE_PAYMENTS=stripe`).
    Stripe(StripeSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSettings {
    pub secret_key: String,
    /// `whsec_...`: signs Stripe's webhook deliveries.
    pub webhook_secret: String,
    pub api_base: String,
}

/// Top-ups, withdrawals and the sweeper that settles what is left open.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub payments: PaymentsKind,
    /// Secret of the sandbox webhook signature; generated and kept in the store when unset.
    pub webhook_secret: Option<String>,
    /// Seconds an unpaid payment session stays open.
    pub top_up_ttl_secs: u64,
    /// Seconds between sweeps (expire unpaid sessions, resume unsettled payouts).
    pub sweep_secs: u64,
}

impl Settings {
    /// Reads the config file (if any) and then the environment.
    pub fn load() -> anyhow::Result<Settings> {
        let mut values = HashMap::new();
        let file = std::env::var("TALKAMIE_CONFIG").unwrap_or_else(|_| "talkamie.toml".into());
        if let Ok(text) = std::fs::read_to_string(&file) {
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("reading {file}"))?;
            for (key, value) in table {
                let value = match value {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                values.insert(key, value);
            }
        }
        for (key, value) in std::env::vars() {
            values.insert(key, value);
        }
        Settings::from_map(&values)
    }

    pub fn from_map(values: &HashMap<String, String>) -> anyhow::Result<Settings> {
        let get = |key: &str| values.get(key).filter(|v| !v.trim().is_empty()).cloned();
        let port = match get("PORT") {
            Some(p) => p
                .parse()
                .with_context(|| format!("PORT must be a port number: {p}"))?,
            None => 8080,
        };
        let mailer = match get("TALKAMIE_MAILER").as_deref().unwrap_or("file") {
            "file" => MailerKind::File,
            "smtp" => {
                MailerKind::Smtp(get("SMTP_URL").context("TALKAMIE_MAILER=smtp needs SMTP_URL")?)
            }
            other => bail!("TALKAMIE_MAILER must be file or smtp, not {other}"),
        };
        let database_url = get("DATABASE_URL");
        if let Some(url) = &database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("DATABASE_URL must be a postgres:// URL (unset it for the embedded store)");
            }
        }
        let seconds = |key: &str, default: u64| -> anyhow::Result<u64> {
            match get(key) {
                Some(v) => v
                    .parse()
                    .with_context(|| format!("{key} must be a whole number")),
                None => Ok(default),
            }
        };
        let rate = |key: &str, default: u32| -> anyhow::Result<u32> {
            let value = seconds(key, u64::from(default))?;
            u32::try_from(value)
                .ok()
                .filter(|v| *v > 0)
                .with_context(|| format!("{key} must be a whole number from 1 to {}", u32::MAX))
        };
        let payments = match get("TALKAMIE_PAYMENTS").as_deref().unwrap_or("sandbox") {
            "sandbox" => PaymentsKind::Sandbox,
            "stripe" => {
                let need = |key: &str| {
                    get(key).with_context(|| format!("TALKAMIE_PAYMENTS=stripe needs {key}"))
                };
                PaymentsKind::Stripe(StripeSettings {
                    secret_key: need("STRIPE_SECRET_KEY")?,
                    webhook_secret: need("STRIPE_WEBHOOK_SECRET")?,
                    api_base: get("STRIPE_API_BASE")
                        .unwrap_or_else(|| "https://api.stripe.com".into()),
                })
            }
            other => bail!("TALKAMIE_PAYMENTS must be sandbox or stripe, not {other}"),
        };
        // Payouts: only the built-in sandbox exists so far.
        if let Some(value) = get("TALKAMIE_PAYOUTS") {
            if value != "sandbox" {
                bail!("TALKAMIE_PAYOUTS={value} is not available yet (only sandbox)");
            }
        }
        let push = match get("TALKAMIE_PUSH").as_deref().unwrap_or("file") {
            "file" => PushKind::File,
            "fcm" => PushKind::Fcm(FcmSettings {
                service_account: PathBuf::from(get("FCM_SERVICE_ACCOUNT").context(
                    "TALKAMIE_PUSH=fcm needs FCM_SERVICE_ACCOUNT (the path of a Google \
                     service-account JSON file)",
                )?),
                endpoint: get("FCM_ENDPOINT")
                    .unwrap_or_else(|| "https://fcm.googleapis.com".into()),
            }),
            other => bail!("TALKAMIE_PUSH must be file or fcm, not {other}"),
        };
        let number = |key: &str, default: u64| -> anyhow::Result<u64> {
            match get(key) {
                Some(v) => v
                    .parse()
                    .with_context(|| format!("{key} must be a whole number")),
                None => Ok(default),
            }
        };
        let coins_per_usd = number("TALKAMIE_COINS_PER_USD", 100)?;
        let packages = match get("TALKAMIE_COIN_PACKAGES") {
            Some(list) => list
                .split(',')
                .map(|c| c.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .context("TALKAMIE_COIN_PACKAGES must be comma-separated coin amounts")?,
            None => vec![500, 1000, 2500, 5000],
        };
        if coins_per_usd == 0 {
            bail!("TALKAMIE_COINS_PER_USD must be above 0");
        }
        let share = number("TALKAMIE_VOLUNTEER_SHARE_PERCENT", 70)?;
        if share > 100 {
            bail!("TALKAMIE_VOLUNTEER_SHARE_PERCENT must be 0 to 100");
        }
        let coins = CoinSettings {
            coins_per_usd,
            min_purchase_coins: number("TALKAMIE_MIN_PURCHASE_COINS", 50)?,
            min_withdrawal_coins: number("TALKAMIE_MIN_WITHDRAWAL_COINS", 100)?,
            withdrawal_limit_coins_30d: number("TALKAMIE_WITHDRAWAL_LIMIT_COINS_30D", 50_000)?,
            call_coins_per_minute: number("TALKAMIE_CALL_COINS_PER_MINUTE", 50)?,
            volunteer_share_percent: share,
            low_balance_coins: number("TALKAMIE_LOW_BALANCE_COINS", 250)?,
            packages: packages
                .into_iter()
                .map(|coins| CoinPackage {
                    coins,
                    price_cents: coins * 100 / coins_per_usd,
                })
                .collect(),
        };
        let storage = match get("TALKAMIE_STORAGE").as_deref().unwrap_or("local") {
            "local" => StorageKind::Local,
            "s3" => {
                let need = |key: &str| {
                    get(key).with_context(|| format!("TALKAMIE_STORAGE=s3 needs {key}"))
                };
                StorageKind::S3(S3Settings {
                    endpoint: need("S3_ENDPOINT")?,
                    bucket: need("S3_BUCKET")?,
                    region: get("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: need("S3_ACCESS_KEY_ID")?,
                    secret_access_key: need("S3_SECRET_ACCESS_KEY")?,
                    path_style: get("S3_PATH_STYLE").is_none_or(|v| v != "false"),
                })
            }
            other => bail!("TALKAMIE_STORAGE must be local or s3, not {other}"),
        };
        let ledger = LedgerSettings {
            payments,
            webhook_secret: get("TALKAMIE_WEBHOOK_SECRET"),
            top_up_ttl_secs: seconds("TALKAMIE_TOPUP_SESSION_TTL_SECS", 24 * 3600)?,
            sweep_secs: seconds("TALKAMIE_LEDGER_SWEEP_SECS", 30)?.max(1),
        };
        let timers = TimerSettings {
            poll_ms: seconds("TALKAMIE_TIMER_POLL_MS", 1000)?.max(10),
            ring_timeout_secs: seconds("TALKAMIE_RING_TIMEOUT_SECS", 45)?.max(1),
            adjustable_clock: get("TALKAMIE_ADJUSTABLE_CLOCK").is_some_and(|v| v == "true"),
        };
        Ok(Settings {
            push,
            timers,
            ledger,
            storage,
            coins,
            port,
            host: get("TALKAMIE_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            data_dir: PathBuf::from(get("TALKAMIE_DATA_DIR").unwrap_or_else(|| "./data".into())),
            database_url,
            jwt_secret: get("TALKAMIE_JWT_SECRET"),
            public_url: get("TALKAMIE_PUBLIC_URL"),
            cors_origins: get("TALKAMIE_CORS_ORIGINS")
                .unwrap_or_else(|| "*".into())
                .split(',')
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            mailer,
            mail_from: get("TALKAMIE_MAIL_FROM")
                .unwrap_or_else(|| "Talkamie <no-reply@talkamie.local>".into()),
            log_format_json: get("LOG_FORMAT").is_some_and(|f| f == "json"),
            ws_auth_timeout_secs: seconds("TALKAMIE_WS_AUTH_TIMEOUT_SECS", 10)?,
            ws_idle_timeout_secs: seconds("TALKAMIE_WS_IDLE_TIMEOUT_SECS", 60)?,
            ws_frames_per_second: rate("TALKAMIE_WS_FRAMES_PER_SECOND", 20)?,
            chat_messages_per_minute: rate("TALKAMIE_CHAT_MESSAGES_PER_MINUTE", 120)?,
            max_commands_in_flight: rate("TALKAMIE_MAX_COMMANDS_IN_FLIGHT", 512)?,
            aggregate_cache: usize::try_from(number("TALKAMIE_AGGREGATE_CACHE", 10_000)?)
                .context("TALKAMIE_AGGREGATE_CACHE is too large")?,
            request_head_timeout_secs: seconds("TALKAMIE_REQUEST_HEAD_TIMEOUT_SECS", 10)?.max(1),
            request_body_gap_secs: seconds("TALKAMIE_REQUEST_BODY_GAP_SECS", 30)?.max(1),
            request_body_min_rate: number("TALKAMIE_REQUEST_BODY_MIN_RATE", 500)?,
        })
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }

    /// Where the file push provider writes its notifications.
    pub fn push_dir(&self) -> PathBuf {
        self.data_dir.join("push")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_a_laptop() {
        let s = Settings::from_map(&HashMap::new()).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.database_url.is_none());
        assert_eq!(s.cors_origins, vec!["*".to_string()]);
        assert_eq!(s.mailer, MailerKind::File);
        assert_eq!(s.push, PushKind::File);
        assert_eq!(s.push_dir(), PathBuf::from("./data/push"));
        assert_eq!(s.request_head_timeout_secs, 10);
        assert_eq!(s.request_body_gap_secs, 30);
        assert_eq!(s.request_body_min_rate, 500);
    }

    #[test]
    fn push_is_file_or_fcm_with_a_service_account() {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let s = Settings::from_map(&map(&[("TALKAMIE_PUSH", "file")])).unwrap();
        assert_eq!(s.push, PushKind::File);
        let err = Settings::from_map(&map(&[("TALKAMIE_PUSH", "fcm")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FCM_SERVICE_ACCOUNT"), "{err}");
        let s = Settings::from_map(&map(&[
            ("TALKAMIE_PUSH", "fcm"),
            ("FCM_SERVICE_ACCOUNT", "/etc/talkamie/fcm.json"),
        ]))
        .unwrap();
        assert_eq!(
            s.push,
            PushKind::Fcm(FcmSettings {
                service_account: PathBuf::from("/etc/talkamie/fcm.json"),
                endpoint: "https://fcm.googleapis.com".into(),
            })
        );
        let s = Settings::from_map(&map(&[
            ("TALKAMIE_PUSH", "fcm"),
            ("FCM_SERVICE_ACCOUNT", "sa.json"),
            ("FCM_ENDPOINT", "http://127.0.0.1:9"),
        ]))
        .unwrap();
        assert!(matches!(s.push, PushKind::Fcm(f) if f.endpoint == "http://127.0.0.1:9"));
        let err = Settings::from_map(&map(&[("TALKAMIE_PUSH", "apns")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TALKAMIE_PUSH"), "{err}");
        // Payouts keep refusing anything but the sandbox.
        assert!(Settings::from_map(&map(&[("TALKAMIE_PAYOUTS", "paypal")])).is_err());
        assert!(Settings::from_map(&map(&[("TALKAMIE_PAYOUTS", "sandbox")])).is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let map = HashMap::from([("PORT".to_string(), "eighty".to_string())]);
        let err = Settings::from_map(&map).unwrap_err().to_string();
        assert!(err.contains("PORT"), "{err}");
        let map = HashMap::from([("DATABASE_URL".to_string(), "mysql://x".to_string())]);
        assert!(Settings::from_map(&map).is_err());
        let map = HashMap::from([("TALKAMIE_PAYMENTS".to_string(), "stripe".to_string())]);
        assert!(Settings::from_map(&map)
            .unwrap_err()
            .to_string()
            .contains("STRIPE_SECRET_KEY"));
        let map = HashMap::from([("TALKAMIE_PAYMENTS".to_string(), "paypal".to_string())]);
        assert!(Settings::from_map(&map).is_err());
        let map = HashMap::from([("TALKAMIE_MAILER".to_string(), "smtp".to_string())]);
        assert!(Settings::from_map(&map)
            .unwrap_err()
            .to_string()
            .contains("SMTP_URL"));
        let map = HashMap::from([(
            "TALKAMIE_REQUEST_BODY_GAP_SECS".to_string(),
            "soon".to_string(),
        )]);
        let err = Settings::from_map(&map).unwrap_err().to_string();
        assert!(err.contains("TALKAMIE_REQUEST_BODY_GAP_SECS"), "{err}");
        // 0 would close every connection at once: at least 1 s.
        let map = HashMap::from([(
            "TALKAMIE_REQUEST_HEAD_TIMEOUT_SECS".to_string(),
            "0".to_string(),
        )]);
        assert_eq!(
            Settings::from_map(&map).unwrap().request_head_timeout_secs,
            1
        );
    }
}
