//! One-time passwords: one aggregate per (email, purpose), id = keyed hash of both.
//! Rules: 6 digits (generated outside), valid 10 minutes, 5 tries, single use.
//! Only a keyed hash of the code is stored, never the code.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

pub const OTP_TTL_MINUTES: i64 = 10;
pub const OTP_MAX_TRIES: u32 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OtpCommand {
    Issue {
        code_hash: String,
        at: DateTime<Utc>,
    },
    /// Checks a code; `consume` marks it used when it matches (single use).
    Verify {
        code_hash: String,
        consume: bool,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OtpEvent {
    OtpIssued {
        code_hash: String,
        expires_at: DateTime<Utc>,
    },
    /// A wrong code was presented; the try is counted so guessing is bounded.
    OtpAttemptFailed {
        tries_left: u32,
    },
    OtpUsed {
        at: DateTime<Utc>,
    },
}
domain_event!(OtpEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    #[error("no valid code: request a new one")]
    NoValidCode,
    #[error("the code has expired: request a new one")]
    Expired,
    #[error("too many wrong codes: request a new one")]
    TooManyTries,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Otp {
    code_hash: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    tries_left: u32,
}

impl Aggregate for Otp {
    const TYPE: &'static str = "Otp";
    type Command = OtpCommand;
    type Event = OtpEvent;
    type Error = OtpError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            OtpCommand::Issue { code_hash, at } => {
                let expires_at = at + Duration::minutes(OTP_TTL_MINUTES);
                sink.write(
                    OtpEvent::OtpIssued {
                        code_hash,
                        expires_at,
                    },
                    self,
                )
                .await;
            }
            OtpCommand::Verify {
                code_hash,
                consume,
                at,
            } => {
                let (Some(expected), Some(expires_at)) = (&self.code_hash, self.expires_at) else {
                    return Err(OtpError::NoValidCode);
                };
                if at >= expires_at {
                    return Err(OtpError::Expired);
                }
                if self.tries_left == 0 {
                    return Err(OtpError::TooManyTries);
                }
                if *expected == code_hash {
                    if consume {
                        sink.write(OtpEvent::OtpUsed { at }, self).await;
                    }
                } else {
                    let tries_left = self.tries_left - 1;
                    sink.write(OtpEvent::OtpAttemptFailed { tries_left }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OtpEvent::OtpIssued {
                code_hash,
                expires_at,
            } => {
                self.code_hash = Some(code_hash);
                self.expires_at = Some(expires_at);
                self.tries_left = OTP_MAX_TRIES;
            }
            OtpEvent::OtpAttemptFailed { tries_left } => self.tries_left = tries_left,
            OtpEvent::OtpUsed { .. } => {
                self.code_hash = None;
                self.expires_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Otp>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 13, 0, 0).unwrap()
    }

    fn issued() -> OtpEvent {
        OtpEvent::OtpIssued {
            code_hash: "good".into(),
            expires_at: t0() + Duration::minutes(OTP_TTL_MINUTES),
        }
    }

    fn verify(code: &str, minutes_later: i64) -> OtpCommand {
        OtpCommand::Verify {
            code_hash: code.into(),
            consume: true,
            at: t0() + Duration::minutes(minutes_later),
        }
    }

    #[test]
    fn issuing_sets_a_ten_minute_expiry() {
        Given::with(())
            .given_no_previous_events()
            .when(OtpCommand::Issue {
                code_hash: "good".into(),
                at: t0(),
            })
            .then_expect_events(vec![issued()]);
    }

    #[test]
    fn the_right_code_is_used_once() {
        Given::with(())
            .given(vec![issued()])
            .when(verify("good", 1))
            .then_expect_events(vec![OtpEvent::OtpUsed {
                at: t0() + Duration::minutes(1),
            }]);
        Given::with(())
            .given(vec![issued(), OtpEvent::OtpUsed { at: t0() }])
            .when(verify("good", 1))
            .then_expect_error(OtpError::NoValidCode);
    }

    #[test]
    fn a_wrong_code_counts_a_try() {
        Given::with(())
            .given(vec![issued()])
            .when(verify("bad", 1))
            .then_expect_events(vec![OtpEvent::OtpAttemptFailed { tries_left: 4 }]);
    }

    #[test]
    fn five_wrong_codes_lock_the_code() {
        let mut given = vec![issued()];
        given.extend(
            (0..5)
                .rev()
                .map(|left| OtpEvent::OtpAttemptFailed { tries_left: left }),
        );
        Given::with(())
            .given(given)
            .when(verify("good", 1))
            .then_expect_error(OtpError::TooManyTries);
    }

    #[test]
    fn an_expired_code_is_refused() {
        Given::with(())
            .given(vec![issued()])
            .when(verify("good", OTP_TTL_MINUTES))
            .then_expect_error(OtpError::Expired);
    }

    #[test]
    fn checking_without_consuming_keeps_the_code() {
        Given::with(())
            .given(vec![issued()])
            .when(OtpCommand::Verify {
                code_hash: "good".into(),
                consume: false,
                at: t0(),
            })
            .then_expect_events(vec![]);
    }
}
