//! The Wallet aggregate (one per user): the user's coins as a chain of balanced postings.
//!
//! Every event is a `Posted` movement: a double entry whose lines sum to zero over the accounts
//! (the user's wallet, platform revenue, withdrawals in flight, external payments and payouts).
//! Only the user's wallet is constrained (never below zero), so each movement lives in the one
//! stream whose invariant it touches, and the system accounts are the sums of their lines over
//! all wallets: no hot system stream that every top-up would contend on.
//!
//! Each posting carries the hash of the wallet's previous posting and its own hash, so an
//! auditor replaying the log detects an edited, removed or reordered event.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain_event;

/// The largest amount one movement may carry (a guard against overflow and typos).
pub const MAX_COINS: i64 = 1_000_000_000;
/// The hash a wallet's first posting points back to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Accounts of the double entries.
pub mod accounts {
    pub const EXTERNAL_PAYMENTS: &str = "external:payments";
    pub const EXTERNAL_PAYOUTS: &str = "external:payouts";
    pub const PLATFORM_REVENUE: &str = "platform:revenue";
    /// Coins of requested withdrawals until the payout settles.
    pub const WITHDRAWALS_PENDING: &str = "platform:withdrawals-pending";

    pub fn user(user_id: &str) -> String {
        format!("user:{user_id}")
    }
}

/// One line of a double entry: `coins` added to `account` (negative: taken from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub account: String,
    pub coins: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Purchase,
    Withdrawal,
    Payout,
    Refund,
    Charge,
    Earning,
    Forfeit,
}

/// A balanced movement, as stored (everything the hash covers, plus the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub transaction_id: String,
    pub kind: Kind,
    /// What it settles: a payment session, a withdrawal's transaction, a call.
    pub reference: String,
    pub lines: Vec<Line>,
    /// The wallet's balance after this posting.
    pub balance: i64,
    pub prev_hash: String,
    pub at: DateTime<Utc>,
    pub hash: String,
}

