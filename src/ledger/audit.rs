//! The ledger audit (contract section 14): replays every Wallet event from the log and proves
//! every coin. Per wallet: the stream has no gaps, every event reads, every posting balances to
//! zero, the wallet never goes negative, each posting's balance follows from the previous one,
//! and the hash chain is unbroken. Over all wallets: the accounts sum to zero, and the read
//! models (`ledger_accounts`) agree. A root hash over all wallet heads fingerprints the ledger.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use talkamie_aggregates::wallet::{accounts, Posting, WalletEvent, GENESIS_HASH};
use talkamie_projections::{ledger, with_pool, Db};

use crate::store::Store;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Discrepancy {
    pub wallet: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub ok: bool,
    pub as_of: Option<String>,
    pub user: Option<String>,
    pub wallets: usize,
    pub events: usize,
    pub postings: usize,
    /// Every account's balance recomputed from the log.
    pub accounts: BTreeMap<String, i64>,
    /// The sum over all accounts (zero when every posting balances).
    pub sum: i64,
    /// SHA-256 over `wallet:head` lines of every wallet with postings, in wallet order.
    pub root_hash: String,
    pub discrepancies: Vec<Discrepancy>,
}

/// One Wallet event as stored.
struct RawEvent {
    wallet: String,
    sequence: i64,
    payload: Value,
    recorded_at: DateTime<Utc>,
}

async fn wallet_events(db: &Db, user: Option<&str>) -> Result<Vec<RawEvent>, sqlx::Error> {
    type Row = (String, i64, Json<Value>, DateTime<Utc>);
    let rows: Vec<Row> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT aggregate_id, sequence, payload, recorded_at FROM events
              WHERE aggregate_type = 'Wallet' AND ($1 IS NULL OR aggregate_id = $1)
              ORDER BY aggregate_id, sequence",
        )
        .bind(user)
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(wallet, sequence, payload, recorded_at)| RawEvent {
            wallet,
            sequence,
            payload: payload.0,
            recorded_at,
        })
        .collect())
}

/// What the replay of one wallet found.
#[derive(Default)]
struct WalletReplay {
    balance: i64,
    head: Option<String>,
    next_sequence: i64,
}

/// The audit of a live ledger: the read models may trail the log by a moment, so a report with
/// discrepancies is taken again once they have caught up, and only what persists is reported.
pub async fn audit_settled(
    store: &Store,
    user: Option<&str>,
    as_of: Option<DateTime<Utc>>,
) -> Result<AuditReport, sqlx::Error> {
    let first = audit(&store.db, user, as_of).await?;
    if first.ok {
        return Ok(first);
    }
    if let Err(error) = store.projector.catch_up().await {
        // A log the projector cannot read is itself a finding; the report names it.
        tracing::warn!(%error, "the read models could not catch up before the second audit");
    }
    audit(&store.db, user, as_of).await
}

