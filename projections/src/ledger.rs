//! Read models of the coins ledger, from the Wallet streams: `ledger_entries` (every line of
//! every posting), `ledger_accounts` (each account's balance; a user's wallet is `user:<id>`)
//! and `ledger_transactions` (`basic_transaction`, what a user sees of their money).
//!
//! The audit (`talkamie ledger audit`) recomputes all of this from the log and compares.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use talkamie_aggregates::wallet::{Kind, Posting, TopUp, TopUpOutcome, Wallet, WalletEvent};

use crate::db::{exec_together, last_state_by_id, Bind, Params, Source, Statement};
use crate::relations::iso;
use crate::{with_source, with_tx, DbTx, ProjectionError, StoredEvent};
use Bind::{Int, OptText, Text, Time};

pub const TABLES: &[&str] = &["ledger_entries", "ledger_accounts", "ledger_transactions"];

pub fn is_wallet_event(event: &StoredEvent) -> bool {
    event.aggregate_type == <Wallet as cqrs_es::Aggregate>::TYPE
}

/// A new row of `ledger_transactions`.
struct NewTransaction<'a> {
    id: &'a str,
    user_id: &'a str,
    kind: &'a str,
    intent: &'a str,
    status: &'a str,
    coins: i64,
    funds_cents: i64,
    currency: &'a str,
    call_id: Option<&'a str>,
    /// Top-ups: the payment session (id, provider, url, expiry).
    session: Option<(&'a str, &'a str, &'a str, DateTime<Utc>)>,
}

async fn insert_transaction(
    out: &mut Changed<'_>,
    event: &StoredEvent,
    row: NewTransaction<'_>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let (session_id, provider, url, expires_at) = match row.session {
        Some((session, provider, url, expires)) => {
            (Some(session), Some(provider), Some(url), Some(expires))
        }
        None => (None, None, None, None),
    };
    let sql = format!(
        "INSERT INTO ledger_transactions (id, user_id, type, intent, status, coins,
             funds_cents, currency, call_id, session_id, provider, session_url, expires_at,
             changed_position, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
         ON CONFLICT (id) DO NOTHING
         RETURNING {COLUMNS}"
    );
    let written: Option<TransactionRow> = with_tx!(out.tx, conn => {
        sqlx::query_as(&sql)
        .bind(row.id)
        .bind(row.user_id)
        .bind(row.kind)
        .bind(row.intent)
        .bind(row.status)
        .bind(row.coins)
        .bind(row.funds_cents)
        .bind(row.currency)
        .bind(row.call_id)
        .bind(session_id)
        .bind(provider)
        .bind(url)
        .bind(expires_at)
        .bind(event.position)
        .bind(at)
        .fetch_optional(conn)
        .await?
    });
    out.rows.extend(written);
    Ok(())
}

async fn set_status(
    out: &mut Changed<'_>,
    event: &StoredEvent,
    id: &str,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let sql = format!(
        "UPDATE ledger_transactions SET status = $2, changed_position = $3, updated_at = $4
          WHERE id = $1
          RETURNING {COLUMNS}"
    );
    let written: Option<TransactionRow> = with_tx!(out.tx, conn => {
        sqlx::query_as(&sql)
            .bind(id)
            .bind(status)
            .bind(event.position)
            .bind(at)
            .fetch_optional(conn)
            .await?
    });
    out.rows.extend(written);
    Ok(())
}

/// The transaction a top-up opens.
fn new_top_up<'a>(user_id: &'a str, top_up: &'a TopUp) -> NewTransaction<'a> {
    NewTransaction {
        id: &top_up.transaction_id,
        user_id,
        kind: "purchase",
        intent: "top-up",
        status: "pending",
        coins: top_up.coins,
        funds_cents: top_up.funds_cents,
        currency: &top_up.currency,
        call_id: None,
        session: Some((
            &top_up.session_id,
            &top_up.provider,
            &top_up.url,
            top_up.expires_at,
        )),
    }
}

/// The row the ledger projection writes for `user_id`'s opened `top_up` (the answer to the
/// request that opened it, without reading it back). `changed_position` is unknown here: 0.
pub fn opened_top_up(user_id: &str, top_up: &TopUp) -> TransactionRow {
    let new = new_top_up(user_id, top_up);
    TransactionRow {
        id: new.id.to_string(),
        user_id: new.user_id.to_string(),
        kind: new.kind.to_string(),
        intent: new.intent.to_string(),
        status: new.status.to_string(),
        coins: new.coins,
        funds_cents: new.funds_cents,
        currency: new.currency.to_string(),
        call_id: new.call_id.map(str::to_string),
        session_id: Some(top_up.session_id.clone()),
        provider: Some(top_up.provider.clone()),
        session_url: Some(top_up.url.clone()),
        expires_at: Some(top_up.expires_at),
        changed_position: 0,
        created_at: top_up.at,
    }
}

