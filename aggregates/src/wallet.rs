//! The Wallet aggregate (one per user): the user's coins as a chain of balanced postings.
//!
//! Money moves only in `Posted` events (the ledger events): a double entry whose lines sum to
//! zero over the accounts (the user's wallet, platform revenue, withdrawals in flight, external
//! payments and payouts). Only the user's wallet is constrained (never below zero), so each
//! movement lives in the one stream whose invariant it touches, and the system accounts are the
//! sums of their lines over all wallets: no hot system stream that every top-up contends on.
//!
//! The other events record what is not money yet: an opened payment session, how an unpaid one
//! ended, and what a withdrawal's payout should send. Each posting carries the hash of the
//! wallet's previous posting and its own hash, so an auditor replaying the log detects an
//! edited, removed or reordered posting; gaps in the stream's sequence show removed events.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain_event;
use crate::user::Sealed;

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
    /// Coins charged for a call until the volunteer's earning takes them out (the two legs of a
    /// call live in two wallets; this account is back to zero once both are posted).
    pub const CALLS_CLEARING: &str = "platform:calls-clearing";

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

/// How a top-up session ended without payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopUpOutcome {
    Canceled,
    Expired,
    Failed,
}

/// A payment session opened with a provider, as the wallet remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUp {
    pub transaction_id: String,
    pub session_id: String,
    pub provider: String,
    /// The page where the customer pays.
    pub url: String,
    pub coins: i64,
    /// The price the customer pays, in US cents.
    pub funds_cents: i64,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletCommand {
    /// Records a payment session; its coins are credited when the provider says it was paid.
    OpenTopUp { top_up: TopUp, min_coins: i64 },
    /// The provider reports the session paid: credits its coins, once per session. The amount
    /// comes from the opened session, never from the notification.
    CreditTopUp {
        session_id: String,
        at: DateTime<Utc>,
    },
    /// The session ended unpaid (canceled, expired, failed). Ignored once paid or ended.
    CloseTopUp {
        session_id: String,
        outcome: TopUpOutcome,
        at: DateTime<Utc>,
    },
    /// Holds the coins of a withdrawal at once; a payout settles it later.
    RequestWithdrawal {
        transaction_id: String,
        coins: i64,
        /// The payout in US cents and where it goes (sealed with the owner's key).
        funds_cents: i64,
        currency: String,
        paypal_email: Sealed,
        /// Rules from the configuration and the owner's type, checked here.
        is_volunteer: bool,
        min_coins: i64,
        limit_30d: i64,
        at: DateTime<Utc>,
    },
    /// A call's price, charged to the senior's wallet (into the calls clearing account).
    /// Once per call; never more than the balance (capped at it; nothing when it is empty).
    ChargeCall {
        transaction_id: String,
        call_id: String,
        coins: i64,
        at: DateTime<Utc>,
    },
    /// The volunteer's share of a charged call: `gross_coins` leave the clearing account,
    /// `volunteer_coins` go to this wallet and the rest to platform revenue. Once per call.
    CreditCallEarning {
        transaction_id: String,
        call_id: String,
        gross_coins: i64,
        volunteer_coins: i64,
        at: DateTime<Utc>,
    },
    /// The owner deletes their account: the whole balance goes to platform revenue. Refused
    /// while a withdrawal waits for its payout.
    Forfeit {
        transaction_id: String,
        at: DateTime<Utc>,
    },
    /// The payout provider's answer for a pending withdrawal; a failure refunds the coins
    /// as the transaction `refund_id`.
    SettleWithdrawal {
        transaction_id: String,
        succeeded: bool,
        refund_id: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletEvent {
    TopUpOpened(TopUp),
    TopUpClosed {
        transaction_id: String,
        session_id: String,
        outcome: TopUpOutcome,
        at: DateTime<Utc>,
    },
    /// What the payout provider is asked to send for a withdrawal (its coins are held by the
    /// `Posted` withdrawal that comes with it).
    PayoutOrdered {
        transaction_id: String,
        funds_cents: i64,
        currency: String,
        paypal_email: Sealed,
        at: DateTime<Utc>,
    },
    /// A money movement: the only ledger event, hash-chained.
    Posted(Posting),
}
domain_event!(WalletEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("coins must be a whole number from 1 to {MAX_COINS}")]
    InvalidAmount,
    #[error("the minimum purchase is {0} coins")]
    BelowMinimumPurchase(i64),
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
    #[error("no payment session with this id")]
    UnknownSession,
    #[error("a withdrawal is waiting for its payout; try again once it has settled")]
    WithdrawalInFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SessionState {
    Open,
    Paid,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    transaction_id: String,
    coins: i64,
    state: SessionState,
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
    /// Payment sessions by session id (exactly-once top-ups).
    sessions: BTreeMap<String, Session>,
    withdrawals: BTreeMap<String, Withdrawal>,
    /// Calls already charged to (or earned by) this wallet.
    billed_calls: std::collections::BTreeSet<String>,
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
        for event in decide(self, &owner, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            WalletEvent::TopUpOpened(top_up) => {
                self.sessions.insert(
                    top_up.session_id,
                    Session {
                        transaction_id: top_up.transaction_id,
                        coins: top_up.coins,
                        state: SessionState::Open,
                    },
                );
            }
            WalletEvent::TopUpClosed { session_id, .. } => {
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.state = SessionState::Closed;
                }
            }
            WalletEvent::PayoutOrdered { .. } => {}
            WalletEvent::Posted(posting) => self.apply_posting(posting),
        }
    }
}

