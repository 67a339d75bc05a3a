//! The Pair aggregate: everything between one senior and one volunteer. Its id is derived from
//! the ordered pair of user ids and doubles as the id of the pair's single chat.
//!
//! One stream per pair makes "one live request per pair" race-free (two opposite requests
//! fired at once conflict on the same stream; the retry sees the other and answers 409), and
//! keeps the chat's rules ("no messages before the request is accepted", "no messages after a
//! disconnect", idempotent sends) in the same consistency boundary. The state holds only what
//! the rules need: request states, read positions and a window of recent client ids, never
//! message text.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;
use crate::user::UserType;

/// Message text limit, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Client ids remembered per chat for idempotent retries (a retry comes within seconds).
pub const REMEMBERED_CLIENT_IDS: usize = 500;

/// One side of a request: who and of which type (types never change, so the caller's read of
/// them is as good as the aggregate's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub id: String,
    pub user_type: UserType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    Connect,
    Message,
}

impl ChatType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Connect => "connect",
            ChatType::Message => "message",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Receipt {
    Delivered,
    Read,
}

/// What a non-text message is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attachment {
    Schedule(String),
    Call(String),
}

impl Attachment {
    /// The message `type` and the id it links.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Attachment::Schedule(id) => ("schedule", id),
            Attachment::Call(id) => ("call", id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PairCommand {
    SendConnectionRequest {
        request_id: String,
        from: Party,
        to: Party,
        at: DateTime<Utc>,
    },
    CancelConnectionRequest {
        by: String,
        at: DateTime<Utc>,
    },
    AcceptConnectionRequest {
        by: String,
        at: DateTime<Utc>,
    },
    RejectConnectionRequest {
        by: String,
        at: DateTime<Utc>,
    },
    Disconnect {
        by: String,
        at: DateTime<Utc>,
    },
    SendMessageRequest {
        request_id: String,
        message_id: String,
        from: Party,
        to: Party,
        text: String,
        at: DateTime<Utc>,
    },
    CancelMessageRequest {
        by: String,
        at: DateTime<Utc>,
    },
    AcceptMessageRequest {
        by: String,
        at: DateTime<Utc>,
    },
    RejectMessageRequest {
        by: String,
        at: DateTime<Utc>,
    },
    SendMessage {
        message_id: String,
        sender: String,
        text: String,
        client_id: Option<String>,
        /// A schedule or call the message is about (`type: schedule|call`).
        attachment: Option<Attachment>,
        at: DateTime<Utc>,
    },
    /// `member` has received (or read) every message of the other member up to `upto`.
    MarkMessages {
        member: String,
        receipt: Receipt,
        upto: u64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PairEvent {
    ConnectionRequested {
        request_id: String,
        from: String,
        to: String,
        at: DateTime<Utc>,
    },
    ConnectionRequestCanceled {
        request_id: String,
        at: DateTime<Utc>,
    },
    ConnectionRequestRejected {
        request_id: String,
        at: DateTime<Utc>,
    },
    ConnectionAccepted {
        request_id: String,
        at: DateTime<Utc>,
    },
    /// The chat accepts messages (first opening or reopening), as `chat_type`.
    ChatOpened {
        chat_type: ChatType,
        members: Vec<String>,
        at: DateTime<Utc>,
    },
    Disconnected {
        by: String,
        at: DateTime<Utc>,
    },
    MessageRequested {
        request_id: String,
        message_id: String,
        from: String,
        to: String,
        text: String,
        seq: u64,
        at: DateTime<Utc>,
    },
    MessageRequestCanceled {
        request_id: String,
        at: DateTime<Utc>,
    },
    MessageRequestRejected {
        request_id: String,
        at: DateTime<Utc>,
    },
    MessageRequestAccepted {
        request_id: String,
        at: DateTime<Utc>,
    },
    MessageSent {
        message_id: String,
        sender: String,
        text: String,
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<Attachment>,
        seq: u64,
        at: DateTime<Utc>,
    },
    MessagesDelivered {
        member: String,
        upto: u64,
        at: DateTime<Utc>,
    },
    MessagesRead {
        member: String,
        upto: u64,
        at: DateTime<Utc>,
    },
}
domain_event!(PairEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("you cannot send a request to yourself")]
    SelfRequest,
    #[error("requests go between a senior and a volunteer")]
    NotSeniorAndVolunteer,
    #[error("you are already connected")]
    AlreadyConnected,
    #[error("you can already message each other; send a message in the chat")]
    AlreadyChatting,
    #[error("you already have a pending request to this user")]
    RequestPending,
    #[error("this user already sent you a request; accept it instead")]
    TheyAskedFirst,
    #[error("no such pending request")]
    NoPendingRequest,
    #[error("you are not connected")]
    NotConnected,
    #[error("chat not found")]
    NotMember,
    #[error("the chat does not accept messages until the request is accepted")]
    ChatNotOpen,
    #[error("message text must be 1 to {MAX_TEXT_CHARS} characters")]
    BadText,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Pending,
    Accepted,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Request {
    id: String,
    from: String,
    to: String,
    status: Status,
}

impl Request {
    fn pending(&self) -> bool {
        self.status == Status::Pending
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecentSend {
    sender: String,
    client_id: String,
    message_id: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Pair {
    members: Vec<String>,
    connect_request: Option<Request>,
    message_request: Option<Request>,
    connected: bool,
    /// Messages may be sent (connected, or a message request was accepted).
    open: bool,
    last_seq: u64,
    delivered: BTreeMap<String, u64>,
    read: BTreeMap<String, u64>,
    recent: VecDeque<RecentSend>,
}

impl Pair {
    /// The message a retry with this client id must return, if the first send is remembered.
    pub fn sent_with_client_id(&self, sender: &str, client_id: &str) -> Option<&str> {
        self.recent
            .iter()
            .find(|r| r.sender == sender && r.client_id == client_id)
            .map(|r| r.message_id.as_str())
    }

    fn is_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m == id)
    }

    fn live_requests(&self) -> impl Iterator<Item = &Request> {
        self.connect_request
            .iter()
            .chain(self.message_request.iter())
            .filter(|r| r.pending())
    }

    /// Rules shared by both kinds of request.
    fn check_new_request(&self, from: &Party, to: &Party) -> Result<(), PairError> {
        if from.id == to.id {
            return Err(PairError::SelfRequest);
        }
        let types = [from.user_type, to.user_type];
        if !(types.contains(&UserType::Senior) && types.contains(&UserType::Volunteer)) {
            return Err(PairError::NotSeniorAndVolunteer);
        }
        if self.connected {
            return Err(PairError::AlreadyConnected);
        }
        if let Some(live) = self.live_requests().next() {
            return Err(if live.from == from.id {
                PairError::RequestPending
            } else {
                PairError::TheyAskedFirst
            });
        }
        Ok(())
    }

    fn pending_from(request: &Option<Request>, from: &str) -> Result<String, PairError> {
        match request {
            Some(r) if r.pending() && r.from == from => Ok(r.id.clone()),
            _ => Err(PairError::NoPendingRequest),
        }
    }

    fn pending_to(request: &Option<Request>, to: &str) -> Result<String, PairError> {
        match request {
            Some(r) if r.pending() && r.to == to => Ok(r.id.clone()),
            _ => Err(PairError::NoPendingRequest),
        }
    }
}

fn check_text(text: &str) -> Result<(), PairError> {
    let chars = text.chars().count();
    if text.trim().is_empty() || chars > MAX_TEXT_CHARS {
        Err(PairError::BadText)
    } else {
        Ok(())
    }
}

impl Aggregate for Pair {
    const TYPE: &'static str = "Pair";
    type Command = PairCommand;
    type Event = PairEvent;
    type Error = PairError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = decide(self, command)?;
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PairEvent::ConnectionRequested {
                request_id,
                from,
                to,
                ..
            } => {
                self.remember_members(&from, &to);
                self.connect_request = Some(Request {
                    id: request_id,
                    from,
                    to,
                    status: Status::Pending,
                });
            }
            PairEvent::ConnectionRequestCanceled { .. }
            | PairEvent::ConnectionRequestRejected { .. } => {
                if let Some(r) = &mut self.connect_request {
                    r.status = Status::Closed;
                }
            }
            PairEvent::ConnectionAccepted { .. } => {
                if let Some(r) = &mut self.connect_request {
                    r.status = Status::Accepted;
                }
                self.connected = true;
            }
            PairEvent::ChatOpened { .. } => self.open = true,
            PairEvent::Disconnected { .. } => {
                self.connected = false;
                self.open = false;
            }
            PairEvent::MessageRequested {
                request_id,
                from,
                to,
                seq,
                ..
            } => {
                self.remember_members(&from, &to);
                self.message_request = Some(Request {
                    id: request_id,
                    from,
                    to,
                    status: Status::Pending,
                });
                self.last_seq = seq;
            }
            PairEvent::MessageRequestCanceled { .. } | PairEvent::MessageRequestRejected { .. } => {
                if let Some(r) = &mut self.message_request {
                    r.status = Status::Closed;
                }
            }
            PairEvent::MessageRequestAccepted { .. } => {
                if let Some(r) = &mut self.message_request {
                    r.status = Status::Accepted;
                }
            }
            PairEvent::MessageSent {
                message_id,
                sender,
                client_id,
                seq,
                ..
            } => {
                self.last_seq = seq;
                if let Some(client_id) = client_id {
                    if self.recent.len() >= REMEMBERED_CLIENT_IDS {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(RecentSend {
                        sender,
                        client_id,
                        message_id,
                    });
                }
            }
            PairEvent::MessagesDelivered { member, upto, .. } => {
                self.delivered.insert(member, upto);
            }
            PairEvent::MessagesRead { member, upto, .. } => {
                let delivered = self.delivered.entry(member.clone()).or_default();
                *delivered = (*delivered).max(upto);
                self.read.insert(member, upto);
            }
        }
    }
}

impl Pair {
    fn remember_members(&mut self, a: &str, b: &str) {
        if self.members.is_empty() {
            let mut members = vec![a.to_string(), b.to_string()];
            members.sort();
            self.members = members;
        }
    }
}

/// The decision of one command: the events it causes, or the rule it breaks.
fn decide(pair: &Pair, command: PairCommand) -> Result<Vec<PairEvent>, PairError> {
    use PairCommand as C;
    use PairEvent as E;
    Ok(match command {
        C::SendConnectionRequest {
            request_id,
            from,
            to,
            at,
        } => {
            pair.check_new_request(&from, &to)?;
            vec![E::ConnectionRequested {
                request_id,
                from: from.id,
                to: to.id,
                at,
            }]
        }
        C::CancelConnectionRequest { by, at } => {
            let request_id = Pair::pending_from(&pair.connect_request, &by)?;
            vec![E::ConnectionRequestCanceled { request_id, at }]
        }
        C::RejectConnectionRequest { by, at } => {
            let request_id = Pair::pending_to(&pair.connect_request, &by)?;
            vec![E::ConnectionRequestRejected { request_id, at }]
        }
        C::AcceptConnectionRequest { by, at } => {
            let request_id = Pair::pending_to(&pair.connect_request, &by)?;
            vec![
                E::ConnectionAccepted { request_id, at },
                E::ChatOpened {
                    chat_type: ChatType::Connect,
                    members: pair.members.clone(),
                    at,
                },
            ]
        }
        C::Disconnect { by, at } => {
            if !pair.is_member(&by) || !pair.open {
                return Err(PairError::NotConnected);
            }
            vec![E::Disconnected { by, at }]
        }
        C::SendMessageRequest {
            request_id,
            message_id,
            from,
            to,
            text,
            at,
        } => {
            if pair.open {
                return Err(PairError::AlreadyChatting);
            }
            pair.check_new_request(&from, &to)?;
            check_text(&text)?;
            vec![E::MessageRequested {
                request_id,
                message_id,
                from: from.id,
                to: to.id,
                text,
                seq: pair.last_seq + 1,
                at,
            }]
        }
        C::CancelMessageRequest { by, at } => {
            let request_id = Pair::pending_from(&pair.message_request, &by)?;
            vec![E::MessageRequestCanceled { request_id, at }]
        }
        C::RejectMessageRequest { by, at } => {
            let request_id = Pair::pending_to(&pair.message_request, &by)?;
            vec![E::MessageRequestRejected { request_id, at }]
        }
        C::AcceptMessageRequest { by, at } => {
            let request_id = Pair::pending_to(&pair.message_request, &by)?;
            vec![
                E::MessageRequestAccepted { request_id, at },
                E::ChatOpened {
                    chat_type: ChatType::Message,
                    members: pair.members.clone(),
                    at,
                },
            ]
        }
        C::SendMessage {
            message_id,
            sender,
            text,
            client_id,
            attachment,
            at,
        } => {
            if !pair.is_member(&sender) {
                return Err(PairError::NotMember);
            }
            if let Some(client_id) = &client_id {
                if pair.sent_with_client_id(&sender, client_id).is_some() {
                    return Ok(vec![]);
                }
            }
            if !pair.open {
                return Err(PairError::ChatNotOpen);
            }
            check_text(&text)?;
            vec![E::MessageSent {
                message_id,
                sender,
                text,
                client_id,
                attachment,
                seq: pair.last_seq + 1,
                at,
            }]
        }
        C::MarkMessages {
            member,
            receipt,
            upto,
            at,
        } => {
            if !pair.is_member(&member) {
                return Err(PairError::NotMember);
            }
            let upto = upto.min(pair.last_seq);
            let read = pair.read.get(&member).copied().unwrap_or(0);
            let delivered = pair.delivered.get(&member).copied().unwrap_or(0).max(read);
            match receipt {
                Receipt::Read if upto > read => vec![E::MessagesRead { member, upto, at }],
                Receipt::Delivered if upto > delivered => {
                    vec![E::MessagesDelivered { member, upto, at }]
                }
                _ => vec![],
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Pair>;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T13:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn senior() -> Party {
        Party {
            id: "s".into(),
            user_type: UserType::Senior,
        }
    }

    fn volunteer() -> Party {
        Party {
            id: "v".into(),
            user_type: UserType::Volunteer,
        }
    }

    fn requested(from: &str, to: &str) -> PairEvent {
        PairEvent::ConnectionRequested {
            request_id: "r1".into(),
            from: from.into(),
            to: to.into(),
            at: at(),
        }
    }

    fn connected() -> Vec<PairEvent> {
        vec![
            requested("s", "v"),
            PairEvent::ConnectionAccepted {
                request_id: "r1".into(),
                at: at(),
            },
            PairEvent::ChatOpened {
                chat_type: ChatType::Connect,
                members: vec!["s".into(), "v".into()],
                at: at(),
            },
        ]
    }

    fn connect(from: Party, to: Party) -> PairCommand {
        PairCommand::SendConnectionRequest {
            request_id: "r2".into(),
            from,
            to,
            at: at(),
        }
    }

    fn message_request(from: Party, to: Party) -> PairCommand {
        PairCommand::SendMessageRequest {
            request_id: "m1".into(),
            message_id: "msg1".into(),
            from,
            to,
            text: "Hello!".into(),
            at: at(),
        }
    }

    fn send(sender: &str, text: &str, client_id: Option<&str>) -> PairCommand {
        PairCommand::SendMessage {
            message_id: "msg2".into(),
            sender: sender.into(),
            text: text.into(),
            client_id: client_id.map(String::from),
            attachment: None,
            at: at(),
        }
    }

    fn sent(seq: u64, sender: &str, client_id: Option<&str>) -> PairEvent {
        PairEvent::MessageSent {
            message_id: format!("msg{seq}"),
            sender: sender.into(),
            text: "hi".into(),
            client_id: client_id.map(String::from),
            attachment: None,
            seq,
            at: at(),
        }
    }

    #[test]
    fn a_senior_asks_a_volunteer_to_connect() {
        Given::with(())
            .given_no_previous_events()
            .when(connect(senior(), volunteer()))
            .then_expect_events(vec![PairEvent::ConnectionRequested {
                request_id: "r2".into(),
                from: "s".into(),
                to: "v".into(),
                at: at(),
            }]);
    }

    #[test]
    fn requests_only_go_between_a_senior_and_a_volunteer_and_never_to_yourself() {
        Given::with(())
            .given_no_previous_events()
            .when(connect(senior(), senior()))
            .then_expect_error(PairError::SelfRequest);
        let other_senior = Party {
            id: "s2".into(),
            user_type: UserType::Senior,
        };
        Given::with(())
            .given_no_previous_events()
            .when(connect(senior(), other_senior))
            .then_expect_error(PairError::NotSeniorAndVolunteer);
        let admin = Party {
            id: "a".into(),
            user_type: UserType::Admin,
        };
        Given::with(())
            .given_no_previous_events()
            .when(message_request(admin, volunteer()))
            .then_expect_error(PairError::NotSeniorAndVolunteer);
    }

    #[test]
    fn one_live_request_per_pair() {
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(connect(senior(), volunteer()))
            .then_expect_error(PairError::RequestPending);
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(connect(volunteer(), senior()))
            .then_expect_error(PairError::TheyAskedFirst);
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(message_request(volunteer(), senior()))
            .then_expect_error(PairError::TheyAskedFirst);
        Given::with(())
            .given(connected())
            .when(connect(volunteer(), senior()))
            .then_expect_error(PairError::AlreadyConnected);
    }

    #[test]
    fn a_closed_request_can_be_followed_by_a_new_one() {
        Given::with(())
            .given(vec![
                requested("s", "v"),
                PairEvent::ConnectionRequestRejected {
                    request_id: "r1".into(),
                    at: at(),
                },
            ])
            .when(connect(senior(), volunteer()))
            .then_expect_events(vec![PairEvent::ConnectionRequested {
                request_id: "r2".into(),
                from: "s".into(),
                to: "v".into(),
                at: at(),
            }]);
    }

    #[test]
    fn only_the_recipient_accepts_or_rejects_and_only_the_sender_cancels() {
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(PairCommand::AcceptConnectionRequest {
                by: "s".into(),
                at: at(),
            })
            .then_expect_error(PairError::NoPendingRequest);
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(PairCommand::CancelConnectionRequest {
                by: "v".into(),
                at: at(),
            })
            .then_expect_error(PairError::NoPendingRequest);
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(PairCommand::AcceptConnectionRequest {
                by: "v".into(),
                at: at(),
            })
            .then_expect_events(connected()[1..].to_vec());
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(PairCommand::CancelConnectionRequest {
                by: "s".into(),
                at: at(),
            })
            .then_expect_events(vec![PairEvent::ConnectionRequestCanceled {
                request_id: "r1".into(),
                at: at(),
            }]);
    }

    #[test]
    fn messages_need_an_open_chat() {
        Given::with(())
            .given(vec![requested("s", "v")])
            .when(send("s", "hi", None))
            .then_expect_error(PairError::ChatNotOpen);
        Given::with(())
            .given(connected())
            .when(send("x", "hi", None))
            .then_expect_error(PairError::NotMember);
        Given::with(())
            .given(connected())
            .when(send("v", "hi", Some("c1")))
            .then_expect_events(vec![PairEvent::MessageSent {
                message_id: "msg2".into(),
                sender: "v".into(),
                text: "hi".into(),
                client_id: Some("c1".into()),
                attachment: None,
                seq: 1,
                at: at(),
            }]);
    }

    #[test]
    fn message_text_is_one_to_4000_characters() {
        Given::with(())
            .given(connected())
            .when(send("s", "   ", None))
            .then_expect_error(PairError::BadText);
        Given::with(())
            .given(connected())
            .when(send("s", &"é".repeat(MAX_TEXT_CHARS + 1), None))
            .then_expect_error(PairError::BadText);
        Given::with(())
            .given(connected())
            .when(send("s", &"é".repeat(MAX_TEXT_CHARS), None))
            .then_expect_events(vec![PairEvent::MessageSent {
                message_id: "msg2".into(),
                sender: "s".into(),
                text: "é".repeat(MAX_TEXT_CHARS),
                client_id: None,
                attachment: None,
                seq: 1,
                at: at(),
            }]);
    }

    #[test]
    fn a_retry_with_the_same_client_id_stores_nothing_new() {
        let mut history = connected();
        history.push(sent(1, "s", Some("c1")));
        Given::with(())
            .given(history.clone())
            .when(send("s", "hi", Some("c1")))
            .then_expect_events(vec![]);
        // The same client id from the other member is a different message.
        Given::with(())
            .given(history)
            .when(send("v", "hi", Some("c1")))
            .then_expect_events(vec![PairEvent::MessageSent {
                message_id: "msg2".into(),
                sender: "v".into(),
                text: "hi".into(),
                client_id: Some("c1".into()),
                attachment: None,
                seq: 2,
                at: at(),
            }]);
    }

    #[test]
    fn a_message_request_allows_one_message_until_accepted() {
        let requested_message = PairEvent::MessageRequested {
            request_id: "m1".into(),
            message_id: "msg1".into(),
            from: "s".into(),
            to: "v".into(),
            text: "Hello!".into(),
            seq: 1,
            at: at(),
        };
        Given::with(())
            .given_no_previous_events()
            .when(message_request(senior(), volunteer()))
            .then_expect_events(vec![requested_message.clone()]);
        Given::with(())
            .given(vec![requested_message.clone()])
            .when(send("s", "again", None))
            .then_expect_error(PairError::ChatNotOpen);
        Given::with(())
            .given(vec![requested_message.clone()])
            .when(PairCommand::AcceptMessageRequest {
                by: "v".into(),
                at: at(),
            })
            .then_expect_events(vec![
                PairEvent::MessageRequestAccepted {
                    request_id: "m1".into(),
                    at: at(),
                },
                PairEvent::ChatOpened {
                    chat_type: ChatType::Message,
                    members: vec!["s".into(), "v".into()],
                    at: at(),
                },
            ]);
        Given::with(())
            .given(connected())
            .when(message_request(senior(), volunteer()))
            .then_expect_error(PairError::AlreadyChatting);
    }

    #[test]
    fn disconnecting_closes_the_chat_but_a_new_request_may_follow() {
        let mut history = connected();
        history.push(PairEvent::Disconnected {
            by: "v".into(),
            at: at(),
        });
        Given::with(())
            .given(history.clone())
            .when(send("s", "hi", None))
            .then_expect_error(PairError::ChatNotOpen);
        Given::with(())
            .given(history.clone())
            .when(PairCommand::Disconnect {
                by: "s".into(),
                at: at(),
            })
            .then_expect_error(PairError::NotConnected);
        Given::with(())
            .given(history)
            .when(connect(volunteer(), senior()))
            .then_expect_events(vec![PairEvent::ConnectionRequested {
                request_id: "r2".into(),
                from: "v".into(),
                to: "s".into(),
                at: at(),
            }]);
    }

    #[test]
    fn receipts_only_move_forward_and_read_implies_delivered() {
        let mut history = connected();
        history.extend([sent(1, "s", None), sent(2, "s", None)]);
        let mark = |receipt, upto| PairCommand::MarkMessages {
            member: "v".into(),
            receipt,
            upto,
            at: at(),
        };
        Given::with(())
            .given(history.clone())
            .when(mark(Receipt::Read, 9))
            .then_expect_events(vec![PairEvent::MessagesRead {
                member: "v".into(),
                upto: 2,
                at: at(),
            }]);
        history.push(PairEvent::MessagesRead {
            member: "v".into(),
            upto: 2,
            at: at(),
        });
        Given::with(())
            .given(history.clone())
            .when(mark(Receipt::Delivered, 2))
            .then_expect_events(vec![]);
        Given::with(())
            .given(history)
            .when(mark(Receipt::Read, 1))
            .then_expect_events(vec![]);
    }
}