/// Where one event's transaction changes go: the projector's transaction, and the rows
/// written so far (the alerts projection makes its `transaction` alerts from them).
struct Changed<'t> {
    tx: &'t mut DbTx,
    rows: Vec<TransactionRow>,
}

/// Applies `event`; returns the transactions it created or changed, as [`changed_at`] would
/// read them back.
pub async fn apply(
    tx: &mut DbTx,
    event: &StoredEvent,
) -> Result<Vec<TransactionRow>, ProjectionError> {
    if !is_wallet_event(event) {
        return Ok(Vec::new());
    }
    let mut out = Changed {
        tx,
        rows: Vec::new(),
    };
    apply_into(&mut out, event).await?;
    // As `changed_at` reads them back.
    Ok(last_state_by_id(out.rows, |row| &row.id))
}

async fn apply_into(out: &mut Changed<'_>, event: &StoredEvent) -> Result<(), ProjectionError> {
    let user_id = event.aggregate_id.as_str();
    match event.decode::<WalletEvent>()? {
        WalletEvent::TopUpOpened(top_up) => {
            insert_transaction(out, event, new_top_up(user_id, &top_up), top_up.at).await?;
        }
        WalletEvent::TopUpClosed {
            transaction_id,
            outcome,
            at,
            ..
        } => {
            let status = match outcome {
                TopUpOutcome::Canceled => "canceled",
                TopUpOutcome::Expired => "expired",
                TopUpOutcome::Failed => "failed",
            };
            set_status(out, event, &transaction_id, status, at).await?;
        }
        WalletEvent::PayoutOrdered {
            transaction_id,
            funds_cents,
            currency,
            ..
        } => {
            with_tx!(out.tx, conn => {
                sqlx::query(
                    "UPDATE ledger_transactions SET funds_cents = $2, currency = $3 WHERE id = $1",
                )
                .bind(&transaction_id)
                .bind(funds_cents)
                .bind(&currency)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())?
            });
        }
        WalletEvent::Posted(posting) => {
            record_entries(out.tx, event, &posting).await?;
            posting_transactions(out, event, &posting).await?;
        }
    }
    Ok(())
}

/// The posting's lines, and the balances of the accounts they touch: one round trip on
/// PostgreSQL (each line was two statements of its own).
async fn record_entries(
    tx: &mut DbTx,
    event: &StoredEvent,
    posting: &Posting,
) -> Result<(), ProjectionError> {
    if posting.lines.is_empty() {
        return Ok(());
    }
    let wallet = format!("user:{}", event.aggregate_id);
    let kind = kind_name(posting.kind);
    let mut entries = Params::default();
    let entry_rows: Vec<String> = posting
        .lines
        .iter()
        .enumerate()
        .map(|(line_no, line)| {
            entries.row(&[
                Text(&event.aggregate_id),
                Int(event.sequence),
                Int(line_no as i64),
                Text(&posting.transaction_id),
                Text(kind),
                Text(&line.account),
                Int(line.coins),
                Time(posting.at),
            ])
        })
        .collect();
    // One row per account: an upsert may not touch a row twice, and two lines on one account
    // add up to the same balance either way.
    let mut moves: BTreeMap<&str, i64> = BTreeMap::new();
    for line in &posting.lines {
        *moves.entry(line.account.as_str()).or_default() += line.coins;
    }
    let mut accounts = Params::default();
    let account_rows: Vec<String> = moves
        .into_iter()
        .map(|(account, coins)| {
            let head = (account == wallet).then_some(posting.hash.as_str());
            accounts.row(&[Text(account), Int(coins), OptText(head), Time(posting.at)])
        })
        .collect();
    exec_together(
        tx,
        &[
            Statement {
                sql: format!(
                    "INSERT INTO ledger_entries (wallet_id, sequence, line, transaction_id, kind,
                                                 account, coins, at)
                     VALUES {}
                     ON CONFLICT (wallet_id, sequence, line) DO NOTHING",
                    entry_rows.join(", ")
                ),
                binds: entries.binds,
            },
            Statement {
                sql: format!(
                    "INSERT INTO ledger_accounts (account, balance, head_hash, updated_at)
                     VALUES {}
                     ON CONFLICT (account) DO UPDATE
                        SET balance = ledger_accounts.balance + excluded.balance,
                            head_hash = COALESCE(excluded.head_hash, ledger_accounts.head_hash),
                            updated_at = excluded.updated_at",
                    account_rows.join(", ")
                ),
                binds: accounts.binds,
            },
        ],
    )
    .await
}

