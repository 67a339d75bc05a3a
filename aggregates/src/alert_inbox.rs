//! The AlertInbox aggregate (one per user): the user's "I have read these alerts" marks.
//!
//! Alerts themselves are derived by the alerts projection from other streams (a connect
//! request, a message request, ...), with ids that are stable across rebuilds; this stream only
//! records which of them the user marked read, so a rebuild restores the read states too.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

/// Alerts one `alerts.update` may mark at once.
pub const MAX_ALERTS_PER_UPDATE: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlertInboxCommand {
    /// `alert_ids` are alerts of this user (the caller checked) that are still unread.
    MarkRead {
        alert_ids: Vec<String>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlertInboxEvent {
    AlertsRead {
        alert_ids: Vec<String>,
        at: DateTime<Utc>,
    },
}
domain_event!(AlertInboxEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertInboxError {
    #[error("at most {MAX_ALERTS_PER_UPDATE} alerts at once")]
    TooMany,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AlertInbox;

impl Aggregate for AlertInbox {
    const TYPE: &'static str = "AlertInbox";
    type Command = AlertInboxCommand;
    type Event = AlertInboxEvent;
    type Error = AlertInboxError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AlertInboxCommand::MarkRead { alert_ids, at } => {
                if alert_ids.len() > MAX_ALERTS_PER_UPDATE {
                    return Err(AlertInboxError::TooMany);
                }
                if !alert_ids.is_empty() {
                    sink.write(AlertInboxEvent::AlertsRead { alert_ids, at }, self)
                        .await;
                }
                Ok(())
            }
        }
    }

    fn apply(&mut self, _event: Self::Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<AlertInbox>;

    #[test]
    fn marks_are_recorded_and_empty_or_huge_batches_are_not() {
        let at = Utc::now();
        Given::with(())
            .given_no_previous_events()
            .when(AlertInboxCommand::MarkRead {
                alert_ids: vec!["a1".into()],
                at,
            })
            .then_expect_events(vec![AlertInboxEvent::AlertsRead {
                alert_ids: vec!["a1".into()],
                at,
            }]);
        Given::with(())
            .given_no_previous_events()
            .when(AlertInboxCommand::MarkRead {
                alert_ids: vec![],
                at,
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given_no_previous_events()
            .when(AlertInboxCommand::MarkRead {
                alert_ids: vec!["a".into(); MAX_ALERTS_PER_UPDATE + 1],
                at,
            })
            .then_expect_error(AlertInboxError::TooMany);
    }
}
