//! Payment providers for top-ups: a provider opens a checkout session and later tells us, in a
//! signed webhook, how it ended. Both built-in providers speak Stripe's event format
//! (`checkout.session.completed`, `...expired`, ...) and its signature scheme
//! (`t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`); they differ in the header and the secret.
//!
//! - `SandboxPayments` (default): the checkout page is served by this server at
//!   `/v1/sandbox/checkout/{sessionId}`; paying there posts the signed webhook to
//!   `/v1/webhooks/payments` (header `x-talkamie-signature`).
//! - `StripePayments` (`TALKAMIE_PAYMENTS=stripe`): Checkout Sessions over Stripe's HTTP API;
//!   Stripe posts the webhook (header `Stripe-Signature`).

use actix_web::http::header::HeaderMap;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use talkamie_aggregates::wallet::TopUpOutcome;
use uuid::Uuid;

use crate::config::StripeSettings;

/// How old (or how far in the future) a signature's timestamp may be.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;
/// The sandbox's signature header.
pub const SANDBOX_SIGNATURE_HEADER: &str = "x-talkamie-signature";
/// The sandbox's event type for the Cancel button (Stripe has none: its sessions just expire).
pub const SANDBOX_CANCELED: &str = "talkamie.checkout.session.canceled";

/// What a top-up asks the provider for.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub transaction_id: String,
    pub user_id: String,
    pub coins: i64,
    pub price_cents: i64,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
}

/// The provider's session: its id and the page where the customer pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

/// What a verified webhook says about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    Paid,
    Unpaid(TopUpOutcome),
    /// An event we do not act on (still processing, other objects): acknowledged.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    pub event_id: String,
    pub event_type: String,
    pub session_id: String,
    /// From the session's metadata (set when it was created).
    pub user_id: Option<String>,
    pub outcome: SessionOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the signature header is missing")]
    MissingSignature,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signature timestamp is outside the {SIGNATURE_TOLERANCE_SECS} s tolerance")]
    Stale,
    #[error("the event cannot be read: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("the payment provider failed: {0}")]
pub struct ProviderError(pub String);

#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    /// `sandbox` or `stripe` (stored with each top-up).
    fn name(&self) -> &'static str;
    async fn create_session(
        &self,
        request: &CheckoutRequest,
    ) -> Result<CheckoutSession, ProviderError>;
    /// The header carrying the webhook signature.
    fn signature_header(&self) -> &'static str;
    fn webhook_secret(&self) -> &[u8];
}

