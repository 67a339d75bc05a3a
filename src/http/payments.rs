//! The payment webhook (`POST /v1/webhooks/payments`) and the sandbox checkout pages.
//!
//! The webhook trusts nothing but the signature: the amount credited is the one the wallet
//! recorded when the session was opened. A delivery whose exact signature was already processed
//! is a replay (409); a provider's genuine retry carries a fresh signature and is answered 200
//! without moving a coin (the wallet credits a session once).

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use talkamie_aggregates::wallet::WalletCommand;
use talkamie_projections::ledger::{self, TransactionRow};
use talkamie_projections::with_pool;

use super::envelope::{ok, ApiError};
use crate::ledger::execute;
use crate::providers::payments::{
    sandbox_event, sign, verify_webhook, SessionOutcome, WebhookError, SANDBOX_CANCELED,
    SANDBOX_SIGNATURE_HEADER,
};
use crate::state::AppState;
use crate::store::Metadata;

fn webhook_rejected(error: WebhookError) -> ApiError {
    let code = match error {
        WebhookError::MissingSignature | WebhookError::BadSignature => "invalid_signature",
        WebhookError::Stale => "stale_signature",
        WebhookError::Malformed(_) => "invalid_input",
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
}

/// Largest webhook body accepted (provider events are a few KiB).
const WEBHOOK_LIMIT_BYTES: usize = 256 * 1024;

/// The raw body, bytes as signed (any encoding), with errors in the contract's envelope.
async fn read_body(mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the body cannot be read: {e}")))?;
        if body.len() + chunk.len() > WEBHOOK_LIMIT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {WEBHOOK_LIMIT_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Remembers a processed delivery; `false` when it was seen before (a replay).
async fn first_delivery(
    state: &AppState,
    signature: &str,
    event_id: &str,
) -> Result<bool, ApiError> {
    let inserted = with_pool!(&state.store.db, pool => {
        sqlx::query(
            "INSERT INTO webhook_deliveries (signature, provider, event_id, received_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (signature) DO NOTHING",
        )
        .bind(signature)
        .bind(state.payments.name())
        .bind(event_id)
        .bind(Utc::now())
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(inserted == 1)
}

/// The provider's signed event about a checkout session. Answers `null`.
#[utoipa::path(tag = "finance",
    responses((status = 200, description = "null"), (status = 400, description = "bad or stale signature"),
              (status = 404, description = "unknown session"), (status = 409, description = "replayed delivery")))]
#[post("/v1/webhooks/payments")]
pub async fn payment_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload).await?;
    let notice = verify_webhook(state.payments.as_ref(), req.headers(), &body, Utc::now())
        .map_err(webhook_rejected)?;
    let signature = req
        .headers()
        .get(state.payments.signature_header())
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !first_delivery(&state, signature, &notice.event_id).await? {
        return Err(ApiError::conflict(
            "replayed",
            "this delivery was already processed",
        ));
    }
    let command = match notice.outcome {
        SessionOutcome::Ignored => return Ok(ok(())),
        SessionOutcome::Paid => WalletCommand::CreditTopUp {
            session_id: notice.session_id.clone(),
            at: Utc::now(),
        },
        SessionOutcome::Unpaid(outcome) => WalletCommand::CloseTopUp {
            session_id: notice.session_id.clone(),
            outcome,
            at: Utc::now(),
        },
    };
    let user_id = match notice.user_id {
        Some(user) => user,
        None => ledger::find_by_session((&state.store.db).into(), &notice.session_id)
            .await?
            .map(|t| t.user_id)
            .ok_or_else(|| ApiError::not_found("payment session"))?,
    };
    let metadata = Metadata::from([
        (
            "actor".to_string(),
            format!("{}-webhook", state.payments.name()),
        ),
        ("eventId".to_string(), notice.event_id.clone()),
    ]);
    execute(&state, &user_id, command, metadata).await?;
    Ok(ok(()))
}

/// The sandbox session `id`, if the sandbox provider is the one in use.
async fn sandbox_session(state: &AppState, id: &str) -> Result<TransactionRow, HttpResponse> {
    let found = if state.payments.name() == "sandbox" {
        ledger::find_by_session((&state.store.db).into(), id)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    found.ok_or_else(|| {
        page(
            StatusCode::NOT_FOUND,
            "Unknown payment",
            "<p>There is no payment session with this address.</p>",
        )
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Talkamie sandbox checkout</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; color: #222; }}
 .card {{ border: 1px solid #ddd; border-radius: 12px; padding: 1.5rem; }}
 .amount {{ font-size: 2rem; font-weight: 600; }}
 button {{ font-size: 1.1rem; padding: .7rem 1.4rem; border-radius: 8px; border: 0; cursor: pointer; }}
 #pay {{ background: #1a7f37; color: white; }} #cancel {{ background: #eee; }}
 .note {{ color: #666; font-size: .9rem; }}
</style></head>
<body><div class="card"><h1 id="title">{title}</h1>{body}
<p class="note">Sandbox payment page: no real money moves.</p></div></body></html>"#,
        title = escape(title),
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html)
}

fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// The sandbox checkout page of a session: what is bought, for how much, Pay and Cancel.
#[utoipa::path(tag = "finance", responses((status = 200, description = "HTML page"),
    (status = 404, description = "HTML page: unknown payment session")))]
#[get("/v1/sandbox/checkout/{id}")]
pub async fn checkout_page(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let session = match sandbox_session(&state, &id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let summary = format!(
        r#"<p class="amount" id="amount">{}</p><p id="coins">{} coins</p>"#,
        dollars(session.funds_cents),
        session.coins
    );
    if session.status != "pending" {
        let body = format!(
            r#"{summary}<p id="status" data-status="{0}">This payment is {0}.</p>"#,
            escape(&session.status)
        );
        return page(StatusCode::OK, "Payment closed", &body);
    }
    let id = escape(&id);
    let body = format!(
        r#"{summary}<p id="status" data-status="pending">Waiting for payment.</p>
<form method="post" action="/v1/sandbox/checkout/{id}/pay" style="display:inline">
  <button id="pay" type="submit">Pay {}</button></form>
<form method="post" action="/v1/sandbox/checkout/{id}/cancel" style="display:inline">
  <button id="cancel" type="submit">Cancel</button></form>"#,
        dollars(session.funds_cents)
    );
    page(StatusCode::OK, "Buy coins", &body)
}

/// Pay: the sandbox sends the signed `checkout.session.completed` webhook to this server.
#[utoipa::path(tag = "finance", responses((status = 200, description = "HTML page"),
    (status = 404, description = "HTML page: unknown payment session"),
    (status = 409, description = "HTML page: the payment is closed"),
    (status = 502, description = "HTML page: the webhook could not be delivered")))]
#[post("/v1/sandbox/checkout/{id}/pay")]
pub async fn checkout_pay(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    finish_checkout(&state, &id, true).await
}

/// Cancel: the sandbox sends the signed cancel webhook.
#[utoipa::path(tag = "finance", responses((status = 200, description = "HTML page"),
    (status = 404, description = "HTML page: unknown payment session"),
    (status = 409, description = "HTML page: the payment is closed"),
    (status = 502, description = "HTML page: the webhook could not be delivered")))]
