//! The billing saga of a call. When a call has ended:
//!
//! 1. charge the senior's Wallet the call's price (per started minute; capped at the balance),
//!    as transaction `charge`, linked to the call;
//! 2. credit the volunteer's Wallet their share of what was charged (`earning`; the platform's
//!    rest goes to revenue in the same double entry);
//! 3. record on the Call what was charged and earned (`Billed`): the saga's end, and the
//!    moment `call.ended` (with each side's new balance) and `user.coins.low` are pushed.
//!
//! Each step is idempotent on its own aggregate (a wallet charges and credits a call once, a
//! call is billed once), and the transaction ids derive from the call, so running the saga
//! again after a crash at any point finishes it without paying twice. The server runs it right
//! after a call ends; the sweep runs it for ended calls left unbilled (a crash, a database
//! outage). Rebuilding the read models replays no money: only commands move coins.

use chrono::Duration;
use talkamie_aggregates::call::CallCommand;
use talkamie_aggregates::wallet::{accounts, WalletCommand, WalletEvent};
use talkamie_projections::calls::{self, CallRow};
use talkamie_projections::ledger as ledger_model;

use crate::http::envelope::ApiError;
use crate::ledger;
use crate::state::AppState;
use crate::store::{system_metadata, Metadata};

/// Ended calls this long unbilled are the sweep's. Younger ones are usually still being billed
/// by the request or timer that ended them; running both at once is harmless (every step is
/// idempotent), only wasted work.
const BILLING_GRACE: Duration = Duration::seconds(10);
const SWEEP_BATCH: i64 = 100;

fn charge_id(call: &CallRow) -> String {
    ledger::transaction_id(&call.caller_id, Some(&format!("call-charge:{}", call.id)))
}

fn earning_id(call: &CallRow) -> String {
    ledger::transaction_id(&call.callee_id, Some(&format!("call-earning:{}", call.id)))
}

/// Runs (or finishes) the billing of an ended call. Nothing to do when it is billed already.
pub async fn settle(state: &AppState, call_id: &str) -> Result<(), ApiError> {
    let db = &state.store.db;
    let Some(call) = calls::find(db.into(), call_id).await? else {
        return Err(ApiError::not_found("call"));
    };
    if call.status != "ended" || call.billed_at.is_some() {
        return Ok(());
    }
    let metadata = system_metadata("billing");
    let (charged, balance_after) = charge(state, &call, &metadata).await?;
    let share = state.settings.coins.volunteer_share_percent.min(100) as i64;
    let mut earned = charged * share / 100;
    if charged > 0 {
        let credit = WalletCommand::CreditCallEarning {
            transaction_id: earning_id(&call),
            call_id: call.id.clone(),
            gross_coins: charged,
            volunteer_coins: earned,
            at: state.clock.now(),
        };
        let events = ledger::execute(state, &call.callee_id, credit, metadata.clone()).await?;
        if events.is_empty() {
            // Credited by an earlier run (maybe under another share setting): record that.
            ledger_caught_up(state).await?;
            if let Some(row) = ledger_model::find(db.into(), &earning_id(&call)).await? {
                earned = row.coins.abs();
            }
        }
    }
    let record = CallCommand::Settle {
        charged_coins: charged,
        earned_coins: earned,
        balance_after,
        low_balance_coins: state.settings.coins.low_balance_coins as i64,
        at: state.clock.now(),
    };
    super::execute(state, &call.id, record, metadata).await?;
    Ok(())
}

/// Step 1: `(coins charged, the senior's balance after)`.
async fn charge(
    state: &AppState,
    call: &CallRow,
    metadata: &Metadata,
) -> Result<(i64, i64), ApiError> {
    let senior = &call.caller_id;
    if call.price_coins > 0 {
        let command = WalletCommand::ChargeCall {
            transaction_id: charge_id(call),
            call_id: call.id.clone(),
            coins: call.price_coins,
            at: state.clock.now(),
        };
        let events = ledger::execute(state, senior, command, metadata.clone()).await?;
        for event in events {
            if let WalletEvent::Posted(posting) = event {
                let wallet = accounts::user(senior);
                let taken: i64 = posting
                    .lines
                    .iter()
                    .filter(|line| line.account == wallet)
                    .map(|line| -line.coins)
                    .sum();
                return Ok((taken, posting.balance));
            }
        }
        // No posting: an earlier run charged it (read it back once the ledger has it), or the
        // balance was empty and there was nothing to take.
        ledger_caught_up(state).await?;
    }
    let db = &state.store.db;
    let charged = ledger_model::find(db.into(), &charge_id(call))
        .await?
        .map_or(0, |row| row.coins.abs());
    let balance = ledger_model::balance(db.into(), senior).await?;
    Ok((charged, balance))
}

/// Waits until the read models include every committed event (what an earlier run posted).
async fn ledger_caught_up(state: &AppState) -> Result<(), ApiError> {
    state
        .store
        .projector
        .catch_up()
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// Finishes the billing of calls that ended a while ago and are still unbilled.
pub async fn sweep(state: &AppState) -> Result<(), ApiError> {
    let before = state.clock.now() - BILLING_GRACE;
    for call_id in calls::unbilled((&state.store.db).into(), before, SWEEP_BATCH).await? {
        tracing::info!(%call_id, "finishing the billing of an ended call");
        match settle(state, &call_id).await {
            // The chat line may be missing too (it is posted once per call, by id).
            Ok(()) => super::post_call_message(state, &call_id).await,
            Err(error) => {
                tracing::warn!(%call_id, error = %error.message, "billing failed; retrying later")
            }
        }
    }
    Ok(())
}
