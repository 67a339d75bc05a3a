//! Talkamie: the backend that connects seniors with verified companions for calls and chat,
//! paid in coins. An event-sourced CQRS service: aggregates decide (crate `talkamie-aggregates`),
//! the projector builds read models and the push feed (crate `talkamie-projections`), and this
//! crate serves them over REST and one WebSocket.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod bench;
pub mod calls;
pub mod clock;
pub mod config;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod notifications;
pub mod providers;
pub mod ratelimit;
pub mod scheduling;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ws;
