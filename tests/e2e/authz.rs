//! Issue 9 item 6: the authorization matrix. Every REST route and every WebSocket action is
//! called as four roles: anonymous, another user, the owner of the resource and an admin, and
//! each cell is checked against the table: the status, and for errors the envelope
//! and its machine code. Nobody reads or changes anyone else's chats, schedules, calls,
//! transactions, files or tickets: their ids are secrets, and no answer (or push) the other
//! user gets may contain one; texts written "by other" must never land in the owner's data.
//!
//! The other user is a senior connected to the owner's volunteer (a neighbour with a chat of
//! their own), so every "is this yours" check is tried by someone who has the same kind of
//! thing. Roles run in the order of the columns (anonymous, other, owner, admin), so the other
//! user always tries before the owner acts, and the admin acts on what the owner left.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::Duration;

use chrono::{Duration as Span, SecondsFormat, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::files::{put_bytes, signed};
use crate::helpers::{unique_email, Backend, Incoming, Server, TestDb, Ws};
use crate::ledger::{checkout, fund, open_top_up};
use crate::schedules::verified_volunteer;

both_stores!(everyone_reaches_only_what_is_theirs);

/// Whose resource a row is about: its owner column is played by this user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// The senior who owns the chat, schedule, call, top-up, file and ticket.
    Senior,
    /// The verified volunteer on the other side of the senior's chat, schedule and call.
    Volunteer,
    /// Unverified volunteers the senior sent requests to (accept, background check).
    V2,
    /// Rejects the senior's connect request.
    V4,
    /// Accepts the senior's message request.
    V3,
    /// Rejects the senior's message request.
    V5,
    /// Deletes their own account.
    Doomed1,
    /// Deleted by the admin.
    Doomed2,
}

const S: Who = Who::Senior;
const V: Who = Who::Volunteer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Anonymous,
    Other,
    Owner,
    Admin,
}

const ROLES: [Role; 4] = [Role::Anonymous, Role::Other, Role::Owner, Role::Admin];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Anonymous => "anonymous",
            Role::Other => "other",
            Role::Owner => "owner",
            Role::Admin => "admin",
        }
    }
}

/// An expected cell: the status and, for errors, the envelope's machine `error` code
/// (`None`: any code, or a body that is not JSON). Status 0 means "not run" (see the row).
#[derive(Debug, Clone, Copy)]
struct Expect(u16, Option<&'static str>);

const OK: Expect = Expect(200, None);
const NEW: Expect = Expect(201, None);
const E400: Expect = Expect(400, Some("invalid_input"));
const E401: Expect = Expect(401, Some("unauthenticated"));
const E403: Expect = Expect(403, Some("forbidden"));
const E404: Expect = Expect(404, Some("not_found"));
/// The file routes are capability URLs: the signature decides, never the bearer token.
const SIG: Expect = Expect(403, Some("invalid_signature"));
/// The payment webhook takes a provider's signature, never a bearer token.
const UNSIGN: Expect = Expect(400, None);
/// The sandbox checkout answers HTML; a closed session is 409 for whoever presses.
const CLOSED: Expect = Expect(409, None);
const BADOTP: Expect = Expect(422, Some("invalid_code"));
const NOCOIN: Expect = Expect(409, Some("insufficient_coins"));
const NOCALL: Expect = Expect(422, Some("no_ended_call"));
const NOPAIR: Expect = Expect(422, Some("not_senior_and_volunteer"));
/// Background checks are for volunteers.
const NOTVOL: Expect = Expect(422, Some("not_applicable"));
const SKIP: Expect = Expect(0, None);

/// A check of a cell's answer beyond its status (run on successes only).
type Check = fn(&World, Role, &Value) -> Result<(), String>;

/// One REST route. `path` and `body` hold `{placeholders}` of the world (and `{role}`).
struct Rest {
    method: &'static str,
    path: &'static str,
    owner: Who,
    /// anonymous, other, owner, admin
    cells: [Expect; 4],
    body: Option<&'static str>,
    check: Option<Check>,
}

const fn rest(method: &'static str, path: &'static str, owner: Who, cells: [Expect; 4]) -> Rest {
    Rest {
        method,
        path,
        owner,
        cells,
        body: None,
        check: None,
    }
}

impl Rest {
    const fn with(self, body: &'static str) -> Rest {
        Rest {
            body: Some(body),
            ..self
        }
    }

    const fn checked(self, check: Check) -> Rest {
        Rest {
            check: Some(check),
            ..self
        }
    }
}

const D1: Who = Who::Doomed1;
const D2: Who = Who::Doomed2;
const V2: Who = Who::V2;
const V3: Who = Who::V3;
const V4: Who = Who::V4;
const V5: Who = Who::V5;

const NOBODY: &str = r#"{"email":"nobody-authz@example.com","password":"long-password-1"}"#;
const REFRESH: &str = r#"{"refresh":"not-a-token"}"#;
const RESET: &str =
    r#"{"email":"nobody-authz@example.com","code":"000000","newPassword":"long-password-9"}"#;
const OTP: &str = r#"{"email":"nobody-authz@example.com","purpose":"verify-email"}"#;
const OTP_CODE: &str =
    r#"{"email":"nobody-authz@example.com","code":"000000","purpose":"verify-email"}"#;
const BIO: &str = r#"{"bio":"bio by {role}"}"#;
const WEEK: &str = r#"{"sun":[{"start":"00:00","end":"24:00"}],"mon":[{"start":"00:00","end":"24:00"}],
 "tue":[{"start":"00:00","end":"24:00"}],"wed":[{"start":"00:00","end":"24:00"}],
 "thu":[{"start":"00:00","end":"24:00"}],"fri":[{"start":"00:00","end":"24:00"}],
 "sat":[{"start":"00:00","end":"24:00"}]}"#;
