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
    AccountDeleted,
}

impl SessionEndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEndReason::SignOut => "sign-out",
            SessionEndReason::RefreshTokenReused => "refresh-token-reused",
            SessionEndReason::PasswordChanged => "password-changed",
            SessionEndReason::PasswordReset => "password-reset",
            SessionEndReason::AccountDeleted => "account-deleted",
        }
    }
}

/// A personal value encrypted with the user's own key (crypto-shredding): the log keeps only
/// ciphertext, and destroying the key on account deletion makes it unreadable everywhere.
/// Sealing and opening happen outside the aggregate (they need the key and randomness).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Matches,
    Volunteers,
    Seniors,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Matches => "matches",
            Visibility::Volunteers => "volunteers",
            Visibility::Seniors => "seniors",
        }
    }
}

/// An interest: one of the catalog's, or the user's own with an emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InterestChoice {
    Catalog { id: String },
    Custom { name: String, emoji: String },
}

/// Profile fields a user may change; `None` leaves a field as it is. Personal free text is
/// sealed; an empty plaintext clears a field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<Sealed>,
    /// `YYYY-MM-DD`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dob: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_id: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paypal_email: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone_offset: Option<i32>,
    /// IANA name; `Some("")` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A specialization area code; `Some("")` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interests: Option<Vec<InterestChoice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_state: Option<String>,
    /// Files uploaded by this user; a `FileRef` with an empty key clears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_duration: Option<CallDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_enabled: Option<bool>,
}

impl ProfileChanges {
    pub fn is_empty(&self) -> bool {
        *self == ProfileChanges::default()
    }
}

/// A file the user uploaded, as a profile shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRef {
    pub key: String,
    pub mime_type: String,
    /// Pictures get a small (`sm`) version.
    pub thumbnail: bool,
}

impl FileRef {
    /// The value that removes a file from the profile.
    pub fn cleared() -> FileRef {
        FileRef {
            key: String::new(),
            mime_type: String::new(),
            thumbnail: false,
        }
    }
}

/// The longest call a volunteer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallDuration {
    Unlimited,
    Seconds(u32),
}

/// Who may read a meta (contract section 13).
pub const META_ACCESS_ANYONE: u8 = 0;
pub const META_ACCESS_ADMINS: u8 = 4;
pub const MAX_METAS: usize = 20;
pub const MAX_META_KEY_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub key: String,
    pub access: u8,
    pub value: Sealed,
}

/// One meta of a `ChangeMetas` command; `value: None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaChange {
    pub key: String,
    pub access: u8,
    pub value: Option<Sealed>,
}