/// Replays the log (only events recorded up to `as_of`, when given) and checks it.
pub async fn audit(
    db: &Db,
    user: Option<&str>,
    as_of: Option<DateTime<Utc>>,
) -> Result<AuditReport, sqlx::Error> {
    let events = wallet_events(db, user).await?;
    let mut wallets: BTreeMap<String, WalletReplay> = BTreeMap::new();
    let mut account_sums: BTreeMap<String, i64> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut counted_events = 0;
    let mut postings = 0;
    for event in &events {
        if as_of.is_some_and(|t| event.recorded_at > t) {
            continue;
        }
        counted_events += 1;
        let replay = wallets.entry(event.wallet.clone()).or_insert(WalletReplay {
            next_sequence: 1,
            ..Default::default()
        });
        let mut problem = |text: String| {
            problems.push(Discrepancy {
                wallet: event.wallet.clone(),
                sequence: Some(event.sequence),
                problem: text,
            })
        };
        if event.sequence != replay.next_sequence {
            problem(format!(
                "the stream jumps from sequence {} to {}: events are missing",
                replay.next_sequence - 1,
                event.sequence
            ));
        }
        replay.next_sequence = event.sequence + 1;
        let posting = match serde_json::from_value::<WalletEvent>(event.payload.clone()) {
            Ok(WalletEvent::Posted(posting)) => posting,
            Ok(_) => continue,
            Err(error) => {
                problem(format!("the event cannot be read: {error}"));
                continue;
            }
        };
        postings += 1;
        for text in check_posting(&event.wallet, replay, &posting) {
            problem(text);
        }
        for line in &posting.lines {
            *account_sums.entry(line.account.clone()).or_default() += line.coins;
        }
        replay.balance = posting.balance;
        replay.head = Some(posting.hash.clone());
    }
    let sum: i64 = account_sums.values().sum();
    if sum != 0 {
        problems.push(Discrepancy {
            wallet: "*".into(),
            sequence: None,
            problem: format!("the accounts sum to {sum}, not zero"),
        });
    }
    if as_of.is_none() {
        compare_read_model(db, user, &wallets, &account_sums, &mut problems).await?;
    }
    let mut root = Sha256::new();
    for (wallet, replay) in &wallets {
        if let Some(head) = &replay.head {
            root.update(format!("{wallet}:{head}\n").as_bytes());
        }
    }
    Ok(AuditReport {
        ok: problems.is_empty(),
        as_of: as_of.map(|t| t.to_rfc3339()),
        user: user.map(String::from),
        wallets: wallets.len(),
        events: counted_events,
        postings,
        accounts: account_sums,
        sum,
        root_hash: hex::encode(root.finalize()),
        discrepancies: problems,
    })
}

/// The problems of one posting given the wallet replayed so far.
fn check_posting(wallet: &str, replay: &WalletReplay, posting: &Posting) -> Vec<String> {
    let mut found = Vec::new();
    let expected_prev = replay.head.as_deref().unwrap_or(GENESIS_HASH);
    if posting.prev_hash != expected_prev {
        found.push("the hash chain is broken: prev_hash is not the previous posting's hash".into());
    }
    if posting.compute_hash() != posting.hash {
        found.push(format!(
            "posting {} was altered: its hash does not match its content",
            posting.transaction_id
        ));
    }
    if !posting.is_balanced() {
        found.push(format!(
            "posting {} does not balance: its lines sum to {}",
            posting.transaction_id,
            posting.lines.iter().map(|l| l.coins).sum::<i64>()
        ));
    }
    let own = accounts::user(wallet);
    let delta: i64 = posting
        .lines
        .iter()
        .filter(|l| l.account.starts_with("user:"))
        .map(|l| {
            if l.account != own {
                found.push(format!(
                    "a line moves coins of another wallet ({})",
                    l.account
                ));
            }
            l.coins
        })
        .sum();
    if replay.balance + delta != posting.balance {
        found.push(format!(
            "the balance {} does not follow from {} + {delta}",
            posting.balance, replay.balance
        ));
    }
    if posting.balance < 0 {
        found.push(format!("the balance went negative ({})", posting.balance));
    }
    found
}