/// Checks a delivery's signature and reads its event.
pub fn verify_webhook(
    provider: &dyn PaymentProvider,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<PaymentNotice, WebhookError> {
    let header = headers
        .get(provider.signature_header())
        .and_then(|v| v.to_str().ok())
        .ok_or(WebhookError::MissingSignature)?;
    verify_signature(provider.webhook_secret(), header, body, now)?;
    parse_event(body)
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header for `body` at `timestamp`: `t=<unix>,v1=<hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// Accepts `t=..,v1=..[,v1=..]` (several `v1` while secrets roll) within the tolerance.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let (Some(timestamp), false) = (timestamp, signatures.is_empty()) else {
        return Err(WebhookError::BadSignature);
    };
    let matches = signatures.iter().any(|sig| {
        hex::decode(sig)
            .is_ok_and(|bytes| mac(secret, timestamp, body).verify_slice(&bytes).is_ok())
    });
    if !matches {
        return Err(WebhookError::BadSignature);
    }
    if (now.timestamp() - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(WebhookError::Stale);
    }
    Ok(())
}

/// Reads a Stripe-format event about a checkout session.
pub fn parse_event(body: &[u8]) -> Result<PaymentNotice, WebhookError> {
    let event: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    let text =
        |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str).map(String::from);
    let event_id = text(&event, "/id").ok_or(WebhookError::Malformed("no id".into()))?;
    let event_type = text(&event, "/type").ok_or(WebhookError::Malformed("no type".into()))?;
    let object = event
        .pointer("/data/object")
        .ok_or(WebhookError::Malformed("no data.object".into()))?;
    let session_id = text(object, "/id").ok_or(WebhookError::Malformed("no session id".into()))?;
    let outcome = match event_type.as_str() {
        "checkout.session.completed" => match text(object, "/payment_status").as_deref() {
            Some("paid") | Some("no_payment_required") => SessionOutcome::Paid,
            // Delayed methods: `async_payment_succeeded` or `_failed` follows.
            _ => SessionOutcome::Ignored,
        },
        "checkout.session.async_payment_succeeded" => SessionOutcome::Paid,
        "checkout.session.async_payment_failed" => SessionOutcome::Unpaid(TopUpOutcome::Failed),
        "checkout.session.expired" => SessionOutcome::Unpaid(TopUpOutcome::Expired),
        SANDBOX_CANCELED => SessionOutcome::Unpaid(TopUpOutcome::Canceled),
        _ => SessionOutcome::Ignored,
    };
    Ok(PaymentNotice {
        event_id,
        event_type,
        session_id,
        user_id: text(object, "/metadata/userId"),
        outcome,
    })
}

/// The built-in provider: sessions are pages of this server.
pub struct SandboxPayments {
    /// Where clients reach this server (the session url's base).
    pub public_base: String,
    pub secret: Vec<u8>,
}

#[async_trait::async_trait]
impl PaymentProvider for SandboxPayments {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create_session(
        &self,
        _request: &CheckoutRequest,
    ) -> Result<CheckoutSession, ProviderError> {
        let id = format!("cs_sandbox_{}", Uuid::new_v4().simple());
        let url = format!(
            "{}/v1/sandbox/checkout/{id}",
            self.public_base.trim_end_matches('/')
        );
        Ok(CheckoutSession { id, url })
    }

    fn signature_header(&self) -> &'static str {
        SANDBOX_SIGNATURE_HEADER
    }

    fn webhook_secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The sandbox's webhook event for a session (Stripe's shape).
pub fn sandbox_event(event_type: &str, session_id: &str, user_id: &str, paid: bool) -> Value {
    serde_json::json!({
        "id": format!("evt_sandbox_{}", Uuid::new_v4().simple()),
        "object": "event",
        "type": event_type,
        "created": Utc::now().timestamp(),
        "data": {"object": {
            "id": session_id,
            "object": "checkout.session",
            "payment_status": if paid { "paid" } else { "unpaid" },
            "metadata": {"userId": user_id},
        }},
    })
}

/// Stripe Checkout Sessions over HTTP (`POST /v1/checkout/sessions`).
pub struct StripePayments {
    settings: StripeSettings,
    /// Where Stripe sends the customer back (`?checkout=success|canceled` is appended).
    return_url: String,
    client: reqwest::Client,
}

impl StripePayments {
    pub fn new(settings: StripeSettings, return_url: String) -> Self {
        StripePayments {
            settings,
            return_url,
            client: reqwest::Client::new(),
        }
    }

    /// The form fields of a Checkout Session for `request`.
    pub fn session_form(&self, request: &CheckoutRequest) -> Vec<(String, String)> {
        let now = Utc::now().timestamp();
        // Stripe accepts expiries from 30 minutes to 24 hours ahead.
        let expires_at = request
            .expires_at
            .timestamp()
            .clamp(now + 31 * 60, now + 24 * 3600 - 60);
        let back = |outcome: &str| {
            let separator = if self.return_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{}{separator}checkout={outcome}", self.return_url)
        };
        [
            ("mode", "payment".to_string()),
            ("client_reference_id", request.transaction_id.clone()),
            ("metadata[userId]", request.user_id.clone()),
            ("metadata[transactionId]", request.transaction_id.clone()),
            ("line_items[0][quantity]", "1".to_string()),
            (
                "line_items[0][price_data][currency]",
                request.currency.clone(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                request.price_cents.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                format!("{} Talkamie coins", request.coins),
            ),
            ("expires_at", expires_at.to_string()),
            ("success_url", back("success")),
            ("cancel_url", back("canceled")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[async_trait::async_trait]
impl PaymentProvider for StripePayments {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_session(
        &self,
        request: &CheckoutRequest,
    ) -> Result<CheckoutSession, ProviderError> {
        let url = format!(
            "{}/v1/checkout/sessions",
            self.settings.api_base.trim_end_matches('/')
        );
        let response = self
            .client
            .post(url)
            .bearer_auth(&self.settings.secret_key)
            // A retried top-up never opens a second session.
            .header("Idempotency-Key", &request.transaction_id)
            .form(&self.session_form(request))
            .timeout(std::time::Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| ProviderError(e.to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ProviderError(format!("unreadable answer: {e}")))?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(ProviderError(format!(
                "Stripe answered {status}: {message}"
            )));
        }
        match (
            body.get("id").and_then(Value::as_str),
            body.get("url").and_then(Value::as_str),
        ) {
            (Some(id), Some(url)) => Ok(CheckoutSession {
                id: id.to_string(),
                url: url.to_string(),
            }),
            _ => Err(ProviderError("Stripe's session has no id or url".into())),
        }
    }

    fn signature_header(&self) -> &'static str {
        "stripe-signature"
    }

    fn webhook_secret(&self) -> &[u8] {
        self.settings.webhook_secret.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_within_the_tolerance_only() {
        let now = Utc::now();
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(b"secret", now.timestamp(), body);
        assert_eq!(verify_signature(b"secret", &header, body, now), Ok(()));
        assert_eq!(
            verify_signature(b"other", &header, body, now),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(b"secret", &header, br#"{"id":"evt_2"}"#, now),
            Err(WebhookError::BadSignature)
        );
        let later = now + chrono::Duration::seconds(SIGNATURE_TOLERANCE_SECS + 1);
        assert_eq!(
            verify_signature(b"secret", &header, body, later),
            Err(WebhookError::Stale)
        );
        // Rolling secrets: any matching v1 counts.
        let rolled = format!("{header},v1=00ff");
        assert_eq!(verify_signature(b"secret", &rolled, body, now), Ok(()));
        assert_eq!(
            verify_signature(b"secret", "v1=abc", body, now),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn stripe_events_map_to_outcomes() {
        let event = |kind: &str, status: &str| {
            serde_json::json!({"id": "evt", "type": kind, "data": {"object": {
                "id": "cs_1", "payment_status": status, "metadata": {"userId": "u1"}}}})
            .to_string()
        };
        let outcome = |kind: &str, status: &str| {
            parse_event(event(kind, status).as_bytes()).map(|n| n.outcome)
        };
        assert_eq!(
            outcome("checkout.session.completed", "paid"),
            Ok(SessionOutcome::Paid)
        );
        assert_eq!(
            outcome("checkout.session.completed", "unpaid"),
            Ok(SessionOutcome::Ignored)
        );
        assert_eq!(
            outcome("checkout.session.expired", "unpaid"),
            Ok(SessionOutcome::Unpaid(TopUpOutcome::Expired))
        );
        assert_eq!(
            outcome("checkout.session.async_payment_failed", "unpaid"),
            Ok(SessionOutcome::Unpaid(TopUpOutcome::Failed))
        );
        assert_eq!(outcome("invoice.paid", "paid"), Ok(SessionOutcome::Ignored));
        assert!(parse_event(b"not json").is_err());
        let notice = parse_event(event("checkout.session.completed", "paid").as_bytes());
        assert_eq!(notice.map(|n| n.user_id), Ok(Some("u1".to_string())));
    }
}
