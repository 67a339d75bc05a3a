//! The User aggregate: an account, its credentials, its sessions and its profile.
//!
//! Sessions live inside the user stream so that "change password ends the other sessions" and
//! "reuse of a refresh token ends the session" are decided in one consistency boundary.
//! Only live sessions are kept in the state, so the state stays small.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserType {
    #[default]
    Senior,
    Volunteer,
    Admin,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            UserType::Senior => "senior",
            UserType::Volunteer => "volunteer",
            UserType::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    Unspecified,
}

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Unspecified => "unspecified",
        }
    }
}

/// Why a session ended; kept in the log for audits and shown in the sessions read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionEndReason {
    SignOut,
    RefreshTokenReused,
    PasswordChanged,
    PasswordReset,
}

impl SessionEndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEndReason::SignOut => "sign-out",
            SessionEndReason::RefreshTokenReused => "refresh-token-reused",
            SessionEndReason::PasswordChanged => "password-changed",
            SessionEndReason::PasswordReset => "password-reset",
        }
    }
}

/// Profile fields a user may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone_offset: Option<i32>,
    /// `Some("")` clears the IANA time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl ProfileChanges {
    pub fn is_empty(&self) -> bool {
        *self == ProfileChanges::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserCommand {
    Register {
        email: String,
        name: String,
        user_type: UserType,
        password_hash: String,
        at: DateTime<Utc>,
    },
    OpenSession {
        session_id: String,
        refresh_jti: String,
        at: DateTime<Utc>,
    },
    RefreshSession {
        session_id: String,
        presented_jti: String,
        new_jti: String,
        at: DateTime<Utc>,
    },
    CloseSession {
        session_id: String,
        at: DateTime<Utc>,
    },
    VerifyEmail {
        at: DateTime<Utc>,
    },
    ChangePassword {
        password_hash: String,
        /// The session that asked for the change stays open; every other one ends.
        keep_session: Option<String>,
        at: DateTime<Utc>,
    },
    ResetPassword {
        password_hash: String,
        at: DateTime<Utc>,
    },
    UpdateProfile {
        changes: ProfileChanges,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        email: String,
        name: String,
        user_type: UserType,
        password_hash: String,
        at: DateTime<Utc>,
    },
    SessionOpened {
        session_id: String,
        refresh_jti: String,
        at: DateTime<Utc>,
    },
    SessionRefreshed {
        session_id: String,
        refresh_jti: String,
        at: DateTime<Utc>,
    },
    SessionEnded {
        session_id: String,
        reason: SessionEndReason,
        at: DateTime<Utc>,
    },
    EmailVerified {
        at: DateTime<Utc>,
    },
    PasswordChanged {
        password_hash: String,
        at: DateTime<Utc>,
    },
    ProfileUpdated {
        changes: ProfileChanges,
        at: DateTime<Utc>,
    },
}
domain_event!(UserEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user already registered")]
    AlreadyRegistered,
    #[error("user not found")]
    NotFound,
    #[error("session not found or ended")]
    SessionNotFound,
    #[error("session already exists")]
    SessionExists,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct User {
    registered: bool,
    email_verified: bool,
    profile: ProfileChanges,
    /// Live sessions: session id -> the refresh token id that may be presented next.
    sessions: BTreeMap<String, String>,
}

impl User {
    fn ensure_registered(&self) -> Result<(), UserError> {
        if self.registered {
            Ok(())
        } else {
            Err(UserError::NotFound)
        }
    }

    fn end_sessions_except(
        &self,
        keep: Option<&str>,
        reason: SessionEndReason,
        at: DateTime<Utc>,
    ) -> Vec<UserEvent> {
        self.sessions
            .keys()
            .filter(|id| Some(id.as_str()) != keep)
            .map(|id| UserEvent::SessionEnded {
                session_id: id.clone(),
                reason,
                at,
            })
            .collect()
    }

    /// Only the fields that differ from the current profile, so a no-op update emits nothing.
    fn effective_changes(&self, wanted: ProfileChanges) -> ProfileChanges {
        fn differs<T: PartialEq>(new: Option<T>, old: &Option<T>) -> Option<T> {
            match new {
                Some(value) if old.as_ref() != Some(&value) => Some(value),
                _ => None,
            }
        }
        ProfileChanges {
            name: differs(wanted.name, &self.profile.name),
            gender: differs(wanted.gender, &self.profile.gender),
            bio: differs(wanted.bio, &self.profile.bio),
            language: differs(wanted.language, &self.profile.language),
            timezone_offset: differs(wanted.timezone_offset, &self.profile.timezone_offset),
            timezone: differs(wanted.timezone, &self.profile.timezone),
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            UserCommand::Register {
                email,
                name,
                user_type,
                password_hash,
                at,
            } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                vec![UserEvent::UserRegistered {
                    email,
                    name,
                    user_type,
                    password_hash,
                    at,
                }]
            }
            UserCommand::OpenSession {
                session_id,
                refresh_jti,
                at,
            } => {
                self.ensure_registered()?;
                if self.sessions.contains_key(&session_id) {
                    return Err(UserError::SessionExists);
                }
                vec![UserEvent::SessionOpened {
                    session_id,
                    refresh_jti,
                    at,
                }]
            }
            UserCommand::RefreshSession {
                session_id,
                presented_jti,
                new_jti,
                at,
            } => {
                self.ensure_registered()?;
                let current = self
                    .sessions
                    .get(&session_id)
                    .ok_or(UserError::SessionNotFound)?;
                if *current == presented_jti {
                    vec![UserEvent::SessionRefreshed {
                        session_id,
                        refresh_jti: new_jti,
                        at,
                    }]
                } else {
                    // A refresh token of this session was used twice: someone holds a stolen
                    // copy. End the whole session (theft detection); the caller sees 401.
                    vec![UserEvent::SessionEnded {
                        session_id,
                        reason: SessionEndReason::RefreshTokenReused,
                        at,
                    }]
                }
            }
            UserCommand::CloseSession { session_id, at } => {
                self.ensure_registered()?;
                if !self.sessions.contains_key(&session_id) {
                    return Err(UserError::SessionNotFound);
                }
                vec![UserEvent::SessionEnded {
                    session_id,
                    reason: SessionEndReason::SignOut,
                    at,
                }]
            }
            UserCommand::VerifyEmail { at } => {
                self.ensure_registered()?;
                if self.email_verified {
                    vec![]
                } else {
                    vec![UserEvent::EmailVerified { at }]
                }
            }
            UserCommand::ChangePassword {
                password_hash,
                keep_session,
                at,
            } => {
                self.ensure_registered()?;
                let mut events = vec![UserEvent::PasswordChanged { password_hash, at }];
                events.extend(self.end_sessions_except(
                    keep_session.as_deref(),
                    SessionEndReason::PasswordChanged,
                    at,
                ));
                events
            }
            UserCommand::ResetPassword { password_hash, at } => {
                self.ensure_registered()?;
                let mut events = vec![UserEvent::PasswordChanged { password_hash, at }];
                events.extend(self.end_sessions_except(None, SessionEndReason::PasswordReset, at));
                events
            }
            UserCommand::UpdateProfile { changes, at } => {
                self.ensure_registered()?;
                let changes = self.effective_changes(changes);
                if changes.is_empty() {
                    vec![]
                } else {
                    vec![UserEvent::ProfileUpdated { changes, at }]
                }
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { name, .. } => {
                self.registered = true;
                self.profile.name = Some(name);
            }
            UserEvent::SessionOpened {
                session_id,
                refresh_jti,
                ..
            }
            | UserEvent::SessionRefreshed {
                session_id,
                refresh_jti,
                ..
            } => {
                self.sessions.insert(session_id, refresh_jti);
            }
            UserEvent::SessionEnded { session_id, .. } => {
                self.sessions.remove(&session_id);
            }
            UserEvent::EmailVerified { .. } => self.email_verified = true,
            UserEvent::PasswordChanged { .. } => {}
            UserEvent::ProfileUpdated { changes, .. } => {
                let p = &mut self.profile;
                p.name = changes.name.or(p.name.take());
                p.gender = changes.gender.or(p.gender.take());
                p.bio = changes.bio.or(p.bio.take());
                p.language = changes.language.or(p.language.take());
                p.timezone_offset = changes.timezone_offset.or(p.timezone_offset.take());
                p.timezone = changes.timezone.or(p.timezone.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<User>;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 13, 30, 0).unwrap()
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            email: "ann@example.com".into(),
            name: "Ann".into(),
            user_type: UserType::Senior,
            password_hash: "h1".into(),
            at: at(),
        }
    }

    fn opened(session: &str, jti: &str) -> UserEvent {
        UserEvent::SessionOpened {
            session_id: session.into(),
            refresh_jti: jti.into(),
            at: at(),
        }
    }

    #[test]
    fn registers_once() {
        Given::with(())
            .given(vec![registered()])
            .when(UserCommand::Register {
                email: "x@example.com".into(),
                name: "X".into(),
                user_type: UserType::Volunteer,
                password_hash: "h".into(),
                at: at(),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn no_session_for_an_unknown_user() {
        Given::with(())
            .given_no_previous_events()
            .when(UserCommand::OpenSession {
                session_id: "s1".into(),
                refresh_jti: "j1".into(),
                at: at(),
            })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn refresh_with_the_current_token_rotates_it() {
        Given::with(())
            .given(vec![registered(), opened("s1", "j1")])
            .when(UserCommand::RefreshSession {
                session_id: "s1".into(),
                presented_jti: "j1".into(),
                new_jti: "j2".into(),
                at: at(),
            })
            .then_expect_events(vec![UserEvent::SessionRefreshed {
                session_id: "s1".into(),
                refresh_jti: "j2".into(),
                at: at(),
            }]);
    }

    #[test]
    fn reuse_of_an_old_refresh_token_ends_the_session() {
        let refreshed = UserEvent::SessionRefreshed {
            session_id: "s1".into(),
            refresh_jti: "j2".into(),
            at: at(),
        };
        Given::with(())
            .given(vec![registered(), opened("s1", "j1"), refreshed])
            .when(UserCommand::RefreshSession {
                session_id: "s1".into(),
                presented_jti: "j1".into(),
                new_jti: "j3".into(),
                at: at(),
            })
            .then_expect_events(vec![UserEvent::SessionEnded {
                session_id: "s1".into(),
                reason: SessionEndReason::RefreshTokenReused,
                at: at(),
            }]);
    }

    #[test]
    fn an_ended_session_cannot_be_refreshed() {
        let ended = UserEvent::SessionEnded {
            session_id: "s1".into(),
            reason: SessionEndReason::SignOut,
            at: at(),
        };
        Given::with(())
            .given(vec![registered(), opened("s1", "j1"), ended])
            .when(UserCommand::RefreshSession {
                session_id: "s1".into(),
                presented_jti: "j1".into(),
                new_jti: "j2".into(),
                at: at(),
            })
            .then_expect_error(UserError::SessionNotFound);
    }

    #[test]
    fn changing_the_password_ends_the_other_sessions_only() {
        Given::with(())
            .given(vec![registered(), opened("s1", "j1"), opened("s2", "j2")])
            .when(UserCommand::ChangePassword {
                password_hash: "h2".into(),
                keep_session: Some("s1".into()),
                at: at(),
            })
            .then_expect_events(vec![
                UserEvent::PasswordChanged {
                    password_hash: "h2".into(),
                    at: at(),
                },
                UserEvent::SessionEnded {
                    session_id: "s2".into(),
                    reason: SessionEndReason::PasswordChanged,
                    at: at(),
                },
            ]);
    }

    #[test]
    fn resetting_the_password_ends_every_session() {
        Given::with(())
            .given(vec![registered(), opened("s1", "j1"), opened("s2", "j2")])
            .when(UserCommand::ResetPassword {
                password_hash: "h2".into(),
                at: at(),
            })
            .then_expect_events(vec![
                UserEvent::PasswordChanged {
                    password_hash: "h2".into(),
                    at: at(),
                },
                UserEvent::SessionEnded {
                    session_id: "s1".into(),
                    reason: SessionEndReason::PasswordReset,
                    at: at(),
                },
                UserEvent::SessionEnded {
                    session_id: "s2".into(),
                    reason: SessionEndReason::PasswordReset,
                    at: at(),
                },
            ]);
    }

    #[test]
    fn a_profile_update_records_only_what_changed() {
        Given::with(())
            .given(vec![registered()])
            .when(UserCommand::UpdateProfile {
                changes: ProfileChanges {
                    name: Some("Ann".into()),
                    bio: Some("Retired teacher".into()),
                    ..Default::default()
                },
                at: at(),
            })
            .then_expect_events(vec![UserEvent::ProfileUpdated {
                changes: ProfileChanges {
                    bio: Some("Retired teacher".into()),
                    ..Default::default()
                },
                at: at(),
            }]);
    }

    #[test]
    fn an_unchanged_profile_emits_nothing() {
        Given::with(())
            .given(vec![registered()])
            .when(UserCommand::UpdateProfile {
                changes: ProfileChanges {
                    name: Some("Ann".into()),
                    ..Default::default()
                },
                at: at(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn email_is_verified_once() {
        Given::with(())
            .given(vec![registered(), UserEvent::EmailVerified { at: at() }])
            .when(UserCommand::VerifyEmail { at: at() })
            .then_expect_events(vec![]);
    }
}