/// `metaAction` 0 / 1 / 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetaAction {
    /// Add or update the given keys.
    Merge,
    /// Keep only the given keys.
    Replace,
    /// Remove every meta.
    Clear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationStep {
    Basic,
    Admin,
    Background,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerificationStatus {
    Pending,
    InProgress,
    Failed,
    Complete,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::InProgress => "in-progress",
            VerificationStatus::Failed => "failed",
            VerificationStatus::Complete => "complete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserCommand {
    Register {
        email: Sealed,
        name: Sealed,
        user_type: UserType,
        password_hash: Sealed,
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
        password_hash: Sealed,
        /// The session that asked for the change stays open; every other one ends.
        keep_session: Option<String>,
        at: DateTime<Utc>,
    },
    ResetPassword {
        password_hash: Sealed,
        at: DateTime<Utc>,
    },
    UpdateProfile {
        changes: Box<ProfileChanges>,
        at: DateTime<Utc>,
    },
    ChangeMetas {
        action: MetaAction,
        changes: Vec<MetaChange>,
        at: DateTime<Utc>,
    },
    /// Admin decisions and background-check results; `basic` is derived, never set.
    SetVerification {
        step: VerificationStep,
        status: VerificationStatus,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        email: Sealed,
        name: Sealed,
        user_type: UserType,
        password_hash: Sealed,
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
        password_hash: Sealed,
        at: DateTime<Utc>,
    },
    ProfileUpdated {
        changes: Box<ProfileChanges>,
        at: DateTime<Utc>,
    },
    /// The whole set of metas after a change.
    MetasReplaced {
        metas: Vec<Meta>,
        at: DateTime<Utc>,
    },
    VerificationChanged {
        step: VerificationStep,
        status: VerificationStatus,
        at: DateTime<Utc>,
    },
    UserDeleted {
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
    #[error("at most {MAX_METAS} metas")]
    TooManyMetas,
    #[error("meta {0}: access level above your own")]
    MetaAccessTooHigh(String),
    #[error("meta keys are 1 to {MAX_META_KEY_CHARS} characters")]
    BadMetaKey,
    #[error("only volunteers are verified")]
    NotAVolunteer,
    #[error("the basic step is derived from the profile and cannot be set")]
    BasicStepIsDerived,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct User {
    registered: bool,
    deleted: bool,
    user_type: UserType,
    email_verified: bool,
    /// Live sessions: session id -> the refresh token id that may be presented next.
    sessions: BTreeMap<String, String>,
    metas: Vec<Meta>,
}

impl User {
    fn ensure_active(&self) -> Result<(), UserError> {
        if self.registered && !self.deleted {
            Ok(())
        } else {
            Err(UserError::NotFound)
        }
    }

    /// The highest meta access level this user may set and read on their own profile.
    fn own_meta_level(&self) -> u8 {
        if self.user_type == UserType::Admin {
            META_ACCESS_ADMINS
        } else {
            3
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

    fn next_metas(
        &self,
        action: MetaAction,
        changes: Vec<MetaChange>,
    ) -> Result<Vec<Meta>, UserError> {
        let own = self.own_meta_level();
        for change in &changes {
            let chars = change.key.chars().count();
            if chars == 0 || chars > MAX_META_KEY_CHARS {
                return Err(UserError::BadMetaKey);
            }
            if change.access > own {
                return Err(UserError::MetaAccessTooHigh(change.key.clone()));
            }
        }
        let mut metas: Vec<Meta> = match action {
            MetaAction::Merge => self.metas.clone(),
            MetaAction::Replace | MetaAction::Clear => vec![],
        };
        if action != MetaAction::Clear {
            for change in changes {
                metas.retain(|m| m.key != change.key);
                if let Some(value) = change.value {
                    metas.push(Meta {
                        key: change.key,
                        access: change.access,
                        value,
                    });
                }
            }
        }
        if metas.len() > MAX_METAS {
            return Err(UserError::TooManyMetas);
        }
        Ok(metas)
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
        if let UserCommand::Register {
            email,
            name,
            user_type,
            password_hash,
            at,
        } = command
        {
            if self.registered {
                return Err(UserError::AlreadyRegistered);
            }
            let event = UserEvent::UserRegistered {
                email,
                name,
                user_type,
                password_hash,
                at,
            };
            sink.write(event, self).await;
            return Ok(());
        }
        self.ensure_active()?;
        let events = match command {
            UserCommand::Register { .. } => vec![],
            UserCommand::OpenSession {
                session_id,
                refresh_jti,
                at,
            } => {
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
                let mut events = vec![UserEvent::PasswordChanged { password_hash, at }];
                events.extend(self.end_sessions_except(
                    keep_session.as_deref(),
                    SessionEndReason::PasswordChanged,
                    at,
                ));
                events
            }
            UserCommand::ResetPassword { password_hash, at } => {
                let mut events = vec![UserEvent::PasswordChanged { password_hash, at }];
                events.extend(self.end_sessions_except(None, SessionEndReason::PasswordReset, at));
                events
            }
            UserCommand::UpdateProfile { changes, at } => {
                if changes.is_empty() {
                    vec![]
                } else {
                    vec![UserEvent::ProfileUpdated { changes, at }]
                }
            }
            UserCommand::ChangeMetas {
                action,
                changes,
                at,
            } => {
                let metas = self.next_metas(action, changes)?;
                if metas == self.metas {
                    vec![]
                } else {
                    vec![UserEvent::MetasReplaced { metas, at }]
                }
            }
            UserCommand::SetVerification { step, status, at } => {
                if self.user_type != UserType::Volunteer {
                    return Err(UserError::NotAVolunteer);
                }
                if step == VerificationStep::Basic {
                    return Err(UserError::BasicStepIsDerived);
                }
                vec![UserEvent::VerificationChanged { step, status, at }]
            }
            UserCommand::Delete { at } => {
                let mut events =
                    self.end_sessions_except(None, SessionEndReason::AccountDeleted, at);
                events.push(UserEvent::UserDeleted { at });
                events
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered { user_type, .. } => {
                self.registered = true;
                self.user_type = user_type;
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
            UserEvent::MetasReplaced { metas, .. } => self.metas = metas,
            UserEvent::UserDeleted { .. } => {
                self.deleted = true;
                self.metas.clear();
            }
            UserEvent::PasswordChanged { .. }
            | UserEvent::ProfileUpdated { .. }
            | UserEvent::VerificationChanged { .. } => {}
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

    fn sealed(s: &str) -> Sealed {
        Sealed(s.to_string())
    }

    fn registered_as(user_type: UserType) -> UserEvent {
        UserEvent::UserRegistered {
            email: sealed("ann@example.com"),
            name: sealed("Ann"),
            user_type,
            password_hash: sealed("h1"),
            at: at(),
        }
    }

    fn registered() -> UserEvent {
        registered_as(UserType::Senior)
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
                email: sealed("x@example.com"),
                name: sealed("X"),
                user_type: UserType::Volunteer,
                password_hash: sealed("h"),
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
                password_hash: sealed("h2"),
                keep_session: Some("s1".into()),
                at: at(),
            })
            .then_expect_events(vec![
                UserEvent::PasswordChanged {
                    password_hash: sealed("h2"),
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
                password_hash: sealed("h2"),
                at: at(),
            })
            .then_expect_events(vec![
                UserEvent::PasswordChanged {
                    password_hash: sealed("h2"),
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
    fn an_empty_profile_update_emits_nothing() {
        Given::with(())
            .given(vec![registered()])
            .when(UserCommand::UpdateProfile {
                changes: Box::default(),
                at: at(),
            })
            .then_expect_events(vec![]);
    }

    fn meta(key: &str, access: u8, value: Option<&str>) -> MetaChange {
        MetaChange {
            key: key.into(),
            access,
            value: value.map(sealed),
        }
    }

    fn metas_after(
        given: Vec<UserEvent>,
        action: MetaAction,
        changes: Vec<MetaChange>,
    ) -> Result<Vec<UserEvent>, UserError> {
        Given::with(())
            .given(given)
            .when(UserCommand::ChangeMetas {
                action,
                changes,
                at: at(),
            })
            .inspect_result()
    }

    #[test]
    fn metas_merge_replace_and_clear() {
        let first = vec![Meta {
            key: "a".into(),
            access: 0,
            value: sealed("1"),
        }];
        let given = vec![
            registered(),
            UserEvent::MetasReplaced {
                metas: first.clone(),
                at: at(),
            },
        ];
        let merged = metas_after(
            given.clone(),
            MetaAction::Merge,
            vec![meta("b", 1, Some("2"))],
        )
        .unwrap();
        let UserEvent::MetasReplaced { metas, .. } = &merged[0] else {
            panic!()
        };
        assert_eq!(
            metas.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let replaced = metas_after(
            given.clone(),
            MetaAction::Replace,
            vec![meta("b", 1, Some("2"))],
        )
        .unwrap();
        let UserEvent::MetasReplaced { metas, .. } = &replaced[0] else {
            panic!()
        };
        assert_eq!(
            metas.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        let removed =
            metas_after(given.clone(), MetaAction::Merge, vec![meta("a", 0, None)]).unwrap();
        assert_eq!(
            removed,
            vec![UserEvent::MetasReplaced {
                metas: vec![],
                at: at()
            }]
        );
        let cleared = metas_after(given, MetaAction::Clear, vec![]).unwrap();
        assert_eq!(
            cleared,
            vec![UserEvent::MetasReplaced {
                metas: vec![],
                at: at()
            }]
        );
    }

    #[test]
    fn metas_are_limited() {
        let too_many = (0..21)
            .map(|i| meta(&format!("k{i}"), 0, Some("v")))
            .collect();
        assert_eq!(
            metas_after(vec![registered()], MetaAction::Merge, too_many),
            Err(UserError::TooManyMetas)
        );
        assert_eq!(
            metas_after(
                vec![registered()],
                MetaAction::Merge,
                vec![meta("secret", 4, Some("v"))]
            ),
            Err(UserError::MetaAccessTooHigh("secret".into()))
        );
        assert_eq!(
            metas_after(
                vec![registered()],
                MetaAction::Merge,
                vec![meta(&"k".repeat(65), 0, Some("v"))]
            ),
            Err(UserError::BadMetaKey)
        );
        // Admins may use level 4.
        assert!(metas_after(
            vec![registered_as(UserType::Admin)],
            MetaAction::Merge,
            vec![meta("s", 4, Some("v"))]
        )
        .is_ok());
    }

    #[test]
    fn only_volunteers_get_verification_steps_and_basic_is_derived() {
        Given::with(())
            .given(vec![registered()])
            .when(UserCommand::SetVerification {
                step: VerificationStep::Admin,
                status: VerificationStatus::Complete,
                at: at(),
            })
            .then_expect_error(UserError::NotAVolunteer);
        Given::with(())
            .given(vec![registered_as(UserType::Volunteer)])
            .when(UserCommand::SetVerification {
                step: VerificationStep::Basic,
                status: VerificationStatus::Complete,
                at: at(),
            })
            .then_expect_error(UserError::BasicStepIsDerived);
        Given::with(())
            .given(vec![registered_as(UserType::Volunteer)])
            .when(UserCommand::SetVerification {
                step: VerificationStep::Background,
                status: VerificationStatus::Failed,
                at: at(),
            })
            .then_expect_events(vec![UserEvent::VerificationChanged {
                step: VerificationStep::Background,
                status: VerificationStatus::Failed,
                at: at(),
            }]);
    }

    #[test]
    fn deletion_ends_every_session_and_the_account() {
        Given::with(())
            .given(vec![registered(), opened("s1", "j1")])
            .when(UserCommand::Delete { at: at() })
            .then_expect_events(vec![
                UserEvent::SessionEnded {
                    session_id: "s1".into(),
                    reason: SessionEndReason::AccountDeleted,
                    at: at(),
                },
                UserEvent::UserDeleted { at: at() },
            ]);
        Given::with(())
            .given(vec![registered(), UserEvent::UserDeleted { at: at() }])
            .when(UserCommand::OpenSession {
                session_id: "s2".into(),
                refresh_jti: "j".into(),
                at: at(),
            })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn email_is_verified_once() {
        Given::with(())
            .given(vec![registered(), UserEvent::EmailVerified { at: at() }])
            .when(UserCommand::VerifyEmail { at: at() })
            .then_expect_events(vec![]);
    }
}