impl Posting {
    /// The hash over every field but `hash`, chained to `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |value: &str| {
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        };
        field(&self.prev_hash);
        field(&self.transaction_id);
        field(&format!("{:?}", self.kind));
        field(&self.reference);
        for line in &self.lines {
            field(&line.account);
            field(&line.coins.to_string());
        }
        field(&self.balance.to_string());
        field(&self.at.timestamp_micros().to_string());
        hex::encode(hasher.finalize())
    }

    pub fn is_balanced(&self) -> bool {
        self.lines.iter().map(|l| l.coins).sum::<i64>() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletCommand {
    /// A paid payment session: credits the coins, once per session.
    CreditTopUp {
        transaction_id: String,
        session_id: String,
        coins: i64,
        at: DateTime<Utc>,
    },
    /// Holds the coins of a withdrawal at once; a payout settles it later.
    RequestWithdrawal {
        transaction_id: String,
        coins: i64,
        /// Rules from the configuration and the owner's type, checked here.
        is_volunteer: bool,
        min_coins: i64,
        limit_30d: i64,
        at: DateTime<Utc>,
    },
    /// The payout provider's answer for a pending withdrawal.
    SettleWithdrawal {
        transaction_id: String,
        succeeded: bool,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletEvent {
    Posted(Posting),
}
domain_event!(WalletEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("coins must be a whole number from 1 to {MAX_COINS}")]
    InvalidAmount,
    #[error("only volunteers withdraw coins")]
    NotAVolunteer,
    #[error("the minimum withdrawal is {0} coins")]
    BelowMinimum(i64),
    #[error("the balance is {0} coins")]
    InsufficientCoins(i64),
    #[error("at most {limit} coins in 30 days; {left} left")]
    OverLimit { limit: i64, left: i64 },
    #[error("no pending withdrawal with this id")]
    NotPending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Withdrawal {
    coins: i64,
    at: DateTime<Utc>,
    pending: bool,
    /// Failed payouts are refunded and do not count against the 30-day limit.
    refunded: bool,
}

/// A two-line movement between the wallet and one other account.
struct Movement<'a> {
    transaction_id: String,
    kind: Kind,
    reference: String,
    delta: i64,
    counter_account: &'a str,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Wallet {
    owner: Option<String>,
    balance: i64,
    head: Option<String>,
    /// Sessions already credited (exactly-once top-ups).
    credited_sessions: BTreeMap<String, String>,
    withdrawals: BTreeMap<String, Withdrawal>,
}

impl Wallet {
    pub fn balance(&self) -> i64 {
        self.balance
    }

    fn head(&self) -> String {
        self.head
            .clone()
            .unwrap_or_else(|| GENESIS_HASH.to_string())
    }

    /// The next posting of `owner`'s wallet: `movement.delta` to the wallet, the opposite to
    /// `movement.counter_account`.
    fn post(&self, owner: &str, movement: Movement<'_>, at: DateTime<Utc>) -> WalletEvent {
        let lines = vec![
            Line {
                account: accounts::user(owner),
                coins: movement.delta,
            },
            Line {
                account: movement.counter_account.to_string(),
                coins: -movement.delta,
            },
        ];
        let head = (movement.transaction_id, movement.kind, movement.reference);
        self.chain(head, lines, at)
    }

    /// The next posting with these lines, chained to the wallet's head and hashed.
    fn chain(
        &self,
        (transaction_id, kind, reference): (String, Kind, String),
        lines: Vec<Line>,
        at: DateTime<Utc>,
    ) -> WalletEvent {
        let delta: i64 = lines
            .iter()
            .filter(|l| l.account.starts_with("user:"))
            .map(|l| l.coins)
            .sum();
        let mut posting = Posting {
            transaction_id,
            kind,
            reference,
            lines,
            balance: self.balance + delta,
            prev_hash: self.head(),
            at,
            hash: String::new(),
        };
        posting.hash = posting.compute_hash();
        WalletEvent::Posted(posting)
    }

    /// Coins withdrawn (and not refunded) in the 30 days before `at`.
    fn withdrawn_since(&self, at: DateTime<Utc>) -> i64 {
        let since = at - Duration::days(30);
        self.withdrawals
            .values()
            .filter(|w| w.at > since && !w.refunded)
            .map(|w| w.coins)
            .sum()
    }
}

fn check_amount(coins: i64) -> Result<(), WalletError> {
    if (1..=MAX_COINS).contains(&coins) {
        Ok(())
    } else {
        Err(WalletError::InvalidAmount)
    }
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "Wallet";
    /// `(owner, command)`: the owner is the user whose id is the aggregate id (cqrs-es does not
    /// pass the id to `handle`); it names the wallet's account in the postings.
    type Command = (String, WalletCommand);
    type Event = WalletEvent;
    type Error = WalletError;
    type Services = ();

    async fn handle(
        &mut self,
        (owner, command): Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if let Some(event) = decide(self, &owner, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let WalletEvent::Posted(posting) = event;
        if self.owner.is_none() {
            self.owner = posting
                .lines
                .first()
                .and_then(|l| l.account.strip_prefix("user:"))
                .map(String::from);
        }
        self.balance = posting.balance;
        self.head = Some(posting.hash.clone());
        match posting.kind {
            Kind::Purchase => {
                self.credited_sessions
                    .insert(posting.reference.clone(), posting.transaction_id.clone());
            }
            Kind::Withdrawal => {
                self.withdrawals.insert(
                    posting.transaction_id.clone(),
                    Withdrawal {
                        coins: -posting.lines[0].coins,
                        at: posting.at,
                        pending: true,
                        refunded: false,
                    },
                );
            }
            Kind::Payout | Kind::Refund => {
                if let Some(w) = self.withdrawals.get_mut(&posting.reference) {
                    w.pending = false;
                    w.refunded = posting.kind == Kind::Refund;
                }
            }
            Kind::Charge | Kind::Earning | Kind::Forfeit => {}
        }
    }
}

fn decide(
    wallet: &Wallet,
    owner: &str,
    command: WalletCommand,
) -> Result<Option<WalletEvent>, WalletError> {
    Ok(match command {
        WalletCommand::CreditTopUp {
            transaction_id,
            session_id,
            coins,
            at,
        } => {
            check_amount(coins)?;
            if wallet.credited_sessions.contains_key(&session_id) {
                return Ok(None);
            }
            Some(wallet.post(
                owner,
                Movement {
                    transaction_id,
                    kind: Kind::Purchase,
                    reference: session_id,
                    delta: coins,
                    counter_account: accounts::EXTERNAL_PAYMENTS,
                },
                at,
            ))
        }
        WalletCommand::RequestWithdrawal {
            transaction_id,
            coins,
            is_volunteer,
            min_coins,
            limit_30d,
            at,
        } => {
            if wallet.withdrawals.contains_key(&transaction_id) {
                // A retry with the same idempotency key.
                return Ok(None);
            }
            if !is_volunteer {
                return Err(WalletError::NotAVolunteer);
            }
            check_amount(coins)?;
            if coins < min_coins {
                return Err(WalletError::BelowMinimum(min_coins));
            }
            if coins > wallet.balance {
                return Err(WalletError::InsufficientCoins(wallet.balance));
            }
            let left = limit_30d - wallet.withdrawn_since(at);
            if coins > left {
                return Err(WalletError::OverLimit {
                    limit: limit_30d,
                    left: left.max(0),
                });
            }
            Some(wallet.post(
                owner,
                Movement {
                    transaction_id: transaction_id.clone(),
                    kind: Kind::Withdrawal,
                    reference: transaction_id,
                    delta: -coins,
                    counter_account: accounts::WITHDRAWALS_PENDING,
                },
                at,
            ))
        }
        WalletCommand::SettleWithdrawal {
            transaction_id,
            succeeded,
            at,
        } => {
            let Some(withdrawal) = wallet.withdrawals.get(&transaction_id) else {
                return Err(WalletError::NotPending);
            };
            if !withdrawal.pending {
                return Err(WalletError::NotPending);
            }
            if succeeded {
                // Wallet unchanged: the held coins move from pending to the payout account.
                let lines = vec![
                    Line {
                        account: accounts::user(owner),
                        coins: 0,
                    },
                    Line {
                        account: accounts::WITHDRAWALS_PENDING.to_string(),
                        coins: -withdrawal.coins,
                    },
                    Line {
                        account: accounts::EXTERNAL_PAYOUTS.to_string(),
                        coins: withdrawal.coins,
                    },
                ];
                let head = (
                    format!("{transaction_id}:payout"),
                    Kind::Payout,
                    transaction_id,
                );
                Some(wallet.chain(head, lines, at))
            } else {
                Some(wallet.post(
                    owner,
                    Movement {
                        transaction_id: format!("{transaction_id}:refund"),
                        kind: Kind::Refund,
                        reference: transaction_id,
                        delta: withdrawal.coins,
                        counter_account: accounts::WITHDRAWALS_PENDING,
                    },
                    at,
                ))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Wallet>;

    fn at(day: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-{day:02}T12:00:00Z"))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn top_up(session: &str, coins: i64) -> (String, WalletCommand) {
        (
            "u".into(),
            WalletCommand::CreditTopUp {
                transaction_id: format!("t-{session}"),
                session_id: session.into(),
                coins,
                at: at(1),
            },
        )
    }

    fn withdraw(id: &str, coins: i64, day: u32) -> (String, WalletCommand) {
        (
            "u".into(),
            WalletCommand::RequestWithdrawal {
                transaction_id: id.into(),
                coins,
                is_volunteer: true,
                min_coins: 100,
                limit_30d: 1000,
                at: at(day),
            },
        )
    }

    /// Runs commands against an empty wallet, feeding each result back, and returns the events.
    fn history(commands: Vec<(String, WalletCommand)>) -> Vec<WalletEvent> {
        let mut wallet = Wallet::default();
        let mut events = Vec::new();
        for (owner, command) in commands {
            if let Ok(Some(event)) = decide(&wallet, &owner, command) {
                wallet.apply(event.clone());
                events.push(event);
            }
        }
        events
    }

    fn postings(events: &[WalletEvent]) -> Vec<Posting> {
        events
            .iter()
            .map(|WalletEvent::Posted(p)| p.clone())
            .collect()
    }

    #[test]
    fn a_top_up_is_a_balanced_posting_chained_to_genesis() {
        let events = history(vec![top_up("s1", 500)]);
        let posting = &postings(&events)[0];
        assert!(posting.is_balanced());
        assert_eq!(posting.balance, 500);
        assert_eq!(posting.prev_hash, GENESIS_HASH);
        assert_eq!(posting.hash, posting.compute_hash());
        assert_eq!(posting.lines[1].account, accounts::EXTERNAL_PAYMENTS);
        Given::with(())
            .given_no_previous_events()
            .when(top_up("s1", 500))
            .then_expect_events(events);
    }

    #[test]
    fn a_session_is_credited_once() {
        Given::with(())
            .given(history(vec![top_up("s1", 500)]))
            .when(top_up("s1", 500))
            .then_expect_events(vec![]);
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        for coins in [0, -5, MAX_COINS + 1] {
            Given::with(())
                .given_no_previous_events()
                .when(top_up("s1", coins))
                .then_expect_error(WalletError::InvalidAmount);
        }
    }

    #[test]
    fn withdrawals_hold_the_coins_and_respect_minimum_balance_and_limit() {
        let funded = history(vec![top_up("s1", 2000)]);
        Given::with(())
            .given(funded.clone())
            .when(withdraw("w1", 99, 2))
            .then_expect_error(WalletError::BelowMinimum(100));
        Given::with(())
            .given(funded.clone())
            .when(withdraw("w1", 1001, 2))
            .then_expect_error(WalletError::OverLimit {
                limit: 1000,
                left: 1000,
            });
        Given::with(())
            .given(history(vec![top_up("s1", 150)]))
            .when(withdraw("w1", 200, 2))
            .then_expect_error(WalletError::InsufficientCoins(150));
        let after = history(vec![top_up("s1", 2000), withdraw("w1", 800, 2)]);
        let posting = &postings(&after)[1];
        assert_eq!(posting.balance, 1200);
        assert_eq!(posting.prev_hash, postings(&after)[0].hash);
        assert!(posting.is_balanced());
        Given::with(())
            .given(after.clone())
            .when(withdraw("w2", 300, 10))
            .then_expect_error(WalletError::OverLimit {
                limit: 1000,
                left: 200,
            });
        // A retry with the same id is a no-op.
        Given::with(())
            .given(after)
            .when(withdraw("w1", 800, 2))
            .then_expect_events(vec![]);
        let senior = (
            "u".to_string(),
            WalletCommand::RequestWithdrawal {
                transaction_id: "w9".into(),
                coins: 100,
                is_volunteer: false,
                min_coins: 100,
                limit_30d: 1000,
                at: at(2),
            },
        );
        Given::with(())
            .given(funded)
            .when(senior)
            .then_expect_error(WalletError::NotAVolunteer);
    }

    #[test]
    fn a_failed_payout_refunds_and_frees_the_limit_a_paid_one_does_not() {
        let settle = |succeeded| {
            (
                "u".to_string(),
                WalletCommand::SettleWithdrawal {
                    transaction_id: "w1".into(),
                    succeeded,
                    at: at(3),
                },
            )
        };
        let failed = history(vec![
            top_up("s1", 2000),
            withdraw("w1", 800, 2),
            settle(false),
        ]);
        let refund = &postings(&failed)[2];
        assert_eq!(refund.kind, Kind::Refund);
        assert_eq!(refund.balance, 2000);
        assert!(refund.is_balanced());
        Given::with(())
            .given(failed.clone())
            .when(settle(true))
            .then_expect_error(WalletError::NotPending);
        let again = history(vec![
            top_up("s1", 2000),
            withdraw("w1", 800, 2),
            settle(false),
            withdraw("w2", 1000, 4),
        ]);
        assert_eq!(
            postings(&again).len(),
            4,
            "a refunded withdrawal frees the limit"
        );

        let paid = history(vec![
            top_up("s1", 2000),
            withdraw("w1", 800, 2),
            settle(true),
        ]);
        let payout = &postings(&paid)[2];
        assert_eq!(payout.kind, Kind::Payout);
        assert_eq!(payout.balance, 1200);
        assert!(payout.is_balanced());
        Given::with(())
            .given(paid)
            .when(withdraw("w2", 300, 4))
            .then_expect_error(WalletError::OverLimit {
                limit: 1000,
                left: 200,
            });
    }

    #[test]
    fn editing_a_posting_breaks_its_hash() {
        let events = history(vec![top_up("s1", 500)]);
        let mut posting = postings(&events)[0].clone();
        posting.lines[0].coins = 5000;
        assert_ne!(posting.compute_hash(), posting.hash);
    }
}
