//! The coins ledger around the Wallet aggregate: running wallet commands, settling withdrawals
//! with the payout provider, the sweeper that closes what is left open, and the audit.

pub mod audit;

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use talkamie_aggregates::user::Sealed;
use talkamie_aggregates::wallet::{TopUpOutcome, Wallet, WalletCommand, WalletError, WalletEvent};
use talkamie_projections::ledger::{self, Overdue};
use talkamie_projections::{sealing, with_pool, Db};
use tokio::sync::watch;
use uuid::Uuid;

use crate::http::envelope::ApiError;
use crate::providers::payouts::{PayoutRequest, PayoutResult};
use crate::state::AppState;
use crate::store::Metadata;

/// Namespace of ledger transaction ids derived from other ids (idempotency keys, refunds).
const TRANSACTION_NAMESPACE: Uuid = Uuid::from_u128(0x3e8b_1f4c_2a6d_4d95_9c07_b5e1_64fa_0d21);

/// A transaction id: derived from `(user, Idempotency-Key)` so a retry names the same
/// transaction, or fresh without a key.
pub fn transaction_id(user_id: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => Uuid::new_v5(
            &TRANSACTION_NAMESPACE,
            format!("{user_id}\n{key}").as_bytes(),
        )
        .to_string(),
        None => Uuid::new_v4().to_string(),
    }
}

/// The id of the refund of a failed withdrawal.
pub fn refund_id(withdrawal_id: &str) -> String {
    Uuid::new_v5(
        &TRANSACTION_NAMESPACE,
        format!("refund\n{withdrawal_id}").as_bytes(),
    )
    .to_string()
}

/// How a broken wallet rule is answered.
pub fn wallet_rejected(error: WalletError) -> ApiError {
    let message = error.to_string();
    match error {
        WalletError::InvalidAmount => ApiError::invalid(json!({ "coins": message })),
        WalletError::BelowMinimumPurchase(_) | WalletError::BelowMinimum(_) => {
            ApiError::unprocessable("below_minimum", message)
        }
        WalletError::NotAVolunteer => {
            ApiError::new(actix_web::http::StatusCode::FORBIDDEN, "forbidden", message)
        }
        WalletError::InsufficientCoins(_) => ApiError::conflict("insufficient_coins", message),
        WalletError::OverLimit { .. } => ApiError::unprocessable("over_limit", message),
        WalletError::NotPending => ApiError::conflict("conflict", message),
        WalletError::UnknownSession => ApiError::not_found("payment session"),
        WalletError::WithdrawalInFlight => ApiError::conflict("withdrawal_in_flight", message),
    }
}

/// Runs a command on `user_id`'s wallet.
pub async fn execute(
    state: &AppState,
    user_id: &str,
    command: WalletCommand,
    metadata: Metadata,
) -> Result<Vec<WalletEvent>, ApiError> {
    state
        .store
        .execute::<Wallet>(user_id, (user_id.to_string(), command), metadata)
        .await
        .map_err(|e| ApiError::from_command(e, wallet_rejected))
}

fn system(actor: &str) -> Metadata {
    crate::store::system_metadata(actor)
}

/// The sealed PayPal email a withdrawal's payout goes to, from the wallet's stream.
async fn payout_destination(
    db: &Db,
    user_id: &str,
    transaction_id: &str,
) -> Result<Option<Sealed>, sqlx::Error> {
    let payloads: Vec<sqlx::types::Json<serde_json::Value>> = with_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT payload FROM events
              WHERE aggregate_type = 'Wallet' AND aggregate_id = $1 AND event_type = 'PayoutOrdered'",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await?
    });
    Ok(payloads.into_iter().find_map(|payload| {
        match serde_json::from_value::<WalletEvent>(payload.0) {
            Ok(WalletEvent::PayoutOrdered {
                transaction_id: id,
                paypal_email,
                ..
            }) if id == transaction_id => Some(paypal_email),
            _ => None,
        }
    }))
}