const CUSTOM: &str = r#"{"{customDate}":[{"start":"00:00","end":"24:00"}]}"#;
const BOOKING: &str = r#"{"title":"title by {role}","type":"audio","recurrence":"none",
 "startDateTime":"{slotStart}","endDateTime":"{slotEnd}"}"#;
const RETITLE: &str = r#"{"title":"title by {role}"}"#;
const TOP_UP: &str = r#"{"coins":100}"#;
const WITHDRAW: &str = r#"{"coins":100,"paypal":{"email":"payout-{role}@example.com"}}"#;
const SIGN_URLS: &str = r#"{"fileDirPath":"users/{senior}","type":"user",
 "items":{"by-{role}.png":{"mimeType":"image/png","objectType":"picture"}}}"#;
const REVIEW: &str = r#"{"text":"review by {role}","rate":5}"#;
const RERATE: &str = r#"{"rate":4}"#;
const DEVICE: &str = r#"{"token":"device-of-{role}","platform":"ios"}"#;
const OWNER_DEVICE: &str = r#"{"token":"device-of-owner"}"#;
const BACKGROUND: &str = r#"{"firstName":"Vera","lastName":"Clear","zipCode":"94110",
 "workLocations":[{"countryCode":"US","stateCode":"CA","city":"San Francisco"}]}"#;
const APPROVE: &str = r#"{"step":"admin","status":"complete"}"#;
const FAQ: &str = r#"{"type":"general","question":"Who may read my chats?","answer":"Only you."}"#;
const INTEREST: &str = r#"{"name":"Authz checks","emoji":"🔒"}"#;
const CLOCK: &str = r#"{"advanceSeconds":1}"#;
const HELLO: &str = r#"{"text":"hello from {role}"}"#;
const PASSWORD: &str = r#"{"oldPassword":"long-password-1","newPassword":"long-password-2"}"#;