/// The read model must hold exactly the replayed balances and heads.
async fn compare_read_model(
    db: &Db,
    user: Option<&str>,
    wallets: &BTreeMap<String, WalletReplay>,
    account_sums: &BTreeMap<String, i64>,
    problems: &mut Vec<Discrepancy>,
) -> Result<(), sqlx::Error> {
    let stored: BTreeMap<String, i64> = ledger::account_balances(db.into())
        .await?
        .into_iter()
        .collect();
    let heads: BTreeMap<String, String> =
        ledger::wallet_heads(db.into()).await?.into_iter().collect();
    let in_scope = |account: &str| match user {
        Some(user) => account == accounts::user(user),
        None => true,
    };
    let names: std::collections::BTreeSet<&String> = stored
        .keys()
        .chain(account_sums.keys())
        .filter(|a| in_scope(a))
        .collect();
    for account in names {
        let replayed = account_sums.get(account).copied().unwrap_or(0);
        let read = stored.get(account).copied().unwrap_or(0);
        if replayed != read {
            problems.push(Discrepancy {
                wallet: account
                    .strip_prefix("user:")
                    .unwrap_or(account.as_str())
                    .to_string(),
                sequence: None,
                problem: format!(
                    "the read model says {account} holds {read}, the log says {replayed}"
                ),
            });
        }
    }
    for (wallet, replay) in wallets {
        let account = accounts::user(wallet);
        if replay.head.is_some() && heads.get(&account) != replay.head.as_ref() {
            problems.push(Discrepancy {
                wallet: wallet.clone(),
                sequence: None,
                problem: "the read model's head hash differs from the log's last posting".into(),
            });
        }
    }
    Ok(())
}

impl AuditReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "ledger audit{}{}: {}\n",
            self.user
                .as_ref()
                .map(|u| format!(" of wallet {u}"))
                .unwrap_or_default(),
            self.as_of
                .as_ref()
                .map(|t| format!(" as of {t}"))
                .unwrap_or_default(),
            if self.ok { "OK" } else { "DISCREPANCIES FOUND" }
        ));
        out.push_str(&format!(
            "wallets {}  events {}  postings {}  sum over accounts {}\n",
            self.wallets, self.events, self.postings, self.sum
        ));
        out.push_str("accounts:\n");
        for (account, balance) in &self.accounts {
            if !account.starts_with("user:") {
                out.push_str(&format!("  {account:<32} {balance:>14}\n"));
            }
        }
        let users: i64 = self
            .accounts
            .iter()
            .filter(|(a, _)| a.starts_with("user:"))
            .map(|(_, b)| b)
            .sum();
        out.push_str(&format!("  {:<32} {users:>14}\n", "user wallets (total)"));
        for d in &self.discrepancies {
            let at = d.sequence.map(|s| format!(" #{s}")).unwrap_or_default();
            out.push_str(&format!(
                "DISCREPANCY wallet {}{at}: {}\n",
                d.wallet, d.problem
            ));
        }
        out.push_str(&format!("root hash {}\n", self.root_hash));
        out
    }
}

/// One line of a user's statement.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatementLine {
    pub at: String,
    pub transaction_id: String,
    pub kind: String,
    pub reference: String,
    pub change: i64,
    pub balance: i64,
    pub hash: String,
}

/// A user's postings between `from` and `to` (inclusive), oldest first.
pub async fn statement(
    db: &Db,
    user: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<StatementLine>, sqlx::Error> {
    let own = accounts::user(user);
    let mut lines = Vec::new();
    for event in wallet_events(db, Some(user)).await? {
        let Ok(WalletEvent::Posted(posting)) = serde_json::from_value(event.payload) else {
            continue;
        };
        if from.is_some_and(|f| posting.at < f) || to.is_some_and(|t| posting.at > t) {
            continue;
        }
        lines.push(StatementLine {
            at: posting.at.to_rfc3339(),
            transaction_id: posting.transaction_id.clone(),
            kind: ledger::kind_name(posting.kind).to_string(),
            reference: posting.reference.clone(),
            change: posting
                .lines
                .iter()
                .filter(|l| l.account == own)
                .map(|l| l.coins)
                .sum(),
            balance: posting.balance,
            hash: posting.hash.clone(),
        });
    }
    Ok(lines)
}

/// The statement as CSV (header row first).
pub fn statement_csv(lines: &[StatementLine]) -> String {
    let mut out = String::from("at,transaction_id,kind,reference,change,balance,hash\n");
    for l in lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            l.at, l.transaction_id, l.kind, l.reference, l.change, l.balance, l.hash
        ));
    }
    out
}
