//! "One account per email": an aggregate whose id is a keyed hash of the normalised email.
//! Optimistic concurrency on this stream makes concurrent sign-ups with one email race-free,
//! and no plaintext email sits in an aggregate id.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmailClaimCommand {
    Claim {
        user_id: String,
    },
    /// The owner deleted their account: the email may be used again.
    Release {
        user_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmailClaimEvent {
    EmailClaimed { user_id: String },
    EmailReleased { user_id: String },
}
domain_event!(EmailClaimEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailClaimError {
    #[error("an account with this email already exists")]
    AlreadyClaimed,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EmailClaim {
    owner: Option<String>,
}

impl Aggregate for EmailClaim {
    const TYPE: &'static str = "EmailClaim";
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            EmailClaimCommand::Claim { user_id } => {
                if self.owner.is_some() {
                    return Err(EmailClaimError::AlreadyClaimed);
                }
                sink.write(EmailClaimEvent::EmailClaimed { user_id }, self)
                    .await;
                Ok(())
            }
            EmailClaimCommand::Release { user_id } => {
                if self.owner.as_deref() == Some(user_id.as_str()) {
                    sink.write(EmailClaimEvent::EmailReleased { user_id }, self)
                        .await;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            EmailClaimEvent::EmailClaimed { user_id } => self.owner = Some(user_id),
            EmailClaimEvent::EmailReleased { .. } => self.owner = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<EmailClaim>;

    #[test]
    fn a_free_email_is_claimed() {
        Given::with(())
            .given_no_previous_events()
            .when(EmailClaimCommand::Claim {
                user_id: "u1".into(),
            })
            .then_expect_events(vec![EmailClaimEvent::EmailClaimed {
                user_id: "u1".into(),
            }]);
    }

    #[test]
    fn a_claimed_email_cannot_be_claimed_again() {
        Given::with(())
            .given(vec![EmailClaimEvent::EmailClaimed {
                user_id: "u1".into(),
            }])
            .when(EmailClaimCommand::Claim {
                user_id: "u2".into(),
            })
            .then_expect_error(EmailClaimError::AlreadyClaimed);
    }

    #[test]
    fn a_released_email_can_be_claimed_again_and_only_the_owner_releases() {
        Given::with(())
            .given(vec![
                EmailClaimEvent::EmailClaimed {
                    user_id: "u1".into(),
                },
                EmailClaimEvent::EmailReleased {
                    user_id: "u1".into(),
                },
            ])
            .when(EmailClaimCommand::Claim {
                user_id: "u2".into(),
            })
            .then_expect_events(vec![EmailClaimEvent::EmailClaimed {
                user_id: "u2".into(),
            }]);
        Given::with(())
            .given(vec![EmailClaimEvent::EmailClaimed {
                user_id: "u1".into(),
            }])
            .when(EmailClaimCommand::Release {
                user_id: "u2".into(),
            })
            .then_expect_events(vec![]);
    }
}