/// Sends a pending withdrawal's payout and records the answer: paid, or failed and refunded.
/// Safe to repeat: the provider is idempotent by transaction id and the wallet settles once.
pub async fn settle_withdrawal(state: &AppState, user_id: &str, transaction_id: &str) {
    if let Err(error) = try_settle(state, user_id, transaction_id).await {
        tracing::warn!(%error, transaction_id, "payout not settled yet; the sweeper retries");
    }
}

async fn try_settle(state: &AppState, user_id: &str, transaction_id: &str) -> anyhow::Result<()> {
    let db = &state.store.db;
    let Some(row) = ledger::find(db.into(), transaction_id).await? else {
        anyhow::bail!("no such withdrawal");
    };
    if row.status != "pending" {
        return Ok(());
    }
    let sealed = payout_destination(db, user_id, transaction_id).await?;
    let key = sealing::key(db, user_id).await?;
    let email = sealed.and_then(|s| sealing::open_with(key.as_ref(), &s));
    let result = match email {
        Some(paypal_email) => {
            let request = PayoutRequest {
                transaction_id: transaction_id.to_string(),
                paypal_email,
                amount_cents: row.funds_cents,
                currency: row.currency.clone(),
            };
            state.payouts.send(&request).await?
        }
        // The owner was deleted (their key is gone): nowhere to send it, so it is refunded.
        None => PayoutResult::Failed("no payout destination".into()),
    };
    if let PayoutResult::Failed(reason) = &result {
        tracing::info!(transaction_id, reason, "payout failed; refunding");
    }
    let command = WalletCommand::SettleWithdrawal {
        transaction_id: transaction_id.to_string(),
        succeeded: result == PayoutResult::Paid,
        refund_id: refund_id(transaction_id),
        at: Utc::now(),
    };
    match execute(state, user_id, command, system("payouts")).await {
        Ok(_) => Ok(()),
        // Another instance settled it first.
        Err(e) if e.code == "conflict" => Ok(()),
        Err(e) => Err(anyhow::anyhow!(e.to_string())),
    }
}

/// Before an account is deleted: its balance goes to platform revenue (409
/// `withdrawal_in_flight` while a payout is pending). A retried deletion forfeits once.
pub async fn forfeit_balance(
    state: &AppState,
    user_id: &str,
    metadata: Metadata,
) -> Result<(), ApiError> {
    let command = WalletCommand::Forfeit {
        transaction_id: transaction_id(user_id, Some("account-deleted")),
        at: Utc::now(),
    };
    execute(state, user_id, command, metadata).await?;
    Ok(())
}

/// Closes an unpaid top-up whose session expired.
async fn expire_top_up(state: &AppState, user_id: &str, session_id: &str) -> Result<(), ApiError> {
    let command = WalletCommand::CloseTopUp {
        session_id: session_id.to_string(),
        outcome: TopUpOutcome::Expired,
        at: Utc::now(),
    };
    execute(state, user_id, command, system("sweeper")).await?;
    Ok(())
}

/// Withdrawals younger than this are still being settled by the request that made them.
const SETTLING_GRACE: chrono::Duration = chrono::Duration::seconds(30);
const SWEEP_BATCH: i64 = 200;

/// One sweep: expire unpaid sessions, resume unsettled payouts, forget old webhook signatures.
pub async fn sweep(state: &AppState) -> Result<(), ApiError> {
    let db = &state.store.db;
    let now = Utc::now();
    for row in ledger::overdue(db.into(), Overdue::TopUps, now, SWEEP_BATCH).await? {
        if let Some(session) = &row.session_id {
            expire_top_up(state, &row.user_id, session).await?;
        }
    }
    let unsettled = now - SETTLING_GRACE;
    for row in ledger::overdue(db.into(), Overdue::Withdrawals, unsettled, SWEEP_BATCH).await? {
        settle_withdrawal(state, &row.user_id, &row.id).await;
    }
    let cutoff = now - chrono::Duration::hours(1);
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(())
}

/// The background sweeper; every instance runs one (the wallet makes repeats harmless).
pub async fn run_sweeper(state: actix_web::web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.settings.ledger.sweep_secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = sweep(&state).await {
            tracing::warn!(%error, "ledger sweep failed; retrying next tick");
        }
    }
}