/// Every REST route of `src/http`, one row each: method, path, whose resource it is, and the
/// expected answer per role; `.with` gives the body. The order matters: later rows see what
/// earlier ones did.
#[rustfmt::skip]
const REST: &[Rest] = &[
    //   method    path                                                owner   anonymous  other   owner   admin
    // Public routes: the same answer whoever asks (sign-in, refresh, reset and OTP with nobody's
    // email or a made-up token).
    rest("GET",    "/healthz",                                         S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/readyz",                                          S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/openapi.json",                                    S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/docs",                                            S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/constants/coins",                              S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/interests",                                    S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/specializations",                              S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/faqs",                                         S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/faqs/general",                                 S,     [OK,        OK,     OK,     OK]),
    rest("POST",   "/v1/auth/sign-up",                                 S,     [E400,      E400,   E400,   E400]).with("{}"),
    rest("POST",   "/v1/auth/sign-in",                                 S,     [E401,      E401,   E401,   E401]).with(NOBODY),
    rest("POST",   "/v1/auth/refresh",                                 S,     [E401,      E401,   E401,   E401]).with(REFRESH),
    rest("POST",   "/v1/auth/reset-password",                          S,     [BADOTP,    BADOTP, BADOTP, BADOTP]).with(RESET),
    rest("POST",   "/v1/otp",                                          S,     [OK,        OK,     OK,     OK]).with(OTP),
    rest("POST",   "/v1/otp/verify",                                   S,     [BADOTP,    BADOTP, BADOTP, BADOTP]).with(OTP_CODE),
    rest("GET",    "/v1/auth",                                         S,     [E401,      OK,     OK,     OK]),
    // Profiles: anyone signed in reads a public profile (never its email); the volunteer's shows
    // booked times, never whose schedules they are; a profile for connected users only does not
    // exist for anyone else (admins see everyone). Only the owner changes a profile.
    rest("GET",    "/v1/users",                                        S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/user/{senior}",                                S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/user/{volunteer}",                             V,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/user/{doomed1}",                               D1,    [E401,      E404,   OK,     OK]),
    rest("GET",    "/v1/availability/weekly?userId={doomed1}",         D1,    [E401,      E404,   OK,     OK]),
    rest("GET",    "/v1/user/{doomed1}/reviews",                       D1,    [E401,      E404,   OK,     OK]),
    rest("PUT",    "/v1/user/{senior}",                                S,     [E401,      E403,   OK,     E403]).with(BIO),
    // Chats: lists are the caller's own; one chat and its messages are for members only.
    rest("GET",    "/v1/chats",                                        S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/chats/unread",                                 S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/chats/pending",                                S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/chats/frequent",                               S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/chat/{chat}",                                  S,     [E401,      E404,   OK,     E404]),
    rest("GET",    "/v1/chat/{chat}/messages",                         S,     [E401,      E404,   OK,     E404]),
    // Availability: read by whoever may see the volunteer; written by volunteers, their own.
    rest("GET",    "/v1/availability/weekly?userId={volunteer}",       V,     [E401,      OK,     OK,     OK]),
    rest("POST",   "/v1/availability/weekly",                          V,     [E401,      E403,   OK,     E403]).with(WEEK),
    rest("GET",    "/v1/availability/custom?userId={volunteer}",       V,     [E401,      OK,     OK,     OK]),
    rest("POST",   "/v1/availability/custom",                          V,     [E401,      E403,   OK,     E403]).with(CUSTOM),
    // Schedules: the other user may book the same volunteer (but has no coins); one schedule is
    // for its two members only; clearing "my schedules with {id}" clears the caller's only.
    rest("POST",   "/v1/user/{volunteer}/schedule",                    S,     [E401,      NOCOIN, NEW,    E403]).with(BOOKING),
    rest("GET",    "/v1/schedule/{schedule}",                          S,     [E401,      E404,   OK,     E404]),
    rest("PUT",    "/v1/schedule/{schedule}",                          S,     [E401,      E404,   OK,     E404]).with(RETITLE),
    rest("GET",    "/v1/schedules",                                    S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/schedules/upcoming",                           S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/schedules/past",                               S,     [E401,      OK,     OK,     OK]),
    rest("DELETE", "/v1/schedule/{schedule}",                          S,     [E401,      E404,   OK,     E404]),
    rest("DELETE", "/v1/user/{volunteer}/schedules",                   S,     [E401,      OK,     OK,     OK]).checked(cleared),
    // Calls (the call is the one the WebSocket matrix started, answered and ended).
    rest("GET",    "/v1/call/{call}",                                  S,     [E401,      E404,   OK,     E404]),
    rest("GET",    "/v1/calls/histories",                              S,     [E401,      OK,     OK,     OK]),
    // Money: every wallet is its owner's; admins have none; only volunteers withdraw.
    rest("POST",   "/v1/web/finance/top-up/session",                   S,     [E401,      NEW,    NEW,    E403]).with(TOP_UP),
    rest("GET",    "/v1/finance/transactions",                         S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/finance/purchases",                            V,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/finance/earnings",                             V,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/finance/withdrawals",                          V,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/finance/transaction/{tx}",                     S,     [E401,      E404,   OK,     E404]),
    rest("POST",   "/v1/finance/withdraw",                             V,     [E401,      E403,   NEW,    E403]).with(WITHDRAW),
    // The payment provider's side: the webhook takes signatures, not tokens; the sandbox checkout
    // page is public and its session id the capability (a paid session is closed for everyone).
    rest("POST",   "/v1/webhooks/payments",                            S,     [UNSIGN,    UNSIGN, UNSIGN, UNSIGN]).with("{}"),
    rest("GET",    "/v1/sandbox/checkout/{session}",                   S,     [OK,        OK,     OK,     OK]),
    rest("POST",   "/v1/sandbox/checkout/{session}/pay",               S,     [CLOSED,    CLOSED, CLOSED, CLOSED]),
    rest("POST",   "/v1/sandbox/checkout/{session}/cancel",            S,     [CLOSED,    CLOSED, CLOSED, CLOSED]),
    // Files: upload URLs and listings for your own directory only. The file routes are capability
    // URLs: the signature decides, never the bearer token, and another user's signature for the
    // same key name does not open the owner's file.
    rest("POST",   "/v1/signed/urls",                                  S,     [E401,      E403,   OK,     E403]).with(SIGN_URLS),
    rest("GET",    "/v1/signed/urls/files?fileDirPath=users/{senior}", S,     [E401,      E403,   OK,     E403]),
    rest("GET",    "/v1/signed/urls/files",                            S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "{fileUrl}",                                        S,     [OK,        OK,     OK,     OK]),
    rest("GET",    "/v1/files/{senior}/{file}",                        S,     [E400,      E400,   E400,   E400]),
    rest("GET",    "/v1/files/{senior}/{file}?{otherReadQuery}",       S,     [SIG,       SIG,    SIG,    SIG]),
    rest("PUT",    "/v1/files/{senior}/{file}?{otherUploadQuery}",     S,     [SIG,       SIG,    SIG,    SIG]),
    // Reviews: only after an ended call between the two; each rater owns their review.
    rest("POST",   "/v1/user/{volunteer}/review",                      S,     [E401,      NOCALL, NEW,    NOCALL]).with(REVIEW),
    rest("PUT",    "/v1/user/{volunteer}/review",                      S,     [E401,      E404,   OK,     E404]).with(RERATE),
    rest("GET",    "/v1/user/{volunteer}/reviews",                     S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/reviews",                                      V,     [E401,      OK,     OK,     OK]),
    rest("DELETE", "/v1/user/{volunteer}/review",                      S,     [E401,      E404,   OK,     E404]),
    rest("GET",    "/v1/alerts",                                       V,     [E401,      OK,     OK,     OK]),
    // Support: my open ticket is mine (the other user gets their own); staff read them all.
    rest("GET",    "/v1/support/open/ticket",                          S,     [E401,      OK,     OK,     E403]).checked(own_ticket),
    rest("GET",    "/v1/support/ticket/{ticket}/messages",             S,     [E401,      E404,   OK,     OK]),
    rest("GET",    "/v1/admin/support/tickets",                        S,     [E401,      E403,   E403,   OK]),
    rest("POST",   "/v1/support/ticket/{ticket}/close",                S,     [E401,      E404,   OK,     OK]),
    // Push devices: each caller registers and removes their own.
    rest("POST",   "/v1/push-notification",                            S,     [E401,      OK,     OK,     OK]).with(DEVICE),
    rest("DELETE", "/v1/push-notification",                            S,     [E401,      OK,     OK,     OK]).with(OWNER_DEVICE),
    // Verification and the admin area.
    rest("POST",   "/v1/verification/background",                      V2,    [E401,      NOTVOL, OK,     NOTVOL]).with(BACKGROUND),
    rest("POST",   "/v1/admin/user/{v2}/verification",                 V2,    [E401,      E403,   E403,   OK]).with(APPROVE),
    rest("GET",    "/v1/admin/users",                                  S,     [E401,      E403,   E403,   OK]),
    rest("GET",    "/v1/admin/ledger/audit",                           S,     [E401,      E403,   E403,   OK]),
    rest("POST",   "/v1/admin/faqs",                                   S,     [E401,      E403,   E403,   NEW]).with(FAQ),
    rest("POST",   "/v1/admin/interests",                              S,     [E401,      E403,   E403,   NEW]).with(INTEREST),
    rest("POST",   "/v1/admin/clock",                                  S,     [E401,      E403,   E403,   OK]).with(CLOCK),
    // Connections and message requests act on the pair (caller, {id}): the other user reaches
    // only their own pair, with nothing in it to answer; sending their own request is theirs to
    // do. Admins are in no pair.
    rest("DELETE", "/v1/user/{v2}/connection",                         S,     [E401,      E404,   OK,     E404]),
    rest("POST",   "/v1/user/{v2}/connection",                         S,     [E401,      NEW,    NEW,    NOPAIR]),
    rest("POST",   "/v1/user/{senior}/connection/accept",              V2,    [E401,      E404,   OK,     E404]),
    rest("DELETE", "/v1/user/{senior}/connection/reject",              V4,    [E401,      E404,   OK,     E404]),
    rest("DELETE", "/v1/user/{v2}/connection/disconnect",              S,     [E401,      E404,   OK,     E404]),
    rest("GET",    "/v1/connections/pending",                          S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/connections/pending?direction=sent",           S,     [E401,      OK,     OK,     OK]),
    rest("GET",    "/v1/connections/users",                            S,     [E401,      OK,     OK,     OK]),
    rest("DELETE", "/v1/user/{v3}/message/request",                    S,     [E401,      E404,   OK,     E404]),
    rest("POST",   "/v1/user/{v3}/message/request",                    S,     [E401,      NEW,    NEW,    NOPAIR]).with(HELLO),
    rest("POST",   "/v1/user/{senior}/message/request/accept",         V3,    [E401,      E404,   OK,     E404]),
    rest("DELETE", "/v1/user/{senior}/message/request/reject",         V5,    [E401,      E404,   OK,     E404]),
    // Accounts last. The owner deletes their account (the admin then finds nobody); the admin
    // deletes another (its owner column is the row above); signing out ends the roles' sessions.
    rest("PUT",    "/v1/user/{senior}/password",                       S,     [E401,      E403,   OK,     E403]).with(PASSWORD),
    rest("DELETE", "/v1/user/{doomed1}",                               D1,    [E401,      E403,   OK,     E404]),
    rest("DELETE", "/v1/user/{doomed2}",                               D2,    [E401,      E403,   SKIP,   OK]),
    rest("DELETE", "/v1/auth/sign-out",                                S,     [E401,      OK,     OK,     OK]),
];

/// One WebSocket action: its name, the frame's other fields (`{placeholders}` as in [`Rest`]),
/// whose resource it is and the cells.
struct Action {
    action: &'static str,
    owner: Who,
    /// anonymous, other, owner, admin
    cells: [Expect; 4],
    /// The frame's fields besides `action` and `requestId`, as JSON object members.
    fields: &'static str,
    /// Saves `(placeholder, JSON pointer)` of the owner's reply for the rows after it.
    capture: Option<(&'static str, &'static str)>,
    check: Option<Check>,
}

const fn action(action: &'static str, owner: Who, cells: [Expect; 4]) -> Action {
    Action {
        action,
        owner,
        cells,
        fields: "",
        capture: None,
        check: None,
    }
}

impl Action {
    const fn with(self, fields: &'static str) -> Action {
        Action { fields, ..self }
    }

    const fn capture(self, name: &'static str, pointer: &'static str) -> Action {
        Action {
            capture: Some((name, pointer)),
            ..self
        }
    }

    const fn checked(self, check: Check) -> Action {
        Action {
            check: Some(check),
            ..self
        }
    }

    /// The frame as a JSON template.
    fn frame(&self) -> String {
        let separator = if self.fields.is_empty() { "" } else { "," };
        format!(
            r#"{{"action":"{}"{separator}{}}}"#,
            self.action, self.fields
        )
    }
}

const SAY_IN_CHAT: &str = r#""chatId":"{chat}","message":{"text":"hello from {role}"}"#;
const READ_IN_CHAT: &str =
    r#""chatId":"{chat}","messagesMap":{"{volunteerMessage}":{"status":"read"}}"#;
const SIGNAL: &str = r#""callId":"{call}","signal":{"type":"offer","sdp":"v=0 by {role}"}"#;
const SAY_IN_TICKET: &str = r#""ticketId":"{ticket}","message":{"text":"hello from {role}"}"#;
const READ_IN_TICKET: &str =
    r#""ticketId":"{ticket}","messagesMap":{"{staffMessage}":{"status":"read"}}"#;
const READ_ALERT: &str = r#""alertsMap":{"{alert}":{"status":"read"}}"#;

/// Every WebSocket action of `src/ws/session.rs` (`authenticate` is how the roles sign in).
#[rustfmt::skip]
const WS: &[Action] = &[
    //     action                     owner   anonymous  other  owner  admin
    action("ping",                    S,     [OK,        OK,    OK,    OK]),
    action("user.me",                 S,     [E401,      OK,    OK,    OK]),
    action("user.get",                S,     [E401,      OK,    OK,    OK]).with(r#""userId":"{senior}""#),
    action("user.get",                V,     [E401,      OK,    OK,    OK]).with(r#""userId":"{volunteer}""#),
    action("user.get",                D1,    [E401,      E404,  OK,    OK]).with(r#""userId":"{doomed1}""#),
    action("user.update",             S,     [E401,      OK,    OK,    OK]).with(r#""name":"Name by {role}""#).checked(self_only),
    // Chats: members only.
    action("chat.message.send",       S,     [E401,      E404,  OK,    E404]).with(SAY_IN_CHAT),
    action("chat.messages.get",       S,     [E401,      E404,  OK,    E404]).with(r#""chatId":"{chat}""#),
    action("chat.messages.update",    S,     [E401,      E404,  OK,    E404]).with(READ_IN_CHAT),
    // Calls: only a senior rings (the admin is refused before membership is looked at); the
    // owner's call is kept for the rows after it.
    action("call.start",              S,     [E401,      E404,  OK,    E403]).with(r#""chatId":"{chat}","type":"audio""#).capture("call", "/data/call/id"),
    action("call.signal",             S,     [E401,      E404,  OK,    E404]).with(SIGNAL),
    action("call.reject",             V,     [E401,      E404,  OK,    E404]).with(r#""callId":"{call}""#),
    action("call.start",              S,     [E401,      E404,  OK,    E403]).with(r#""chatId":"{chat}","type":"video""#).capture("call", "/data/call/id"),
    action("call.accept",             V,     [E401,      E404,  OK,    E404]).with(r#""callId":"{call}""#),
    action("call.end",                S,     [E401,      E404,  OK,    E404]).with(r#""callId":"{call}""#),
    // Support: the ticket's user and staff; nobody else.
    action("support.message.send",    S,     [E401,      E404,  OK,    OK]).with(SAY_IN_TICKET),
    action("support.messages.get",    S,     [E401,      E404,  OK,    OK]).with(r#""ticketId":"{ticket}""#),
    action("support.messages.update", S,     [E401,      E404,  OK,    OK]).with(READ_IN_TICKET),
    // Alerts: marking someone else's alert changes (and reveals) nothing.
    action("alerts.update",           V,     [E401,      OK,    OK,    OK]).with(READ_ALERT).checked(only_own_alert),
];

/// `DELETE /v1/user/{id}/schedules` clears the caller's schedules only.
fn cleared(_: &World, role: Role, body: &Value) -> Result<(), String> {
    let want = if role == Role::Owner { 1 } else { 0 };
    if body["data"]["cleared"] == json!(want) {
        Ok(())
    } else {
        Err(format!("cleared should be {want}"))
    }
}

/// `GET /v1/support/open/ticket` is the caller's own ticket.
fn own_ticket(world: &World, role: Role, body: &Value) -> Result<(), String> {
    let is_owners = body["data"]["id"] == json!(world.vars["ticket"]);
    match role {
        Role::Owner if !is_owners => Err("the owner's ticket changed".into()),
        Role::Other if is_owners || body["data"]["user"]["id"] != json!(world.vars["other"]) => {
            Err("the other user got a ticket that is not theirs".into())
        }
        _ => Ok(()),
    }
}

/// `user.update` changes the caller only.
fn self_only(world: &World, role: Role, body: &Value) -> Result<(), String> {
    let id = match role {
        Role::Other => world.vars["other"].as_str(),
        Role::Owner => world.vars["senior"].as_str(),
        _ => return Ok(()),
    };
    if body["data"]["id"] == json!(id) {
        Ok(())
    } else {
        Err("updated someone else".into())
    }
}

/// `alerts.update` answers the caller's own alerts only.
fn only_own_alert(world: &World, role: Role, body: &Value) -> Result<(), String> {
    let marked = &body["data"]["alertsMap"][world.vars["alert"].as_str()];
    match role {
        Role::Owner if marked["status"] != json!("read") => {
            Err("the owner's alert is not read".into())
        }
        Role::Other | Role::Admin if !marked.is_null() => {
            Err("someone else's alert was answered".into())
        }
        _ => Ok(()),
    }
}

/// Everything the matrix needs: users, tokens, and the values of the placeholders.
struct World {
    vars: HashMap<&'static str, String>,
    tokens: HashMap<Who, String>,
    other: String,
    admin: String,
    /// `(what, value)`: the owner's private things the other user must never see.
    secrets: Vec<(&'static str, String)>,
}

impl World {
    fn fill(&self, template: &str, role: Role) -> String {
        let mut out = template.replace("{role}", role.name());
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        let unfilled = out.split('{').skip(1).find_map(|rest| {
            let name = rest.split('}').next().unwrap_or("");
            let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric());
            (is_name && rest.contains('}')).then_some(name)
        });
        assert!(unfilled.is_none(), "{unfilled:?} is not filled in {out}");
        out
    }

    fn token(&self, role: Role, owner: Who) -> Option<&str> {
        match role {
            Role::Anonymous => None,
            Role::Other => Some(&self.other),
            Role::Owner => Some(&self.tokens[&owner]),
            Role::Admin => Some(&self.admin),
        }
    }

    fn secret_index(&self, what: &str) -> usize {
        let index = self.secrets.iter().position(|(w, _)| *w == what);
        index.unwrap_or_else(|| panic!("no secret {what}"))
    }

    /// The secrets found in `text` (an answer or push to the other user).
    fn leaks(&self, text: &str) -> Vec<&'static str> {
        self.secrets
            .iter()
            .filter(|(_, value)| text.contains(value.as_str()))
            .map(|(what, _)| *what)
            .collect()
    }
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 9]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn iso(days: i64, hour: u32) -> String {
    let date = Utc::now().date_naive() + Span::days(days);
    Utc.from_utc_datetime(&date.and_hms_opt(hour, 0, 0).expect("time"))
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The part of an absolute URL from its path on.
fn path_of(url: &str) -> String {
    let start = url.find("/v1/").expect("a /v1/ URL");
    url[start..].to_string()
}

fn query_of(url: &str) -> String {
    url.split_once('?').expect("a query").1.to_string()
}

async fn ok_call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Value {
    let (status, body) = server.call(method, path, Some(token), body).await;
    assert!(status.is_success(), "{method} {path}: {status} {body}");
    body
}

async fn sign_up(server: &Server, kind: &str) -> (String, String, String) {
    let email = unique_email(kind);
    let (id, token, _) = server.sign_up(&email, "long-password-1", kind).await;
    (id, token, email)
}

/// A message sent on `ws` as a request (pushes skipped): its reply.
async fn ask(ws: &mut Ws, frame: Value, pushes: &mut Vec<String>) -> Value {
    let request_id = frame["requestId"].clone();
    ws.send(frame).await;
    loop {
        match ws.next_within(Duration::from_secs(20)).await {
            Some(Incoming::Json(v)) if v.get("position").is_some() => pushes.push(v.to_string()),
            Some(Incoming::Json(v)) if v["requestId"] == request_id => return v,
            Some(Incoming::Json(v)) => panic!("an unexpected reply {v}"),
            other => panic!("no reply to {request_id}: {other:?}"),
        }
    }
}

async fn build_world(server: &Server, db: &TestDb) -> World {
    let (_, admin) = server.admin(db).await;
    let volunteer = verified_volunteer(server, db, &admin).await;
    let volunteer_email = ok_call(server, "GET", "/v1/auth", &volunteer.1, None).await["data"]
        ["user"]["email"]
        .as_str()
        .expect("email")
        .to_string();
    let (senior, senior_token, senior_email) = sign_up(server, "senior").await;
    let (other, other_token, _) = sign_up(server, "senior").await;
    let mut vars: HashMap<&'static str, String> = HashMap::new();
    let mut tokens = HashMap::new();
    for (who, name, kind) in [
        (Who::V2, "v2", "volunteer"),
        (Who::V3, "v3", "volunteer"),
        (Who::V4, "v4", "volunteer"),
        (Who::V5, "v5", "volunteer"),
        (Who::Doomed1, "doomed1", "senior"),
        (Who::Doomed2, "doomed2", "senior"),
    ] {
        let (id, token, _) = sign_up(server, kind).await;
        vars.insert(name, id);
        tokens.insert(who, token);
    }
    // Doomed1 shows their profile to connected users only.
    let visibility = json!({"visibility": "matches"});
    let path = format!("/v1/user/{}", vars["doomed1"]);
    ok_call(
        server,
        "PUT",
        &path,
        &tokens[&Who::Doomed1],
        Some(visibility),
    )
    .await;
    tokens.insert(S, senior_token.clone());
    tokens.insert(V, volunteer.1.clone());
    vars.insert("senior", senior.clone());
    vars.insert("volunteer", volunteer.0.clone());
    vars.insert("other", other.clone());

    // The senior's chat with the volunteer, coins, and a schedule in it.
    let chat = server
        .connect(&(senior.clone(), senior_token.clone()), &volunteer)
        .await;
    // The other user is a senior connected to the same volunteer: the closest neighbour the
    // owner has, with a chat of their own (but no coins).
    server
        .connect(&(other.clone(), other_token.clone()), &volunteer)
        .await;
    let (tx, session, _) = open_top_up(server, &senior_token, 3000).await;
    let (status, html) = checkout(server, &session, "pay").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let volunteer_tx = fund(server, &volunteer.1, 200).await;
    ok_call(
        server,
        "POST",
        "/v1/availability/weekly",
        &volunteer.1,
        Some(serde_json::from_str(WEEK).expect("week")),
    )
    .await;
    let booked = ok_call(
        server,
        "POST",
        &format!("/v1/user/{}/schedule", volunteer.0),
        &senior_token,
        Some(json!({"title": "title by owner", "type": "audio", "recurrence": "none",
                    "startDateTime": iso(2, 10), "endDateTime": iso(2, 10).replace(":00:00Z", ":15:00Z")})),
    )
    .await;
    let schedule = booked["data"]["schedule"]["id"]
        .as_str()
        .expect("schedule")
        .to_string();

    // A ticket, and a file of the senior's; the other user reserves the same key for
    // themselves (so they hold valid signatures for that key name, but under their own id).
    let ticket = ok_call(
        server,
        "GET",
        "/v1/support/open/ticket",
        &senior_token,
        None,
    )
    .await["data"]["id"]
        .as_str()
        .expect("ticket")
        .to_string();
    let file = format!("private-{}.png", uuid::Uuid::new_v4().simple());
    let items = json!({&file: {"mimeType": "image/png", "objectType": "picture"}});
    let (status, body) = signed(server, &senior_token, items.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let upload = body["data"]["items"][&file]["uploadUrl"]
        .as_str()
        .expect("upload url");
    let file_url = body["data"]["items"][&file]["fileUrl"]
        .as_str()
        .expect("file url");
    let (status, body) = put_bytes(server, upload, "image/png", png()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    vars.insert("fileUrl", path_of(file_url));
    let (status, body) = signed(server, &other_token, items).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let item = &body["data"]["items"][&file];
    vars.insert(
        "otherReadQuery",
        query_of(item["fileUrl"].as_str().expect("url")),
    );
    vars.insert(
        "otherUploadQuery",
        query_of(item["uploadUrl"].as_str().expect("url")),
    );

    // Requests waiting for an answer: connect requests to v2 and v4, message requests to v3
    // and v5.
    for name in ["v2", "v4"] {
        ok_call(
            server,
            "POST",
            &format!("/v1/user/{}/connection", vars[name]),
            &senior_token,
            None,
        )
        .await;
    }
    for name in ["v3", "v5"] {
        ok_call(
            server,
            "POST",
            &format!("/v1/user/{}/message/request", vars[name]),
            &senior_token,
            Some(json!({"text": "hello from owner"})),
        )
        .await;
    }

    // A message from the volunteer in the chat, and one from staff on the ticket.
    let mut pushes = Vec::new();
    let (mut ws, _) = server.ws_authenticated(&volunteer.1, None).await;
    let reply = ask(
        &mut ws,
        json!({"action": "chat.message.send", "requestId": "setup", "chatId": chat,
               "message": {"text": "hello from the volunteer"}}),
        &mut pushes,
    )
    .await;
    let volunteer_message = reply["data"]["message"]["id"]
        .as_str()
        .expect("message")
        .to_string();
    let (mut ws, _) = server.ws_authenticated(&admin, None).await;
    let reply = ask(
        &mut ws,
        json!({"action": "support.message.send", "requestId": "setup", "ticketId": ticket,
               "message": {"text": "hello from staff"}}),
        &mut pushes,
    )
    .await;
    let staff_message = reply["data"]["message"]["id"]
        .as_str()
        .expect("message")
        .to_string();
    let alerts = ok_call(server, "GET", "/v1/alerts", &volunteer.1, None).await;
    let alert = alerts["data"][0]["id"]
        .as_str()
        .expect("an alert")
        .to_string();

    vars.insert("chat", chat.clone());
    vars.insert("schedule", schedule.clone());
    vars.insert("tx", tx.clone());
    vars.insert("session", session);
    vars.insert("ticket", ticket.clone());
    vars.insert("file", file.clone());
    vars.insert("volunteerMessage", volunteer_message.clone());
    vars.insert("staffMessage", staff_message.clone());
    vars.insert("alert", alert.clone());
    vars.insert("slotStart", iso(3, 12));
    vars.insert("slotEnd", iso(3, 12).replace(":00:00Z", ":15:00Z"));
    vars.insert(
        "customDate",
        (Utc::now().date_naive() + Span::days(10)).to_string(),
    );
    let matches_only = vars["doomed1"].clone();
    World {
        vars,
        tokens,
        other: other_token,
        admin,
        secrets: vec![
            ("the senior's chat", chat),
            ("the senior's schedule", schedule),
            ("the senior's top-up", tx),
            ("the volunteer's top-up", volunteer_tx),
            ("the senior's ticket", ticket),
            ("the senior's file", file),
            ("the senior's email", senior_email),
            ("the volunteer's email", volunteer_email),
            ("the volunteer's message", volunteer_message),
            ("the staff's message", staff_message),
            ("the volunteer's alert", alert),
            ("a profile for connected users only", matches_only),
        ],
    }
}

/// One REST request: `(status, JSON body if any, raw text)`.
async fn send(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<Value>, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).ok(), text)
}

/// What is wrong with an answer for `want` (`None`: it is right).
fn judge(want: Expect, status: u16, body: Option<&Value>) -> Option<String> {
    if status != want.0 {
        return Some(format!("status {status}, want {}", want.0));
    }
    let envelope = body.filter(|b| b.get("success").is_some());
    match envelope {
        Some(b) if status >= 400 => {
            if b["success"] != json!(false) || b["statusCode"] != json!(status) {
                return Some("not an error envelope".into());
            }
            if let Some(code) = want.1 {
                if b["error"] != json!(code) {
                    return Some(format!("error {}, want {code}", b["error"]));
                }
            }
            None
        }
        Some(b) if b["success"] != json!(true) => Some("success is not true".into()),
        None if status >= 400 && want.1.is_some() => Some("no error envelope".into()),
        _ => None,
    }
}

/// The results so far: wrong cells, and what the other user and the owners were shown.
#[derive(Default)]
struct Results {
    failures: Vec<String>,
    cells: usize,
    seen_by_other: Vec<(String, String)>,
    seen_by_owner: Vec<String>,
}

impl Results {
    /// Judges one cell: its status and envelope, then the row's check on a success.
    fn record(
        &mut self,
        world: &World,
        (name, role, want): (&str, Role, Expect),
        (status, json, text): (u16, Option<&Value>, &str),
        check: Option<Check>,
    ) {
        self.cells += 1;
        match role {
            Role::Other => self
                .seen_by_other
                .push((name.to_string(), text.to_string())),
            Role::Owner => self.seen_by_owner.push(text.to_string()),
            _ => {}
        }
        let short: String = text.chars().take(400).collect();
        if let Some(problem) = judge(want, status, json) {
            self.failures.push(format!("{name}: {problem}: {short}"));
            return;
        }
        if let (Some(check), Some(json), true) = (check, json, status < 300) {
            if let Err(problem) = check(world, role, json) {
                self.failures.push(format!("{name}: {problem}: {short}"));
            }
        }
    }
}

/// The WebSocket matrix: one socket per signed-in role, a fresh one per anonymous cell. The
/// other user's socket (`other_ws`) stays open after it, to hear the REST matrix too.
async fn run_ws(server: &Server, world: &mut World, other_ws: &mut Ws, results: &mut Results) {
    let mut admin_ws = server.ws_authenticated(&world.admin, None).await.0;
    let mut owner_ws = HashMap::new();
    for who in [S, V, Who::Doomed1] {
        let (ws, _) = server.ws_authenticated(&world.tokens[&who], None).await;
        owner_ws.insert(who, ws);
    }
    let mut other_pushes = Vec::new();
    let mut ignored = Vec::new();
    for (n, row) in WS.iter().enumerate() {
        for (role, want) in ROLES.into_iter().zip(row.cells) {
            let mut frame: Value = serde_json::from_str(&world.fill(&row.frame(), role))
                .unwrap_or_else(|e| panic!("row {n}: bad frame template: {e}"));
            frame["requestId"] = json!(format!("ws-{n}-{}", role.name()));
            let name = format!("ws {} as {}", frame["action"], role.name());
            let reply = match role {
                Role::Anonymous => ask(&mut server.ws().await, frame, &mut ignored).await,
                Role::Other => ask(other_ws, frame, &mut other_pushes).await,
                Role::Owner => {
                    let ws = owner_ws.get_mut(&row.owner).expect("owner socket");
                    ask(ws, frame, &mut ignored).await
                }
                Role::Admin => ask(&mut admin_ws, frame, &mut ignored).await,
            };
            let status = reply["statusCode"].as_u64().unwrap_or(0) as u16;
            let text = reply.to_string();
            results.record(
                world,
                (&name, role, want),
                (status, Some(&reply), &text),
                row.check,
            );
            if let (Role::Owner, Some((var, pointer))) = (role, row.capture) {
                let value = reply.pointer(pointer).and_then(Value::as_str);
                let value = value.unwrap_or_else(|| panic!("{name}: no {pointer} in {reply}"));
                world.vars.insert(var, value.to_string());
                world.secrets.push(("the senior's call", value.to_string()));
            }
        }
    }
    let pushes = other_pushes.into_iter().map(|p| ("a push".to_string(), p));
    results.seen_by_other.extend(pushes);
}

/// Every push the other user's socket got until it closed (signing out closes it).
async fn drain(other_ws: &mut Ws, results: &mut Results) {
    while let Some(Incoming::Json(v)) = other_ws.next_within(Duration::from_secs(2)).await {
        results
            .seen_by_other
            .push(("a push".to_string(), v.to_string()));
    }
}

/// The REST matrix.
async fn run_rest(server: &Server, world: &World, results: &mut Results) {
    for (n, row) in REST.iter().enumerate() {
        for (role, want) in ROLES.into_iter().zip(row.cells) {
            if want.0 == SKIP.0 {
                continue;
            }
            let path = world.fill(row.path, role);
            let body = row.body.map(|b| {
                serde_json::from_str::<Value>(&world.fill(b, role))
                    .unwrap_or_else(|e| panic!("row {n}: bad body template: {e}"))
            });
            let name = format!("{} {} as {}", row.method, row.path, role.name());
            let token = world.token(role, row.owner);
            let (status, json, text) = send(server, row.method, &path, token, body).await;
            results.record(
                world,
                (&name, role, want),
                (status, json.as_ref(), &text),
                row.check,
            );
        }
    }
}

/// After the matrix: nothing the other user or the admin wrote landed in the owner's things,
/// and the sessions that ended (signed out, deleted accounts) stay ended.
async fn check_owner_data(server: &Server, world: &World) {
    let email = &world.secrets[world.secret_index("the senior's email")].1;
    let (status, body) = server.sign_in(email, "long-password-2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let senior = crate::helpers::account(&body).1;
    let get = |path: &str| {
        let path = world.fill(path, Role::Owner);
        let senior = senior.clone();
        async move { ok_call(server, "GET", &path, &senior, None).await }
    };
    let me = get("/v1/auth").await;
    assert_eq!(me["data"]["user"]["bio"], json!("bio by owner"), "{me}");
    assert_eq!(me["data"]["user"]["name"], json!("Name by owner"), "{me}");
    let schedule = get("/v1/schedule/{schedule}").await;
    assert_eq!(
        schedule["data"]["title"],
        json!("title by owner"),
        "{schedule}"
    );
    let messages = get("/v1/chat/{chat}/messages?pageSize=100")
        .await
        .to_string();
    assert!(!messages.contains("from other"), "{messages}");
    assert!(!messages.contains("from admin"), "{messages}");
    let support = get("/v1/support/ticket/{ticket}/messages?pageSize=100").await;
    assert!(!support.to_string().contains("from other"), "{support}");
    let ended = [
        ("the other user (signed out)", &world.other),
        ("the admin (signed out)", &world.admin),
        ("the senior (signed out)", &world.tokens[&S]),
        ("a deleted user", &world.tokens[&Who::Doomed1]),
        ("a user an admin deleted", &world.tokens[&Who::Doomed2]),
    ];
    for (who, token) in ended {
        let (status, body) = server.get("/v1/auth", Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{who}: {body}");
    }
}

async fn everyone_reaches_only_what_is_theirs(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = Server::start_with(&db, &[("TALKAMIE_ADJUSTABLE_CLOCK", "true")]).await;
    let mut world = build_world(&server, &db).await;
    let mut results = Results::default();
    // The WebSocket matrix first: the REST rows read the call it leaves behind.
    let mut other_ws = server.ws_authenticated(&world.other, None).await.0;
    run_ws(&server, &mut world, &mut other_ws, &mut results).await;
    run_rest(&server, &world, &mut results).await;
    drain(&mut other_ws, &mut results).await;

    // Whatever reached the other user, answers and pushes alike, holds none of the owner's
    // secrets; and each secret did reach its owner, so the check is not blind.
    for (name, text) in &results.seen_by_other {
        let leaks = world.leaks(text);
        if !leaks.is_empty() {
            let text: String = text.chars().take(400).collect();
            results
                .failures
                .push(format!("{name} showed the other user {leaks:?}: {text}"));
        }
    }
    for (what, value) in &world.secrets {
        if !results
            .seen_by_owner
            .iter()
            .any(|t| t.contains(value.as_str()))
        {
            results
                .failures
                .push(format!("no owner's answer showed {what}"));
        }
    }
    assert!(
        results.failures.is_empty(),
        "{} of {} cells are wrong:\n{}",
        results.failures.len(),
        results.cells,
        results.failures.join("\n")
    );
    check_owner_data(&server, &world).await;
    eprintln!(
        "authorization matrix: {} REST rows and {} WebSocket rows x 4 roles: {} cells",
        REST.len(),
        WS.len(),
        results.cells
    );
}
