//! Section 9: top-up sessions, withdrawals and the transaction lists. The money rules live in
//! the Wallet aggregate; these handlers check the input's shape, talk to the providers and
//! answer from the `ledger_transactions` read model.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use talkamie_aggregates::wallet::{TopUp, WalletCommand, WalletEvent, MAX_COINS};
use talkamie_projections::ledger::{self, TransactionList, TransactionRow};
use talkamie_projections::sealing;
use utoipa::ToSchema;

use super::envelope::{created, ok, ok_page, ApiError};
use super::pagination::{time_id_keyset, time_id_sort_key, PageQuery, Pager};
use super::users::me;
use super::validate::is_plausible_email;
use crate::auth::Authenticated;
use crate::ledger::{execute, settle_withdrawal, transaction_id};
use crate::providers::payments::CheckoutRequest;
use crate::state::AppState;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;
const CURRENCY: &str = "usd";

/// The `Idempotency-Key` header, if any.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_IDEMPOTENCY_KEY_CHARS)
        .ok_or_else(|| {
            ApiError::invalid(json!({"Idempotency-Key": "must be 1 to 200 visible characters"}))
        })?;
    Ok(Some(key.to_string()))
}

/// A coin amount: a whole number from 1 to `MAX_COINS` (not a string, not a fraction).
fn coins(value: &Value) -> Result<i64, ApiError> {
    value
        .as_i64()
        .filter(|c| (1..=MAX_COINS).contains(c))
        .ok_or_else(|| {
            ApiError::invalid(json!({
                "coins": format!("must be a whole number from 1 to {MAX_COINS}")
            }))
        })
}

/// What `coins` cost: a package's price, else the configured rate rounded up to a cent.
fn price_cents(state: &AppState, coins: i64) -> i64 {
    let settings = &state.settings.coins;
    settings
        .packages
        .iter()
        .find(|p| p.coins as i64 == coins)
        .map(|p| p.price_cents as i64)
        .unwrap_or_else(|| {
            let per_usd = settings.coins_per_usd as i64;
            (coins * 100 + per_usd - 1) / per_usd
        })
}

/// My transaction `id`, or 404.
async fn my_transaction(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<TransactionRow, ApiError> {
    ledger::find((&state.store.db).into(), id)
        .await?
        .filter(|t| t.user_id == who.user_id)
        .ok_or_else(|| ApiError::not_found("transaction"))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TopUpBody {
    /// Whole coins, at least `minPurchaseCoins`
    #[schema(value_type = i64)]
    coins: Value,
}

/// Opens a payment session for `coins`: `{session:{id,url}, transaction}` (seniors and
/// volunteers; admins have no wallet).
/// With `Idempotency-Key`, a retry answers the session of the first request.
#[utoipa::path(tag = "finance", security(("bearer" = [])), request_body = TopUpBody,
    responses((status = 201, description = "{session:{id,url}, transaction}"),
              (status = 403, description = "admins have no wallet"),
              (status = 422, description = "below_minimum: fewer coins than minPurchaseCoins"),
              (status = 502, description = "provider_unavailable: the payment provider refused")))]
#[post("/v1/web/finance/top-up/session")]
pub async fn top_up_session(
    state: web::Data<AppState>,
    who: Authenticated,
    req: HttpRequest,
    body: web::Json<TopUpBody>,
) -> Result<HttpResponse, ApiError> {
    let coins = coins(&body.coins)?;
    let user = me(&state, &who).await?;
    if user.user_type == "admin" {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "admins have no wallet",
        ));
    }
    let key = idempotency_key(&req)?;
    let transaction_id = transaction_id(&who.user_id, key.as_deref());
    // Only a retry under the same key can find its transaction: a fresh random id is new.
    let existing = match key {
        Some(_) => ledger::find((&state.store.db).into(), &transaction_id).await?,
        None => None,
    };
    if let Some(existing) = existing {
        if existing.user_id == who.user_id && existing.kind == "purchase" {
            return Ok(created(top_up_answer(&existing)));
        }
    }
    let now = Utc::now();
    let request = CheckoutRequest {
        transaction_id: transaction_id.clone(),
        user_id: who.user_id.clone(),
        coins,
        price_cents: price_cents(&state, coins),
        currency: CURRENCY.into(),
        expires_at: now + Duration::seconds(state.settings.ledger.top_up_ttl_secs as i64),
    };
    // Checked before the provider is asked, so a refused amount opens no session there.
    if coins < state.settings.coins.min_purchase_coins as i64 {
        return Err(crate::ledger::wallet_rejected(
            talkamie_aggregates::wallet::WalletError::BelowMinimumPurchase(
                state.settings.coins.min_purchase_coins as i64,
            ),
        ));
    }
    let session = state.payments.create_session(&request).await.map_err(|e| {
        tracing::warn!(error = %e, "payment provider refused a session");
        ApiError::new(
            actix_web::http::StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            "the payment provider is unavailable; try again shortly",
        )
    })?;
    let command = WalletCommand::OpenTopUp {
        top_up: TopUp {
            transaction_id: transaction_id.clone(),
            session_id: session.id,
            provider: state.payments.name().to_string(),
            url: session.url,
            coins,
            funds_cents: request.price_cents,
            currency: request.currency,
            expires_at: request.expires_at,
            at: now,
        },
        min_coins: state.settings.coins.min_purchase_coins as i64,
    };
    let events = execute(&state, &who.user_id, command, who.metadata()).await?;
    // Without a key the transaction is new: answered from the event it stored, as the ledger
    // projection writes it. With a key it is read back: a retry that raced the first request
    // (or outlived its crash) opened a second provider session for the same transaction, and
    // the answer must be the first one's, which the ledger keeps.
    let opened = events.iter().find_map(|event| match event {
        WalletEvent::TopUpOpened(top_up) if key.is_none() => {
            Some(ledger::opened_top_up(&who.user_id, top_up))
        }
        _ => None,
    });
    let row = match opened {
        Some(row) => row,
        None => my_transaction(&state, &who, &transaction_id).await?,
    };
    Ok(created(top_up_answer(&row)))
}

