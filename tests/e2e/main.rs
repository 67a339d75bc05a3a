//! End-to-end tests: a real server process, real HTTP and WebSocket, real SQLite and
//! PostgreSQL (the PostgreSQL variants run when `TEST_DATABASE_URL` is set).

mod helpers;

mod admin;
mod auth;
mod authz;
mod bench;
mod browser;
mod calls;
mod chats;
mod crash;
mod db_faults;
mod discovery;
mod errors;
mod failover;
mod files;
mod hostile;
mod instances;
mod ledger;
mod limits;
mod metrics;
mod profiles;
mod push;
mod races;
mod reviews;
mod s3;
mod schedules;
mod store;
mod stripe;
mod support;
mod ws;
mod ws_fuzz;