/// What a posting means for the user's transactions.
async fn posting_transactions(
    out: &mut Changed<'_>,
    event: &StoredEvent,
    posting: &Posting,
) -> Result<(), ProjectionError> {
    let user_id = event.aggregate_id.as_str();
    let coins = posting
        .lines
        .first()
        .map(|l| l.coins.abs())
        .unwrap_or_default();
    let at = posting.at;
    match posting.kind {
        Kind::Purchase | Kind::Payout => {
            set_status(out, event, &posting.transaction_id, "succeeded", at).await?
        }
        Kind::Withdrawal => {
            let row = NewTransaction {
                id: &posting.transaction_id,
                user_id,
                kind: "withdrawal",
                intent: "withdraw",
                status: "pending",
                coins,
                funds_cents: 0,
                currency: "usd",
                call_id: None,
                session: None,
            };
            insert_transaction(out, event, row, at).await?;
        }
        Kind::Refund => {
            set_status(out, event, &posting.reference, "failed", at).await?;
            // The refund pays back what the withdrawal would have paid out: its row, as the
            // status change just returned it.
            let funds = out
                .rows
                .iter()
                .rev()
                .find(|row| row.id == posting.reference)
                .map(|row| (row.funds_cents, row.currency.clone()));
            let (funds_cents, currency) = funds.unwrap_or((0, "usd".into()));
            let row = NewTransaction {
                id: &posting.transaction_id,
                user_id,
                kind: "refund",
                intent: "withdraw",
                status: "succeeded",
                coins,
                funds_cents,
                currency: &currency,
                call_id: None,
                session: None,
            };
            insert_transaction(out, event, row, at).await?;
        }
        Kind::Forfeit => {
            // Only analysts see it: the owner's account is being deleted.
            let row = NewTransaction {
                id: &posting.transaction_id,
                user_id,
                kind: "forfeit",
                intent: "account-deleted",
                status: "succeeded",
                coins,
                funds_cents: 0,
                currency: "usd",
                call_id: None,
                session: None,
            };
            insert_transaction(out, event, row, at).await?;
        }
        Kind::Charge | Kind::Earning => {
            let row = NewTransaction {
                id: &posting.transaction_id,
                user_id,
                kind: kind_name(posting.kind),
                intent: "call",
                status: "succeeded",
                coins,
                funds_cents: 0,
                currency: "usd",
                call_id: Some(&posting.reference),
                session: None,
            };
            insert_transaction(out, event, row, at).await?;
        }
    }
    Ok(())
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Purchase => "purchase",
        Kind::Withdrawal => "withdrawal",
        Kind::Payout => "payout",
        Kind::Refund => "refund",
        Kind::Charge => "charge",
        Kind::Earning => "earning",
        Kind::Forfeit => "forfeit",
    }
}

/// One row of `ledger_transactions`.
#[derive(Debug, Clone, FromRow)]
pub struct TransactionRow {
    pub id: String,
    pub user_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub intent: String,
    pub status: String,
    pub coins: i64,
    pub funds_cents: i64,
    pub currency: String,
    pub call_id: Option<String>,
    pub session_id: Option<String>,
    pub provider: Option<String>,
    pub session_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub changed_position: i64,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, type, intent, status, coins, funds_cents, currency, call_id,
    session_id, provider, session_url, expires_at, changed_position, created_at";

impl TransactionRow {
    /// `basic_transaction` (contract section 9).
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "id": self.id,
            "type": self.kind,
            "intent": self.intent,
            "status": self.status,
            "funds": {"amount": self.funds_cents, "currency": self.currency},
            "coins": {"amount": self.coins},
            "timestamp": iso(self.created_at),
        });
        if let (Some(call), Value::Object(map)) = (&self.call_id, &mut out) {
            map.insert("call".into(), json!({ "id": call }));
        }
        out
    }
}

