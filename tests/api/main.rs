//! One integration-test binary: the real server on port 0, a fresh database per test, real HTTP.
//!
//! `SWAPCAST_TEST_DATABASE=postgres` runs every test against PostgreSQL (a fresh database per test
//! on `SWAPCAST_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`); the default is SQLite.

mod helpers;

mod abuse;
mod announcements;
mod auth;
mod authorization;
mod big_network;
mod bookings;
mod cli;
mod cluster;
mod dashboard;
mod errors;
mod events;
mod idempotency;
mod import;
mod lists;
mod live_identity;
mod logs;
mod metrics;
mod network;
mod notifications;
mod presence;
mod protocol_docs;
mod resume;
mod telemetry;
mod transitions;
mod ws_auth;
mod ws_events;
mod ws_hygiene;
mod ws_multiplexed;
mod wsclient;