#[post("/v1/sandbox/checkout/{id}/cancel")]
pub async fn checkout_cancel(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    finish_checkout(&state, &id, false).await
}

async fn finish_checkout(state: &AppState, id: &str, pay: bool) -> HttpResponse {
    let session = match sandbox_session(state, id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let expired = session.expires_at.is_some_and(|t| t < Utc::now());
    if session.status != "pending" || expired {
        let status = if expired { "expired" } else { &session.status };
        let body = format!(
            r#"<p id="status" data-status="{0}">This payment is {0}; nothing was charged.</p>"#,
            escape(status)
        );
        return page(StatusCode::CONFLICT, "Payment closed", &body);
    }
    let event_type = if pay {
        "checkout.session.completed"
    } else {
        SANDBOX_CANCELED
    };
    let event = sandbox_event(event_type, id, &session.user_id, pay);
    let body = event.to_string();
    let signature = sign(
        state.payments.webhook_secret(),
        Utc::now().timestamp(),
        body.as_bytes(),
    );
    // A real HTTP delivery to our own webhook, exactly as a provider would make it.
    let url = format!("{}/v1/webhooks/payments", state.internal_url);
    let delivered = reqwest::Client::new()
        .post(url)
        .header(SANDBOX_SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body)
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await;
    match delivered {
        Ok(response) if response.status().is_success() => {
            let (status, title, text) = if pay {
                (
                    "succeeded",
                    "Payment received",
                    "Your coins are in your wallet.",
                )
            } else {
                ("canceled", "Payment canceled", "Nothing was charged.")
            };
            let body = format!(
                r#"<p class="amount">{} coins</p><p id="status" data-status="{status}">{text}</p>"#,
                session.coins
            );
            page(StatusCode::OK, title, &body)
        }
        Ok(response) => {
            tracing::warn!(status = %response.status(), "sandbox webhook refused");
            page(
                StatusCode::BAD_GATEWAY,
                "Payment not recorded",
                r#"<p id="status" data-status="error">The payment could not be recorded; nothing was charged.</p>"#,
            )
        }
        Err(error) => {
            tracing::warn!(%error, "sandbox webhook not delivered");
            page(
                StatusCode::BAD_GATEWAY,
                "Payment not recorded",
                r#"<p id="status" data-status="error">The payment could not be recorded; nothing was charged.</p>"#,
            )
        }
    }
}