impl Wallet {
    fn apply_posting(&mut self, posting: Posting) {
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
                if let Some(session) = self.sessions.get_mut(&posting.reference) {
                    session.state = SessionState::Paid;
                }
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
            Kind::Charge | Kind::Earning => {
                self.billed_calls.insert(posting.reference.clone());
            }
            Kind::Forfeit => {}
        }
    }
}

fn decide(
    wallet: &Wallet,
    owner: &str,
    command: WalletCommand,
) -> Result<Vec<WalletEvent>, WalletError> {
    Ok(match command {
        WalletCommand::OpenTopUp { top_up, min_coins } => {
            if wallet.sessions.contains_key(&top_up.session_id) {
                return Ok(vec![]);
            }
            check_amount(top_up.coins)?;
            if top_up.coins < min_coins {
                return Err(WalletError::BelowMinimumPurchase(min_coins));
            }
            vec![WalletEvent::TopUpOpened(top_up)]
        }
        WalletCommand::CreditTopUp { session_id, at } => {
            let session = wallet
                .sessions
                .get(&session_id)
                .ok_or(WalletError::UnknownSession)?;
            // Money that arrived is always credited, even for a session that had expired
            // locally; a session is credited at most once.
            if session.state == SessionState::Paid {
                return Ok(vec![]);
            }
            vec![wallet.post(
                owner,
                Movement {
                    transaction_id: session.transaction_id.clone(),
                    kind: Kind::Purchase,
                    reference: session_id,
                    delta: session.coins,
                    counter_account: accounts::EXTERNAL_PAYMENTS,
                },
                at,
            )]
        }
        WalletCommand::CloseTopUp {
            session_id,
            outcome,
            at,
        } => {
            let session = wallet
                .sessions
                .get(&session_id)
                .ok_or(WalletError::UnknownSession)?;
            if session.state != SessionState::Open {
                return Ok(vec![]);
            }
            vec![WalletEvent::TopUpClosed {
                transaction_id: session.transaction_id.clone(),
                session_id,
                outcome,
                at,
            }]
        }
        WalletCommand::RequestWithdrawal {
            transaction_id,
            coins,
            funds_cents,
            currency,
            paypal_email,
            is_volunteer,
            min_coins,
            limit_30d,
            at,
        } => {
            if wallet.withdrawals.contains_key(&transaction_id) {
                // A retry with the same idempotency key.
                return Ok(vec![]);
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
            vec![
                wallet.post(
                    owner,
                    Movement {
                        transaction_id: transaction_id.clone(),
                        kind: Kind::Withdrawal,
                        reference: transaction_id.clone(),
                        delta: -coins,
                        counter_account: accounts::WITHDRAWALS_PENDING,
                    },
                    at,
                ),
                WalletEvent::PayoutOrdered {
                    transaction_id,
                    funds_cents,
                    currency,
                    paypal_email,
                    at,
                },
            ]
        }
        WalletCommand::ChargeCall {
            transaction_id,
            call_id,
            coins,
            at,
        } => {
            if wallet.billed_calls.contains(&call_id) {
                return Ok(vec![]);
            }
            check_amount(coins)?;
            // The call's limit was what the balance bought when it started; only another call
            // of the same senior ending first can leave less. Take what is there, never more.
            let coins = coins.min(wallet.balance);
            if coins == 0 {
                return Ok(vec![]);
            }
            vec![wallet.post(
                owner,
                Movement {
                    transaction_id,
                    kind: Kind::Charge,
                    reference: call_id,
                    delta: -coins,
                    counter_account: accounts::CALLS_CLEARING,
                },
                at,
            )]
        }
        WalletCommand::CreditCallEarning {
            transaction_id,
            call_id,
            gross_coins,
            volunteer_coins,
            at,
        } => {
            if wallet.billed_calls.contains(&call_id) {
                return Ok(vec![]);
            }
            check_amount(gross_coins)?;
            if !(0..=gross_coins).contains(&volunteer_coins) {
                return Err(WalletError::InvalidAmount);
            }
            let lines = vec![
                Line {
                    account: accounts::user(owner),
                    coins: volunteer_coins,
                },
                Line {
                    account: accounts::PLATFORM_REVENUE.to_string(),
                    coins: gross_coins - volunteer_coins,
                },
                Line {
                    account: accounts::CALLS_CLEARING.to_string(),
                    coins: -gross_coins,
                },
            ];
            vec![wallet.chain((transaction_id, Kind::Earning, call_id), lines, at)]
        }
        WalletCommand::Forfeit { transaction_id, at } => {
            if wallet.withdrawals.values().any(|w| w.pending) {
                return Err(WalletError::WithdrawalInFlight);
            }
            if wallet.balance == 0 {
                return Ok(vec![]);
            }
            let reference = transaction_id.clone();
            vec![wallet.post(
                owner,
                Movement {
                    transaction_id,
                    kind: Kind::Forfeit,
                    reference,
                    delta: -wallet.balance,
                    counter_account: accounts::PLATFORM_REVENUE,
                },
                at,
            )]
        }
        WalletCommand::SettleWithdrawal {
            transaction_id,
            succeeded,
            refund_id,
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
                let head = (transaction_id.clone(), Kind::Payout, transaction_id);
                vec![wallet.chain(head, lines, at)]
            } else {
                vec![wallet.post(
                    owner,
                    Movement {
                        transaction_id: refund_id,
                        kind: Kind::Refund,
                        reference: transaction_id,
                        delta: withdrawal.coins,
                        counter_account: accounts::WITHDRAWALS_PENDING,
                    },
                    at,
                )]
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

    fn cmd(command: WalletCommand) -> (String, WalletCommand) {
        ("u".into(), command)
    }

    fn open(session: &str, coins: i64) -> (String, WalletCommand) {
        cmd(WalletCommand::OpenTopUp {
            top_up: TopUp {
                transaction_id: format!("t-{session}"),
                session_id: session.into(),
                provider: "sandbox".into(),
                url: format!("https://pay.test/{session}"),
                coins,
                funds_cents: coins,
                currency: "usd".into(),
                expires_at: at(2),
                at: at(1),
            },
            min_coins: 50,
        })
    }

    fn pay(session: &str) -> (String, WalletCommand) {
        cmd(WalletCommand::CreditTopUp {
            session_id: session.into(),
            at: at(1),
        })
    }

    fn close(session: &str, outcome: TopUpOutcome) -> (String, WalletCommand) {
        cmd(WalletCommand::CloseTopUp {
            session_id: session.into(),
            outcome,
            at: at(2),
        })
    }

    fn withdraw(id: &str, coins: i64, day: u32) -> (String, WalletCommand) {
        cmd(WalletCommand::RequestWithdrawal {
            transaction_id: id.into(),
            coins,
            funds_cents: coins,
            currency: "usd".into(),
            paypal_email: Sealed("sealed".into()),
            is_volunteer: true,
            min_coins: 100,
            limit_30d: 1000,
            at: at(day),
        })
    }

    fn settle(id: &str, succeeded: bool) -> (String, WalletCommand) {
        cmd(WalletCommand::SettleWithdrawal {
            transaction_id: id.into(),
            succeeded,
            refund_id: format!("{id}-refund"),
            at: at(3),
        })
    }

    /// Runs commands against an empty wallet, feeding each result back, and returns the events.
    fn history(commands: Vec<(String, WalletCommand)>) -> Vec<WalletEvent> {
        let mut wallet = Wallet::default();
        let mut events = Vec::new();
        for (owner, command) in commands {
            if let Ok(new) = decide(&wallet, &owner, command) {
                for event in new {
                    wallet.apply(event.clone());
                    events.push(event);
                }
            }
        }
        events
    }

    fn funded(coins: i64) -> Vec<(String, WalletCommand)> {
        vec![open("s1", coins), pay("s1")]
    }

    fn postings(events: &[WalletEvent]) -> Vec<Posting> {
        events
            .iter()
            .filter_map(|e| match e {
                WalletEvent::Posted(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_paid_top_up_is_a_balanced_posting_chained_to_genesis() {
        let opened = history(vec![open("s1", 500)]);
        let events = history(funded(500));
        let posting = &postings(&events)[0];
        assert!(posting.is_balanced());
        assert_eq!(posting.balance, 500);
        assert_eq!(posting.transaction_id, "t-s1");
        assert_eq!(posting.prev_hash, GENESIS_HASH);
        assert_eq!(posting.hash, posting.compute_hash());
        assert_eq!(posting.lines[1].account, accounts::EXTERNAL_PAYMENTS);
        Given::with(())
            .given(opened)
            .when(pay("s1"))
            .then_expect_events(events[1..].to_vec());
    }

    #[test]
    fn a_session_is_credited_once_whatever_the_order_of_notifications() {
        Given::with(())
            .given(history(funded(500)))
            .when(pay("s1"))
            .then_expect_events(vec![]);
        // "Expired" after "paid" changes nothing.
        Given::with(())
            .given(history(funded(500)))
            .when(close("s1", TopUpOutcome::Expired))
            .then_expect_events(vec![]);
        // "Paid" after "expired": the money arrived, so the coins are credited (once).
        let late = history(vec![
            open("s1", 500),
            close("s1", TopUpOutcome::Expired),
            pay("s1"),
            pay("s1"),
        ]);
        assert_eq!(postings(&late).len(), 1);
        assert_eq!(postings(&late)[0].balance, 500);
        // Opening the same session twice records it once.
        Given::with(())
            .given(history(vec![open("s1", 500)]))
            .when(open("s1", 500))
            .then_expect_events(vec![]);
    }

    #[test]
    fn unknown_sessions_are_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(pay("nope"))
            .then_expect_error(WalletError::UnknownSession);
        Given::with(())
            .given_no_previous_events()
            .when(close("nope", TopUpOutcome::Canceled))
            .then_expect_error(WalletError::UnknownSession);
    }

    #[test]
    fn amounts_are_positive_bounded_and_at_least_the_minimum_purchase() {
        for coins in [0, -5, MAX_COINS + 1] {
            Given::with(())
                .given_no_previous_events()
                .when(open("s1", coins))
                .then_expect_error(WalletError::InvalidAmount);
        }
        Given::with(())
            .given_no_previous_events()
            .when(open("s1", 49))
            .then_expect_error(WalletError::BelowMinimumPurchase(50));
    }

    #[test]
    fn withdrawals_hold_the_coins_and_respect_minimum_balance_and_limit() {
        let rich = history(funded(2000));
        Given::with(())
            .given(rich.clone())
            .when(withdraw("w1", 99, 2))
            .then_expect_error(WalletError::BelowMinimum(100));
        Given::with(())
            .given(rich.clone())
            .when(withdraw("w1", 1001, 2))
            .then_expect_error(WalletError::OverLimit {
                limit: 1000,
                left: 1000,
            });
        Given::with(())
            .given(history(funded(150)))
            .when(withdraw("w1", 200, 2))
            .then_expect_error(WalletError::InsufficientCoins(150));
        let mut commands = funded(2000);
        commands.push(withdraw("w1", 800, 2));
        let after = history(commands);
        let posting = &postings(&after)[1];
        assert_eq!(posting.balance, 1200);
        assert_eq!(posting.prev_hash, postings(&after)[0].hash);
        assert!(posting.is_balanced());
        assert!(matches!(
            after.last(),
            Some(WalletEvent::PayoutOrdered { transaction_id, .. }) if transaction_id == "w1"
        ));
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
        let mut senior = withdraw("w9", 100, 2);
        if let WalletCommand::RequestWithdrawal { is_volunteer, .. } = &mut senior.1 {
            *is_volunteer = false;
        }
        Given::with(())
            .given(rich)
            .when(senior)
            .then_expect_error(WalletError::NotAVolunteer);
    }

    #[test]
    fn a_failed_payout_refunds_and_frees_the_limit_a_paid_one_does_not() {
        let mut commands = funded(2000);
        commands.extend([withdraw("w1", 800, 2), settle("w1", false)]);
        let failed = history(commands.clone());
        let refund = &postings(&failed)[2];
        assert_eq!(refund.kind, Kind::Refund);
        assert_eq!(refund.transaction_id, "w1-refund");
        assert_eq!(refund.balance, 2000);
        assert!(refund.is_balanced());
        Given::with(())
            .given(failed)
            .when(settle("w1", true))
            .then_expect_error(WalletError::NotPending);
        commands.push(withdraw("w2", 1000, 4));
        assert_eq!(
            postings(&history(commands)).len(),
            4,
            "a refunded withdrawal frees the limit"
        );

        let mut commands = funded(2000);
        commands.extend([withdraw("w1", 800, 2), settle("w1", true)]);
        let paid = history(commands);
        let payout = &postings(&paid)[2];
        assert_eq!(payout.kind, Kind::Payout);
        assert_eq!(payout.transaction_id, "w1");
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
        let events = history(funded(500));
        let mut posting = postings(&events)[0].clone();
        posting.lines[0].coins = 5000;
        assert_ne!(posting.compute_hash(), posting.hash);
    }

    #[test]
    fn a_call_is_charged_to_the_senior_and_split_for_the_volunteer_once() {
        let charge = |coins| {
            cmd(WalletCommand::ChargeCall {
                transaction_id: "c1".into(),
                call_id: "call-1".into(),
                coins,
                at: at(2),
            })
        };
        let mut commands = funded(500);
        commands.push(charge(150));
        let senior = history(commands.clone());
        let charged = &postings(&senior)[1];
        assert_eq!(charged.kind, Kind::Charge);
        assert_eq!(charged.balance, 350);
        assert_eq!(charged.lines[1].account, accounts::CALLS_CLEARING);
        assert!(charged.is_balanced());
        Given::with(())
            .given(senior)
            .when(charge(150))
            .then_expect_events(vec![]);
        // Less left than the price (a second call of the same senior ended first): the charge
        // takes what is there and the balance stays at zero.
        let short = history(funded(100).into_iter().chain([charge(150)]).collect());
        let capped = &postings(&short)[1];
        assert_eq!(capped.balance, 0);
        assert_eq!(capped.lines[0].coins, -100);
        Given::with(())
            .given(history(
                funded(100).into_iter().chain([charge(100)]).collect(),
            ))
            .when(cmd(WalletCommand::ChargeCall {
                transaction_id: "c2".into(),
                call_id: "call-2".into(),
                coins: 50,
                at: at(3),
            }))
            .then_expect_events(vec![]);

        let earn = |volunteer_coins| {
            cmd(WalletCommand::CreditCallEarning {
                transaction_id: "e1".into(),
                call_id: "call-1".into(),
                gross_coins: 150,
                volunteer_coins,
                at: at(2),
            })
        };
        let volunteer = history(vec![earn(105)]);
        let earned = &postings(&volunteer)[0];
        assert_eq!(earned.balance, 105);
        assert!(earned.is_balanced());
        let revenue: i64 = earned
            .lines
            .iter()
            .filter(|l| l.account == accounts::PLATFORM_REVENUE)
            .map(|l| l.coins)
            .sum();
        assert_eq!(revenue, 45);
        // Charge and earning together leave the clearing account at zero.
        let clearing: i64 = [charged, earned]
            .iter()
            .flat_map(|p| p.lines.iter())
            .filter(|l| l.account == accounts::CALLS_CLEARING)
            .map(|l| l.coins)
            .sum();
        assert_eq!(clearing, 0);
        Given::with(())
            .given(volunteer)
            .when(earn(105))
            .then_expect_events(vec![]);
        Given::with(())
            .given_no_previous_events()
            .when(earn(151))
            .then_expect_error(WalletError::InvalidAmount);
    }

    #[test]
    fn deleting_the_account_forfeits_the_balance_but_not_during_a_payout() {
        let forfeit = cmd(WalletCommand::Forfeit {
            transaction_id: "f1".into(),
            at: at(5),
        });
        let gone = history(vec![open("s1", 500), pay("s1"), forfeit.clone()]);
        let posting = &postings(&gone)[1];
        assert_eq!(posting.kind, Kind::Forfeit);
        assert_eq!(posting.balance, 0);
        assert_eq!(posting.lines[1].account, accounts::PLATFORM_REVENUE);
        assert!(posting.is_balanced());
        Given::with(())
            .given(gone)
            .when(forfeit.clone())
            .then_expect_events(vec![]);
        let mut commands = funded(2000);
        commands.push(withdraw("w1", 800, 2));
        Given::with(())
            .given(history(commands))
            .when(forfeit)
            .then_expect_error(WalletError::WithdrawalInFlight);
    }
}
