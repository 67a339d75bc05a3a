//! The SupportDesk aggregate (one per user, id = the user's id): the user's support tickets and
//! their messages. One stream per user is what makes "at most one open ticket per user" a rule
//! the aggregate can keep: opening while a ticket is open changes nothing.
//!
//! A ticket is a conversation between its user and the staff (any admin). Each side marks the
//! other side's messages delivered and read with a watermark (the highest sequence number),
//! like chats.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::domain_event;
use crate::pair::{Receipt, MAX_TEXT_CHARS};

/// Who wrote a message, or who marks messages: the ticket's user or the staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    User,
    Staff,
}

impl Side {
    /// The side whose messages a reader on this side marks.
    pub fn other(self) -> Side {
        match self {
            Side::User => Side::Staff,
            Side::Staff => Side::User,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::User => "user",
            Side::Staff => "staff",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupportCommand {
    /// Opens a ticket for the desk's user, unless one is open already (then nothing happens).
    Open {
        ticket_id: String,
        user_id: String,
        at: DateTime<Utc>,
    },
    /// `sender` (the user, or an admin when `side` is `Staff`: the handler checked) writes.
    Post {
        ticket_id: String,
        message_id: String,
        sender: String,
        side: Side,
        text: String,
        client_id: Option<String>,
        at: DateTime<Utc>,
    },
    /// `side` received (or read) every message of the other side up to `upto`.
    Mark {
        ticket_id: String,
        side: Side,
        receipt: Receipt,
        upto: u64,
        at: DateTime<Utc>,
    },
    Close {
        ticket_id: String,
        by: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SupportEvent {
    TicketOpened {
        ticket_id: String,
        user_id: String,
        at: DateTime<Utc>,
    },
    SupportMessagePosted {
        ticket_id: String,
        message_id: String,
        sender: String,
        side: Side,
        text: String,
        client_id: Option<String>,
        seq: u64,
        at: DateTime<Utc>,
    },
    SupportMessagesDelivered {
        ticket_id: String,
        side: Side,
        upto: u64,
        at: DateTime<Utc>,
    },
    SupportMessagesRead {
        ticket_id: String,
        side: Side,
        upto: u64,
        at: DateTime<Utc>,
    },
    TicketClosed {
        ticket_id: String,
        by: String,
        at: DateTime<Utc>,
    },
}
domain_event!(SupportEvent, "1");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupportError {
    #[error("no such ticket")]
    NotFound,
    #[error("the ticket is closed; open a new one")]
    Closed,
    #[error("message text must be 1 to {MAX_TEXT_CHARS} characters")]
    BadText,
}

/// Client ids a ticket remembers for retries.
const MAX_CLIENT_IDS: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Ticket {
    open: bool,
    last_seq: u64,
    /// `(sender, clientId)` of messages sent with a client id (retries store nothing new).
    client_ids: Vec<(String, String)>,
    /// Per reading side: the highest sequence delivered to it and read by it.
    delivered: BTreeMap<Side, u64>,
    read: BTreeMap<Side, u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SupportDesk {
    tickets: BTreeMap<String, Ticket>,
}

impl SupportDesk {
    fn open_ticket(&self) -> Option<&str> {
        self.tickets
            .iter()
            .find(|(_, t)| t.open)
            .map(|(id, _)| id.as_str())
    }

    fn ticket(&self, id: &str) -> Result<&Ticket, SupportError> {
        self.tickets.get(id).ok_or(SupportError::NotFound)
    }
}

impl Aggregate for SupportDesk {
    const TYPE: &'static str = "SupportDesk";
    type Command = SupportCommand;
    type Event = SupportEvent;
    type Error = SupportError;
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
            SupportEvent::TicketOpened { ticket_id, .. } => {
                let ticket = Ticket {
                    open: true,
                    ..Ticket::default()
                };
                self.tickets.insert(ticket_id, ticket);
            }
            SupportEvent::SupportMessagePosted {
                ticket_id,
                sender,
                client_id,
                seq,
                ..
            } => {
                if let Some(ticket) = self.tickets.get_mut(&ticket_id) {
                    ticket.last_seq = seq;
                    if let Some(client_id) = client_id {
                        ticket.client_ids.push((sender, client_id));
                        // Retries come within moments: the last few hundred ids are plenty,
                        // and snapshots stay small.
                        if ticket.client_ids.len() > MAX_CLIENT_IDS {
                            ticket.client_ids.remove(0);
                        }
                    }
                }
            }
            SupportEvent::SupportMessagesDelivered {
                ticket_id,
                side,
                upto,
                ..
            } => {
                if let Some(ticket) = self.tickets.get_mut(&ticket_id) {
                    ticket.delivered.insert(side, upto);
                }
            }
            SupportEvent::SupportMessagesRead {
                ticket_id,
                side,
                upto,
                ..
            } => {
                if let Some(ticket) = self.tickets.get_mut(&ticket_id) {
                    ticket.read.insert(side, upto);
                }
            }
            SupportEvent::TicketClosed { ticket_id, .. } => {
                if let Some(ticket) = self.tickets.get_mut(&ticket_id) {
                    ticket.open = false;
                }
            }
        }
    }
}

fn decide(desk: &SupportDesk, command: SupportCommand) -> Result<Vec<SupportEvent>, SupportError> {
    use SupportCommand as C;
    use SupportEvent as E;
    Ok(match command {
        C::Open {
            ticket_id,
            user_id,
            at,
        } => {
            if desk.open_ticket().is_some() {
                return Ok(vec![]);
            }
            vec![E::TicketOpened {
                ticket_id,
                user_id,
                at,
            }]
        }
        C::Post {
            ticket_id,
            message_id,
            sender,
            side,
            text,
            client_id,
            at,
        } => {
            let ticket = desk.ticket(&ticket_id)?;
            if let Some(client_id) = &client_id {
                let retry = ticket
                    .client_ids
                    .iter()
                    .any(|(s, c)| *s == sender && c == client_id);
                if retry {
                    return Ok(vec![]);
                }
            }
            if !ticket.open {
                return Err(SupportError::Closed);
            }
            if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
                return Err(SupportError::BadText);
            }
            vec![E::SupportMessagePosted {
                ticket_id,
                message_id,
                sender,
                side,
                text,
                client_id,
                seq: ticket.last_seq + 1,
                at,
            }]
        }
        C::Mark {
            ticket_id,
            side,
            receipt,
            upto,
            at,
        } => {
            let ticket = desk.ticket(&ticket_id)?;
            let upto = upto.min(ticket.last_seq);
            let read = ticket.read.get(&side).copied().unwrap_or(0);
            let delivered = ticket.delivered.get(&side).copied().unwrap_or(0).max(read);
            match receipt {
                Receipt::Read if upto > read => vec![E::SupportMessagesRead {
                    ticket_id,
                    side,
                    upto,
                    at,
                }],
                Receipt::Delivered if upto > delivered => vec![E::SupportMessagesDelivered {
                    ticket_id,
                    side,
                    upto,
                    at,
                }],
                _ => vec![],
            }
        }
        C::Close { ticket_id, by, at } => {
            if !desk.ticket(&ticket_id)?.open {
                return Ok(vec![]);
            }
            vec![E::TicketClosed { ticket_id, by, at }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<SupportDesk>;

    fn t() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn opened(id: &str) -> SupportEvent {
        SupportEvent::TicketOpened {
            ticket_id: id.into(),
            user_id: "u".into(),
            at: t(),
        }
    }

    fn post(side: Side, text: &str, client_id: Option<&str>) -> SupportCommand {
        SupportCommand::Post {
            ticket_id: "t1".into(),
            message_id: "m".into(),
            sender: if side == Side::User { "u" } else { "admin" }.into(),
            side,
            text: text.into(),
            client_id: client_id.map(String::from),
            at: t(),
        }
    }

    fn posted(seq: u64, side: Side, client_id: Option<&str>) -> SupportEvent {
        SupportEvent::SupportMessagePosted {
            ticket_id: "t1".into(),
            message_id: "m".into(),
            sender: if side == Side::User { "u" } else { "admin" }.into(),
            side,
            text: "Help".into(),
            client_id: client_id.map(String::from),
            seq,
            at: t(),
        }
    }

    fn closed(id: &str) -> SupportEvent {
        SupportEvent::TicketClosed {
            ticket_id: id.into(),
            by: "u".into(),
            at: t(),
        }
    }

    fn open(id: &str) -> SupportCommand {
        SupportCommand::Open {
            ticket_id: id.into(),
            user_id: "u".into(),
            at: t(),
        }
    }

    #[test]
    fn at_most_one_open_ticket_per_user() {
        Given::with(())
            .given_no_previous_events()
            .when(open("t1"))
            .then_expect_events(vec![opened("t1")]);
        Given::with(())
            .given(vec![opened("t1")])
            .when(open("t2"))
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![opened("t1"), closed("t1")])
            .when(open("t2"))
            .then_expect_events(vec![opened("t2")]);
    }

    #[test]
    fn messages_go_to_open_tickets_numbered_in_order() {
        Given::with(())
            .given(vec![opened("t1"), posted(1, Side::User, None)])
            .when(post(Side::Staff, "Help", None))
            .then_expect_events(vec![posted(2, Side::Staff, None)]);
        Given::with(())
            .given(vec![opened("t1"), closed("t1")])
            .when(post(Side::User, "Help", None))
            .then_expect_error(SupportError::Closed);
        Given::with(())
            .given_no_previous_events()
            .when(post(Side::User, "Help", None))
            .then_expect_error(SupportError::NotFound);
        for text in ["", "   ", &"x".repeat(MAX_TEXT_CHARS + 1)] {
            Given::with(())
                .given(vec![opened("t1")])
                .when(post(Side::User, text, None))
                .then_expect_error(SupportError::BadText);
        }
    }

    #[test]
    fn a_retry_with_the_same_client_id_stores_nothing_new() {
        Given::with(())
            .given(vec![opened("t1"), posted(1, Side::User, Some("c1"))])
            .when(post(Side::User, "Help", Some("c1")))
            .then_expect_events(vec![]);
    }

    #[test]
    fn receipts_only_move_forward_and_stop_at_the_last_message() {
        let mark = |receipt, upto| SupportCommand::Mark {
            ticket_id: "t1".into(),
            side: Side::Staff,
            receipt,
            upto,
            at: t(),
        };
        let history = vec![
            opened("t1"),
            posted(1, Side::User, None),
            posted(2, Side::User, None),
        ];
        Given::with(())
            .given(history.clone())
            .when(mark(Receipt::Read, 9))
            .then_expect_events(vec![SupportEvent::SupportMessagesRead {
                ticket_id: "t1".into(),
                side: Side::Staff,
                upto: 2,
                at: t(),
            }]);
        let mut read = history;
        read.push(SupportEvent::SupportMessagesRead {
            ticket_id: "t1".into(),
            side: Side::Staff,
            upto: 2,
            at: t(),
        });
        Given::with(())
            .given(read)
            .when(mark(Receipt::Delivered, 2))
            .then_expect_events(vec![]);
    }

    #[test]
    fn closing_twice_changes_nothing() {
        Given::with(())
            .given(vec![opened("t1"), closed("t1")])
            .when(SupportCommand::Close {
                ticket_id: "t1".into(),
                by: "u".into(),
                at: t(),
            })
            .then_expect_events(vec![]);
    }
}
