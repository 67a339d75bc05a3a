//! A sequence of arbitrary commands (built by `arbitrary` from the fuzzer's bytes) handled by
//! one Wallet aggregate through cqrs-es (`Aggregate::handle`, whose sink applies each event).
//! After every command: a refused command emitted nothing; every posting is balanced, carries
//! its own hash and the previous one, and its balance is the previous balance plus the
//! wallet's line; the balance is never negative; a session is credited, a call billed and a
//! withdrawal settled at most once; and replaying the events rebuilds the same balance.

#![no_main]

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use talkamie_aggregates::user::Sealed;
use talkamie_aggregates::wallet::{
    accounts, Kind, TopUp, TopUpOutcome, Wallet, WalletCommand, WalletEvent, GENESIS_HASH,
};

const OWNER: &str = "u1";

/// Amounts a client controls: mostly small (around the limits that matter), sometimes any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Amount {
    Small(i16),
    Any(i64),
}

impl Amount {
    fn coins(self) -> i64 {
        match self {
            Amount::Small(n) => i64::from(n),
            Amount::Any(n) => n,
        }
    }
}

/// Ids come from a few values so that retries and collisions happen.
#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        session: u8,
        coins: Amount,
        min_coins: u8,
    },
    Credit {
        session: u8,
    },
    Close {
        session: u8,
        outcome: u8,
    },
    Withdraw {
        tx: u8,
        coins: Amount,
        is_volunteer: bool,
        // Configuration, not client input: kept in the ranges a deployment uses.
        min_coins: u16,
        limit_30d: u32,
    },
    Charge {
        tx: u8,
        call: u8,
        coins: Amount,
    },
    Earn {
        tx: u8,
        call: u8,
        gross: Amount,
        volunteer: Amount,
    },
    Forfeit {
        tx: u8,
    },
    Settle {
        tx: u8,
        succeeded: bool,
        refund: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Step {
    op: Op,
    /// Hours since the previous command (withdrawals count over 30 days).
    later: u8,
}

/// cqrs-es's `handle` is async but never waits here (the sink's lock is uncontended).
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("Wallet::handle waited"),
    }
}

fn command(op: &Op, at: DateTime<Utc>) -> WalletCommand {
    let id = |prefix: &str, n: u8| format!("{prefix}{}", n % 8);
    match *op {
        Op::Open {
            session,
            coins,
            min_coins,
        } => WalletCommand::OpenTopUp {
            top_up: TopUp {
                transaction_id: id("t-open-", session),
                session_id: id("s", session),
                provider: "sandbox".into(),
                url: "https://pay.example/s".into(),
                coins: coins.coins(),
                funds_cents: coins.coins().saturating_mul(10),
                currency: "usd".into(),
                expires_at: at + Duration::hours(1),
                at,
            },
            min_coins: i64::from(min_coins),
        },
        Op::Credit { session } => WalletCommand::CreditTopUp {
            session_id: id("s", session),
            at,
        },
        Op::Close { session, outcome } => WalletCommand::CloseTopUp {
            session_id: id("s", session),
            outcome: match outcome % 3 {
                0 => TopUpOutcome::Canceled,
                1 => TopUpOutcome::Expired,
                _ => TopUpOutcome::Failed,
            },
            at,
        },
        Op::Withdraw {
            tx,
            coins,
            is_volunteer,
            min_coins,
            limit_30d,
        } => WalletCommand::RequestWithdrawal {
            transaction_id: id("w", tx),
            coins: coins.coins(),
            funds_cents: coins.coins().saturating_mul(10),
            currency: "usd".into(),
            paypal_email: Sealed("sealed".into()),
            is_volunteer,
            min_coins: i64::from(min_coins),
            limit_30d: i64::from(limit_30d),
            at,
        },
        Op::Charge { tx, call, coins } => WalletCommand::ChargeCall {
            transaction_id: id("t-charge-", tx),
            call_id: id("call", call),
            coins: coins.coins(),
            at,
        },
        Op::Earn {
            tx,
            call,
            gross,
            volunteer,
        } => WalletCommand::CreditCallEarning {
            transaction_id: id("t-earn-", tx),
            call_id: id("call", call),
            gross_coins: gross.coins(),
            volunteer_coins: volunteer.coins(),
            at,
        },
        Op::Forfeit { tx } => WalletCommand::Forfeit {
            transaction_id: id("t-forfeit-", tx),
            at,
        },
        Op::Settle {
            tx,
            succeeded,
            refund,
        } => WalletCommand::SettleWithdrawal {
            transaction_id: id("w", tx),
            succeeded,
            refund_id: id("t-refund-", refund),
            at,
        },
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut wallet = Wallet::default();
    let mut log: Vec<WalletEvent> = Vec::new();
    let mut head = GENESIS_HASH.to_string();
    let mut balance = 0i64;
    // (kind, reference) -> postings: a session is credited, a call billed and a withdrawal
    // settled at most once.
    let mut settled: HashMap<(&'static str, String), u32> = HashMap::new();
    let mut at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for step in steps.iter().take(64) {
        at += Duration::hours(i64::from(step.later));
        let command = command(&step.op, at);
        let sink = EventSink::<Wallet>::default();
        let result = now_or_never(wallet.handle((OWNER.to_string(), command.clone()), &(), &sink));
        let events = now_or_never(sink.collect());
        if result.is_err() {
            assert!(
                events.is_empty(),
                "{command:?} was refused but emitted {events:?}"
            );
        }
        for event in &events {
            let WalletEvent::Posted(posting) = event else {
                continue;
            };
            assert!(posting.is_balanced(), "{posting:?}");
            assert_eq!(posting.hash, posting.compute_hash(), "{posting:?}");
            assert_eq!(posting.prev_hash, head, "{posting:?}");
            let own = &posting.lines[0];
            assert_eq!(own.account, accounts::user(OWNER), "{posting:?}");
            balance += own.coins;
            assert_eq!(posting.balance, balance, "{posting:?}");
            assert!(
                balance >= 0,
                "negative balance after {command:?}: {posting:?}"
            );
            head = posting.hash.clone();
            let class = match posting.kind {
                Kind::Purchase => "session",
                Kind::Charge | Kind::Earning => "call",
                Kind::Payout | Kind::Refund => "settlement",
                Kind::Withdrawal => "withdrawal",
                Kind::Forfeit => "forfeit",
            };
            let n = settled
                .entry((class, posting.reference.clone()))
                .or_default();
            *n += 1;
            assert!(
                class == "forfeit" || *n == 1,
                "{class} {} posted twice",
                posting.reference
            );
        }
        log.extend(events);
        assert_eq!(wallet.balance(), balance);
    }
    let mut replayed = Wallet::default();
    for event in log {
        replayed.apply(event);
    }
    assert_eq!(replayed.balance(), wallet.balance());
});
