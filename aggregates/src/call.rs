//! The Call aggregate (one per call): ringing, accepted, rejected, missed, ended; the server's
//! measure of its duration and its price.
//!
//! The call's limit is fixed when it starts: the senior's balance buys so many whole minutes at
//! the rate, and the volunteer's `maxDuration` may cut it shorter. The server ends a call that
//! reaches its limit; a call is charged per started minute of its measured duration, never
//! past the limit. The charge itself moves through the senior's and the volunteer's Wallets
//! (the billing saga), once per call.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::calendar::CallKind;
use crate::domain_event;

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// One side hung up.
    HungUp,
    /// The senior's balance or the volunteer's `maxDuration` ran out.
    LimitReached,
    /// One side had no open connection for too long (their app died or lost the network).
    ConnectionLost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallCommand {
    /// The caller (a senior, in an accepted chat: the handler checked) rings the callee.
    Start {
        chat_id: String,
        caller: String,
        callee: String,
        kind: CallKind,
        schedule_id: Option<String>,
        /// The senior's balance now, the price of a minute, the volunteer's maximum.
        balance: i64,
        coins_per_minute: i64,
        max_duration_secs: Option<i64>,
        at: DateTime<Utc>,
    },
    Accept {
        by: String,
        at: DateTime<Utc>,
    },
    Reject {
        by: String,
        at: DateTime<Utc>,
    },
    /// Nobody answered within `ring_timeout_secs`.
    Miss {
        ring_timeout_secs: i64,
        at: DateTime<Utc>,
    },
    /// `by` hangs up (`None`: the server, when the limit is reached).
    End {
        by: Option<String>,
        at: DateTime<Utc>,
    },
    /// A running call whose side has been unreachable since `since`: the server ends it as of
    /// then, so nobody pays for the time nobody could talk.
    Abandon {
        since: DateTime<Utc>,
    },
    /// The billing saga's last step: what the wallets took and gave for this call. Once.
    Settle {
        charged_coins: i64,
        earned_coins: i64,
        /// The senior's balance after the charge, and the low-balance threshold then.
        balance_after: i64,
        low_balance_coins: i64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallEvent {
    Started {
        chat_id: String,
        caller: String,
        callee: String,
        kind: CallKind,
        schedule_id: Option<String>,
        coins_per_minute: i64,
        /// How long the call may last once accepted.
        limit_secs: i64,
        at: DateTime<Utc>,
    },
    Accepted {
        at: DateTime<Utc>,
    },
    Rejected {
        at: DateTime<Utc>,
    },
    Missed {
        at: DateTime<Utc>,
    },
    Ended {
        by: Option<String>,
        reason: EndReason,
        /// Seconds from accept to end (0 when it ended while ringing), at most the limit.
        duration_secs: i64,
        /// Every started minute at the rate.
        price_coins: i64,
        at: DateTime<Utc>,
    },
    /// The call is paid for: `charged_coins` left the senior's wallet (the price, or less when
    /// the balance no longer covered it), `earned_coins` went to the volunteer.
    Billed {
        charged_coins: i64,
        earned_coins: i64,
        balance_after: i64,
        low_balance_coins: i64,
        at: DateTime<Utc>,
    },
}
domain_event!(CallEvent, "1");

impl CallEvent {
    /// Whether this billing took the senior's balance from at or above the threshold to below.
    pub fn crossed_low_balance(&self) -> bool {
        match self {
            CallEvent::Billed {
                charged_coins,
                balance_after,
                low_balance_coins,
                ..
            } => {
                *charged_coins > 0
                    && *balance_after < *low_balance_coins
                    && balance_after + charged_coins >= *low_balance_coins
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("this call already exists")]
    AlreadyStarted,
    #[error("no such call")]
    NotFound,
    #[error("a call costs {price} coins a minute and the balance is {balance}")]
    InsufficientCoins { balance: i64, price: i64 },
    #[error("only the person called may answer")]
    NotCallee,
    #[error("only the two people on the call may end it")]
    NotMember,
    #[error("the call is {0}")]
    WrongStatus(&'static str),
    #[error("the call is still ringing")]
    StillRinging,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    None,
    Ringing,
    Accepted,
    Rejected,
    Missed,
    Ended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Ringing => "ringing",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Missed => "missed",
            Status::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub status: Status,
    pub caller: String,
    pub callee: String,
    pub started_at: Option<DateTime<Utc>>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub coins_per_minute: i64,
    pub limit_secs: i64,
    pub billed: bool,
}

/// Every started minute of `seconds` at `coins_per_minute`.
pub fn price(seconds: i64, coins_per_minute: i64) -> i64 {
    (seconds.max(0) + 59) / 60 * coins_per_minute
}

fn decide(call: &Call, command: CallCommand) -> Result<Vec<CallEvent>, CallError> {
    let expect = |wanted: Status| {
        if call.status == wanted {
            Ok(())
        } else if call.status == Status::None {
            Err(CallError::NotFound)
        } else {
            Err(CallError::WrongStatus(call.status.as_str()))
        }
    };
    Ok(match command {
        CallCommand::Start {
            chat_id,
            caller,
            callee,
            kind,
            schedule_id,
            balance,
            coins_per_minute,
            max_duration_secs,
            at,
        } => {
            if call.status != Status::None {
                return Err(CallError::AlreadyStarted);
            }
            if coins_per_minute > 0 && balance < coins_per_minute {
                return Err(CallError::InsufficientCoins {
                    balance,
                    price: coins_per_minute,
                });
            }
            // Whole minutes the balance buys; the volunteer's maximum may cut it shorter.
            let affordable = if coins_per_minute > 0 {
                balance / coins_per_minute * 60
            } else {
                i64::MAX
            };
            let limit_secs = max_duration_secs.map_or(affordable, |max| max.min(affordable));
            vec![CallEvent::Started {
                chat_id,
                caller,
                callee,
                kind,
                schedule_id,
                coins_per_minute,
                limit_secs,
                at,
            }]
        }
        CallCommand::Accept { by, at } => {
            expect(Status::Ringing)?;
            if by != call.callee {
                return Err(CallError::NotCallee);
            }
            vec![CallEvent::Accepted { at }]
        }
        CallCommand::Reject { by, at } => {
            expect(Status::Ringing)?;
            if by != call.callee {
                return Err(CallError::NotCallee);
            }
            vec![CallEvent::Rejected { at }]
        }
        CallCommand::Miss {
            ring_timeout_secs,
            at,
        } => {
            if call.status != Status::Ringing {
                return Ok(vec![]);
            }
            let rang_since = call.started_at.unwrap_or(at);
            if at - rang_since < Duration::seconds(ring_timeout_secs) {
                return Err(CallError::StillRinging);
            }
            vec![CallEvent::Missed { at }]
        }
        CallCommand::End { by, at } => {
            if let Some(by) = &by {
                if *by != call.caller && *by != call.callee {
                    return Err(CallError::NotMember);
                }
            }
            match call.status {
                Status::Ringing | Status::Accepted => {}
                // Hanging up twice (or after the server did) changes nothing.
                Status::Ended | Status::Rejected | Status::Missed => return Ok(vec![]),
                Status::None => return Err(CallError::NotFound),
            }
            let reason = if by.is_none() {
                EndReason::LimitReached
            } else {
                EndReason::HungUp
            };
            vec![ended(call, by, reason, at)]
        }
        CallCommand::Abandon { since } => {
            if call.status != Status::Accepted {
                return Ok(vec![]);
            }
            vec![ended(call, None, EndReason::ConnectionLost, since)]
        }
        CallCommand::Settle {
            charged_coins,
            earned_coins,
            balance_after,
            low_balance_coins,
            at,
        } => {
            expect(Status::Ended)?;
            if call.billed {
                return Ok(vec![]);
            }
            vec![CallEvent::Billed {
                charged_coins,
                earned_coins,
                balance_after,
                low_balance_coins,
                at,
            }]
        }
    })
}

/// The end of a ringing or running call at `at`: the time from accept (none while ringing),
/// never past the limit, and its price.
fn ended(call: &Call, by: Option<String>, reason: EndReason, at: DateTime<Utc>) -> CallEvent {
    let measured = call
        .accepted_at
        .map_or(0, |accepted| (at - accepted).num_seconds().max(0));
    let duration_secs = measured.min(call.limit_secs);
    CallEvent::Ended {
        by,
        reason,
        duration_secs,
        price_coins: price(duration_secs, call.coins_per_minute),
        at,
    }
}

impl Aggregate for Call {
    const TYPE: &'static str = "Call";
    type Command = CallCommand;
    type Event = CallEvent;
    type Error = CallError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in decide(self, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CallEvent::Started {
                caller,
                callee,
                coins_per_minute,
                limit_secs,
                at,
                ..
            } => {
                self.status = Status::Ringing;
                self.caller = caller;
                self.callee = callee;
                self.coins_per_minute = coins_per_minute;
                self.limit_secs = limit_secs;
                self.started_at = Some(at);
            }
            CallEvent::Accepted { at } => {
                self.status = Status::Accepted;
                self.accepted_at = Some(at);
            }
            CallEvent::Rejected { .. } => self.status = Status::Rejected,
            CallEvent::Missed { .. } => self.status = Status::Missed,
            CallEvent::Ended { .. } => self.status = Status::Ended,
            CallEvent::Billed { .. } => self.billed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Call>;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    fn start(balance: i64, max: Option<i64>) -> CallCommand {
        CallCommand::Start {
            chat_id: "chat".into(),
            caller: "senior".into(),
            callee: "volunteer".into(),
            kind: CallKind::Audio,
            schedule_id: None,
            balance,
            coins_per_minute: 50,
            max_duration_secs: max,
            at: t(0),
        }
    }

    fn started(limit_secs: i64) -> CallEvent {
        CallEvent::Started {
            chat_id: "chat".into(),
            caller: "senior".into(),
            callee: "volunteer".into(),
            kind: CallKind::Audio,
            schedule_id: None,
            coins_per_minute: 50,
            limit_secs,
            at: t(0),
        }
    }

    #[test]
    fn the_limit_is_what_the_balance_buys_or_the_volunteers_maximum() {
        Given::with(())
            .given_no_previous_events()
            .when(start(175, None))
            .then_expect_events(vec![started(180)]);
        Given::with(())
            .given_no_previous_events()
            .when(start(10_000, Some(600)))
            .then_expect_events(vec![started(600)]);
        Given::with(())
            .given_no_previous_events()
            .when(start(49, None))
            .then_expect_error(CallError::InsufficientCoins {
                balance: 49,
                price: 50,
            });
        Given::with(())
            .given(vec![started(180)])
            .when(start(175, None))
            .then_expect_error(CallError::AlreadyStarted);
    }

    #[test]
    fn only_the_callee_answers_and_only_while_ringing() {
        Given::with(())
            .given(vec![started(180)])
            .when(CallCommand::Accept {
                by: "senior".into(),
                at: t(5),
            })
            .then_expect_error(CallError::NotCallee);
        Given::with(())
            .given(vec![started(180)])
            .when(CallCommand::Reject {
                by: "volunteer".into(),
                at: t(5),
            })
            .then_expect_events(vec![CallEvent::Rejected { at: t(5) }]);
        Given::with(())
            .given(vec![started(180), CallEvent::Rejected { at: t(5) }])
            .when(CallCommand::Accept {
                by: "volunteer".into(),
                at: t(6),
            })
            .then_expect_error(CallError::WrongStatus("rejected"));
        Given::with(())
            .given_no_previous_events()
            .when(CallCommand::Accept {
                by: "volunteer".into(),
                at: t(6),
            })
            .then_expect_error(CallError::NotFound);
    }

    #[test]
    fn ringing_ends_as_missed_after_the_timeout_only() {
        let miss = |at| CallCommand::Miss {
            ring_timeout_secs: 45,
            at,
        };
        Given::with(())
            .given(vec![started(180)])
            .when(miss(t(44)))
            .then_expect_error(CallError::StillRinging);
        Given::with(())
            .given(vec![started(180)])
            .when(miss(t(45)))
            .then_expect_events(vec![CallEvent::Missed { at: t(45) }]);
        Given::with(())
            .given(vec![started(180), CallEvent::Accepted { at: t(10) }])
            .when(miss(t(60)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn duration_runs_from_accept_is_capped_by_the_limit_and_priced_per_started_minute() {
        let accepted = CallEvent::Accepted { at: t(10) };
        Given::with(())
            .given(vec![started(180), accepted.clone()])
            .when(CallCommand::End {
                by: Some("senior".into()),
                at: t(10 + 61),
            })
            .then_expect_events(vec![CallEvent::Ended {
                by: Some("senior".into()),
                reason: EndReason::HungUp,
                duration_secs: 61,
                price_coins: 100,
                at: t(71),
            }]);
        // The server ends it late (a slow timer): never more than the limit is charged.
        Given::with(())
            .given(vec![started(180), accepted.clone()])
            .when(CallCommand::End {
                by: None,
                at: t(10 + 200),
            })
            .then_expect_events(vec![CallEvent::Ended {
                by: None,
                reason: EndReason::LimitReached,
                duration_secs: 180,
                price_coins: 150,
                at: t(210),
            }]);
        // Hanging up while ringing costs nothing; a stranger cannot end it; twice is a no-op.
        Given::with(())
            .given(vec![started(180)])
            .when(CallCommand::End {
                by: Some("senior".into()),
                at: t(3),
            })
            .then_expect_events(vec![CallEvent::Ended {
                by: Some("senior".into()),
                reason: EndReason::HungUp,
                duration_secs: 0,
                price_coins: 0,
                at: t(3),
            }]);
        Given::with(())
            .given(vec![started(180), accepted.clone()])
            .when(CallCommand::End {
                by: Some("mallory".into()),
                at: t(30),
            })
            .then_expect_error(CallError::NotMember);
        let ended = CallEvent::Ended {
            by: None,
            reason: EndReason::LimitReached,
            duration_secs: 180,
            price_coins: 150,
            at: t(190),
        };
        Given::with(())
            .given(vec![started(180), accepted, ended])
            .when(CallCommand::End {
                by: Some("senior".into()),
                at: t(191),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_abandoned_call_ends_when_the_connection_was_lost() {
        let accepted = CallEvent::Accepted { at: t(10) };
        Given::with(())
            .given(vec![started(600), accepted.clone()])
            .when(CallCommand::Abandon { since: t(10 + 130) })
            .then_expect_events(vec![CallEvent::Ended {
                by: None,
                reason: EndReason::ConnectionLost,
                duration_secs: 130,
                price_coins: 150,
                at: t(140),
            }]);
        // Ringing calls are missed instead; ended ones stay as they are.
        Given::with(())
            .given(vec![started(600)])
            .when(CallCommand::Abandon { since: t(30) })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![started(600), CallEvent::Rejected { at: t(5) }])
            .when(CallCommand::Abandon { since: t(30) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_ended_call_is_settled_once() {
        let settle = CallCommand::Settle {
            charged_coins: 100,
            earned_coins: 70,
            balance_after: 200,
            low_balance_coins: 250,
            at: t(80),
        };
        let billed = CallEvent::Billed {
            charged_coins: 100,
            earned_coins: 70,
            balance_after: 200,
            low_balance_coins: 250,
            at: t(80),
        };
        let ended = CallEvent::Ended {
            by: Some("senior".into()),
            reason: EndReason::HungUp,
            duration_secs: 61,
            price_coins: 100,
            at: t(71),
        };
        let accepted = CallEvent::Accepted { at: t(10) };
        Given::with(())
            .given(vec![started(180), accepted.clone()])
            .when(settle.clone())
            .then_expect_error(CallError::WrongStatus("accepted"));
        Given::with(())
            .given(vec![started(180), accepted.clone(), ended.clone()])
            .when(settle.clone())
            .then_expect_events(vec![billed.clone()]);
        Given::with(())
            .given(vec![started(180), accepted, ended, billed.clone()])
            .when(settle)
            .then_expect_events(vec![]);
        // 300 -> 200 crosses a threshold of 250; 200 -> 100 does not cross it again.
        assert!(billed.crossed_low_balance());
        let again = CallEvent::Billed {
            charged_coins: 100,
            earned_coins: 70,
            balance_after: 100,
            low_balance_coins: 250,
            at: t(90),
        };
        assert!(!again.crossed_low_balance());
    }
}