fn top_up_answer(row: &TransactionRow) -> Value {
    json!({
        "session": {"id": row.session_id, "url": row.session_url},
        "transaction": row.to_json(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PaypalAccount {
    email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WithdrawBody {
    #[schema(value_type = i64)]
    coins: Value,
    /// Where the payout goes; defaults to the PayPal email of my profile
    paypal: Option<PaypalAccount>,
}

/// Withdraws coins to PayPal (volunteers only): the coins leave the balance at once and the
/// transaction is `pending` until the payout provider settles it (`succeeded`, or `failed` and
/// refunded). With `Idempotency-Key`, a retry answers the first transaction.
#[utoipa::path(tag = "finance", security(("bearer" = [])), request_body = WithdrawBody,
    responses((status = 201, description = "{transaction}"),
              (status = 403, description = "volunteers only"),
              (status = 409, description = "insufficient_coins, withdrawal_in_flight"),
              (status = 422, description = "below_minimum, over_limit (withdrawalLimitCoins30d)")))]
#[post("/v1/finance/withdraw")]
pub async fn withdraw(
    state: web::Data<AppState>,
    who: Authenticated,
    req: HttpRequest,
    body: web::Json<WithdrawBody>,
) -> Result<HttpResponse, ApiError> {
    let coins = coins(&body.coins)?;
    let user = me(&state, &who).await?;
    let email = match &body.paypal {
        Some(paypal) => paypal.email.trim().to_string(),
        None => user.paypal_email.clone().unwrap_or_default(),
    };
    if !is_plausible_email(&email) {
        return Err(ApiError::invalid(
            json!({"paypal.email": "a valid PayPal email is required"}),
        ));
    }
    let key = idempotency_key(&req)?;
    let transaction_id = transaction_id(&who.user_id, key.as_deref());
    let seal_key = sealing::key(&state.store.db, &who.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let settings = &state.settings.coins;
    let command = WalletCommand::RequestWithdrawal {
        transaction_id: transaction_id.clone(),
        coins,
        funds_cents: coins * 100 / settings.coins_per_usd as i64,
        currency: CURRENCY.into(),
        paypal_email: seal_key.seal(&email),
        is_volunteer: user.user_type == "volunteer",
        min_coins: settings.min_withdrawal_coins as i64,
        limit_30d: settings.withdrawal_limit_coins_30d as i64,
        at: Utc::now(),
    };
    let events = execute(&state, &who.user_id, command, who.metadata()).await?;
    let row = my_transaction(&state, &who, &transaction_id).await?;
    if !events.is_empty() {
        // Settled in the background: the answer does not wait for the payout provider.
        let state = state.clone();
        let user_id = who.user_id.clone();
        tokio::spawn(async move { settle_withdrawal(&state, &user_id, &transaction_id).await });
    }
    Ok(created(json!({ "transaction": row.to_json() })))
}

/// One page of my transactions of one list, newest first.
async fn transaction_page(
    state: &AppState,
    who: &Authenticated,
    list: TransactionList,
    name: &'static str,
    page: &PageQuery,
) -> Result<HttpResponse, ApiError> {
    let pager = Pager::new(&state.hash_key, name, &who.user_id, page)?;
    let after = time_id_keyset(pager.after(page)?)?;
    let (mut rows, total) = ledger::page(
        (&state.store.db).into(),
        &who.user_id,
        list,
        after,
        pager.page_size + 1,
    )
    .await?;
    let has_more = pager.trim(&mut rows);
    let last = rows.last().map(|t| time_id_sort_key(t.created_at, &t.id));
    let data: Vec<Value> = rows.iter().map(TransactionRow::to_json).collect();
    Ok(ok_page(
        data,
        pager.pagination(last.as_ref(), has_more, total),
    ))
}

/// All my transactions, newest first: `basic_transaction[]`.
#[utoipa::path(tag = "finance", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_transaction[] with pagination")))]
#[get("/v1/finance/transactions")]
pub async fn transactions(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    transaction_page(&state, &who, TransactionList::All, "transactions", &page).await
}

/// My coin purchases (top-ups).
#[utoipa::path(tag = "finance", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_transaction[] with pagination")))]
#[get("/v1/finance/purchases")]
pub async fn purchases(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    transaction_page(&state, &who, TransactionList::Purchases, "purchases", &page).await
}

/// My earnings from calls.
#[utoipa::path(tag = "finance", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_transaction[] with pagination")))]
#[get("/v1/finance/earnings")]
pub async fn earnings(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    transaction_page(&state, &who, TransactionList::Earnings, "earnings", &page).await
}

/// My withdrawals, and the refunds of failed payouts.
#[utoipa::path(tag = "finance", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, description = "basic_transaction[] with pagination")))]
#[get("/v1/finance/withdrawals")]
pub async fn withdrawals(
    state: web::Data<AppState>,
    who: Authenticated,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    transaction_page(
        &state,
        &who,
        TransactionList::Withdrawals,
        "withdrawals",
        &page,
    )
    .await
}

/// One of my transactions: `{transaction}`.
#[utoipa::path(tag = "finance", security(("bearer" = [])),
    responses((status = 200, description = "{transaction}"), (status = 404)))]
#[get("/v1/finance/transaction/{id}")]
pub async fn transaction(
    state: web::Data<AppState>,
    who: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = my_transaction(&state, &who, &id).await?;
    Ok(ok(json!({ "transaction": row.to_json() })))
}