/// A user's wallet balance (0 before their first posting).
pub async fn balance(source: Source<'_>, user_id: &str) -> Result<i64, sqlx::Error> {
    let account = format!("user:{user_id}");
    let found: Option<i64> = with_source!(source, conn => {
        sqlx::query_scalar("SELECT balance FROM ledger_accounts WHERE account = $1")
            .bind(&account)
            .fetch_optional(conn)
            .await?
    });
    Ok(found.unwrap_or(0))
}

/// Which transactions a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionList {
    All,
    Purchases,
    Earnings,
    /// Withdrawals and the refunds of failed payouts.
    Withdrawals,
}

impl TransactionList {
    fn types(self) -> &'static str {
        match self {
            TransactionList::All => "",
            TransactionList::Purchases => " AND type = 'purchase'",
            TransactionList::Earnings => " AND type = 'earning'",
            TransactionList::Withdrawals => " AND type IN ('withdrawal', 'refund')",
        }
    }
}

/// One page of a user's transactions, newest first, after the keyset `(created_at, id)`.
pub async fn page(
    source: Source<'_>,
    user_id: &str,
    list: TransactionList,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<(Vec<TransactionRow>, i64), sqlx::Error> {
    let mut source = source;
    let filter = list.types();
    let count = format!("SELECT COUNT(*) FROM ledger_transactions WHERE user_id = $1{filter}");
    let total: i64 = with_source!(source.reborrow(), conn => {
        sqlx::query_scalar(&count).bind(user_id).fetch_one(conn).await?
    });
    let rows = match after {
        Some((at, id)) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM ledger_transactions WHERE user_id = $1{filter}
                    AND (created_at < $2 OR (created_at = $2 AND id < $3))
                  ORDER BY created_at DESC, id DESC LIMIT {limit}"
            );
            with_source!(source, conn => {
                sqlx::query_as::<_, TransactionRow>(&sql)
                    .bind(user_id).bind(at).bind(id).fetch_all(conn).await?
            })
        }
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM ledger_transactions WHERE user_id = $1{filter}
                  ORDER BY created_at DESC, id DESC LIMIT {limit}"
            );
            with_source!(source, conn => {
                sqlx::query_as::<_, TransactionRow>(&sql).bind(user_id).fetch_all(conn).await?
            })
        }
    };
    Ok((rows, total))
}

/// One transaction by id.
pub async fn find(source: Source<'_>, id: &str) -> Result<Option<TransactionRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM ledger_transactions WHERE id = $1");
    with_source!(source, conn => {
        sqlx::query_as::<_, TransactionRow>(&sql).bind(id).fetch_optional(conn).await
    })
}

/// The top-up of a payment session.
pub async fn find_by_session(
    source: Source<'_>,
    session_id: &str,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_transactions WHERE session_id = $1 AND type = 'purchase'"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, TransactionRow>(&sql).bind(session_id).fetch_optional(conn).await
    })
}

/// Transactions changed by the event at `position` (alerts and pushes follow them).
pub async fn changed_at(
    source: Source<'_>,
    position: i64,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_transactions WHERE changed_position = $1 ORDER BY id"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, TransactionRow>(&sql).bind(position).fetch_all(conn).await
    })
}

/// Pending transactions that waited too long, for the sweeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// Unpaid top-ups whose session expired before the given time.
    TopUps,
    /// Withdrawals requested before the given time and still waiting for their payout (a
    /// restarted server resumes them).
    Withdrawals,
}

/// Up to `limit` overdue transactions of one kind, oldest first.
pub async fn overdue(
    source: Source<'_>,
    which: Overdue,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    let (kind, since) = match which {
        Overdue::TopUps => ("purchase", "expires_at"),
        Overdue::Withdrawals => ("withdrawal", "created_at"),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_transactions
          WHERE status = 'pending' AND type = '{kind}' AND {since} < $1
          ORDER BY {since} LIMIT {limit}"
    );
    with_source!(source, conn => {
        sqlx::query_as::<_, TransactionRow>(&sql).bind(before).fetch_all(conn).await
    })
}

/// Every account's balance, as the read model has it.
pub async fn account_balances(source: Source<'_>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_as("SELECT account, balance FROM ledger_accounts ORDER BY account")
            .fetch_all(conn)
            .await
    })
}

/// Each wallet's head hash, as the read model has it.
pub async fn wallet_heads(source: Source<'_>) -> Result<Vec<(String, String)>, sqlx::Error> {
    with_source!(source, conn => {
        sqlx::query_as(
            "SELECT account, head_hash FROM ledger_accounts
              WHERE head_hash IS NOT NULL ORDER BY account",
        )
        .fetch_all(conn)
        .await
    })
}
