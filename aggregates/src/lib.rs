//! The write model of Talkamie: pure aggregates (no I/O, no clock, no SQL).
//!
//! Every business rule lives here and is tested with `cqrs_es::test::TestFramework`
//! (given events / when command / then events or error). Time and ids come in through
//! the commands, so the rules are deterministic.

pub mod alert_inbox;
pub mod calendar;
pub mod call;
pub mod devices;
pub mod email_claim;
pub mod otp;
pub mod pair;
pub mod review;
pub mod support;
pub mod user;
pub mod wallet;

/// Implements `cqrs_es::DomainEvent` for an externally tagged event enum: the event type is the
/// variant name, so the `event_type` column of the log is readable by analysts.
#[macro_export]
macro_rules! domain_event {
    ($event:ty, $version:literal) => {
        impl cqrs_es::DomainEvent for $event {
            fn event_type(&self) -> String {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::Object(map)) => {
                        map.keys().next().cloned().unwrap_or_default()
                    }
                    Ok(serde_json::Value::String(name)) => name,
                    _ => String::from("Unknown"),
                }
            }
            fn event_version(&self) -> String {
                String::from($version)
            }
        }
    };
}
