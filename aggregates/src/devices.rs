//! The PushDevices aggregate (one per user, id = the user's id): the devices that receive the
//! user's push notifications. A device is known by the SHA-256 of its token; the token itself
//! travels sealed with the user's key (crypto-shredding), so deleting the account leaves no
//! readable token in the log.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;
use crate::user::Sealed;

/// Devices a user may have; registering one more drops the one registered longest ago.
pub const MAX_DEVICES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn parse(value: &str) -> Option<Platform> {
        match value {
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            "web" => Some(Platform::Web),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DevicesCommand {
    /// Registers (or registers again: the app calls this at every start) a device.
    Register {
        token_hash: String,
        token: Sealed,
        platform: Platform,
        at: DateTime<Utc>,
    },
    /// The user removed a device (signing out of the app); unknown devices change nothing.
    Remove {
        token_hash: String,
        at: DateTime<Utc>,
    },
    /// The push provider said the token is dead.
    Drop {
        token_hash: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DevicesEvent {
    DeviceRegistered {
        token_hash: String,
        token: Sealed,
        platform: Platform,
        at: DateTime<Utc>,
    },
    DeviceRemoved {
        token_hash: String,
        at: DateTime<Utc>,
    },
    /// Removed because the provider reported the token invalid.
    DeviceDropped {
        token_hash: String,
        at: DateTime<Utc>,
    },
}
domain_event!(DevicesEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevicesError {}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PushDevices {
    /// Token hashes, registered longest ago first.
    devices: Vec<String>,
}

impl Aggregate for PushDevices {
    const TYPE: &'static str = "PushDevices";
    type Command = DevicesCommand;
    type Event = DevicesEvent;
    type Error = DevicesError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let known = |hash: &str| self.devices.iter().any(|d| d == hash);
        let events = match command {
            DevicesCommand::Register {
                token_hash,
                token,
                platform,
                at,
            } => {
                let mut events = Vec::new();
                // Every registration is recorded: the same token may have moved to another
                // account in between, and this makes it ours again.
                if !known(&token_hash) && self.devices.len() >= MAX_DEVICES {
                    events.push(DevicesEvent::DeviceRemoved {
                        token_hash: self.devices[0].clone(),
                        at,
                    });
                }
                events.push(DevicesEvent::DeviceRegistered {
                    token_hash,
                    token,
                    platform,
                    at,
                });
                events
            }
            DevicesCommand::Remove { token_hash, at } if known(&token_hash) => {
                vec![DevicesEvent::DeviceRemoved { token_hash, at }]
            }
            DevicesCommand::Drop { token_hash, at } if known(&token_hash) => {
                vec![DevicesEvent::DeviceDropped { token_hash, at }]
            }
            DevicesCommand::Remove { .. } | DevicesCommand::Drop { .. } => vec![],
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            DevicesEvent::DeviceRegistered { token_hash, .. } => {
                self.devices.retain(|d| *d != token_hash);
                self.devices.push(token_hash);
            }
            DevicesEvent::DeviceRemoved { token_hash, .. }
            | DevicesEvent::DeviceDropped { token_hash, .. } => {
                self.devices.retain(|d| *d != token_hash)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<PushDevices>;

    fn t() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn registered(hash: &str) -> DevicesEvent {
        DevicesEvent::DeviceRegistered {
            token_hash: hash.into(),
            token: Sealed(format!("sealed-{hash}")),
            platform: Platform::Android,
            at: t(),
        }
    }

    fn register(hash: &str) -> DevicesCommand {
        DevicesCommand::Register {
            token_hash: hash.into(),
            token: Sealed(format!("sealed-{hash}")),
            platform: Platform::Android,
            at: t(),
        }
    }

    #[test]
    fn every_registration_is_recorded() {
        Given::with(())
            .given(vec![registered("a")])
            .when(register("a"))
            .then_expect_events(vec![registered("a")]);
    }

    #[test]
    fn one_device_too_many_drops_the_oldest() {
        let full: Vec<DevicesEvent> = (0..MAX_DEVICES)
            .map(|i| registered(&format!("d{i}")))
            .collect();
        Given::with(())
            .given(full.clone())
            .when(register("new"))
            .then_expect_events(vec![
                DevicesEvent::DeviceRemoved {
                    token_hash: "d0".into(),
                    at: t(),
                },
                registered("new"),
            ]);
        // Registering a known device again does not push any out.
        Given::with(())
            .given(full)
            .when(register("d3"))
            .then_expect_events(vec![registered("d3")]);
    }

    #[test]
    fn removing_or_dropping_an_unknown_device_changes_nothing() {
        Given::with(())
            .given(vec![registered("a")])
            .when(DevicesCommand::Remove {
                token_hash: "b".into(),
                at: t(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![registered("a")])
            .when(DevicesCommand::Drop {
                token_hash: "a".into(),
                at: t(),
            })
            .then_expect_events(vec![DevicesEvent::DeviceDropped {
                token_hash: "a".into(),
                at: t(),
            }]);
        Given::with(())
            .given(vec![
                registered("a"),
                DevicesEvent::DeviceRemoved {
                    token_hash: "a".into(),
                    at: t(),
                },
            ])
            .when(DevicesCommand::Drop {
                token_hash: "a".into(),
                at: t(),
            })
            .then_expect_events(vec![]);
    }
}
