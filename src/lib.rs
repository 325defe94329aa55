//! swapcast — a realtime server for a network of battery-swap stations.
//!
//! How a change travels: an HTTP request → [`auth`] (who is calling) → a [`domain`] service (may
//! they? is the input valid?) → one database transaction that writes the rows and their
//! [`events`] → commit → [`state::AppState::change`], the one publish point → [`realtime`] actors →
//! [`ws`] sessions → sockets.
//!
//! - [`config`]   settings from environment and flags; every limit a named, documented default
//! - [`startup`]  builds the pool, keys, HTTP server and sweeper; binds its own listener
//! - [`state`]    what handlers share; the read and change paths to the database
//! - [`error`]    the one error type and its mapping to the contract's error body
//! - [`auth`]     passwords, tokens, sessions, the request extractor, the authorization policy
//! - [`db`]       the SQLite/PostgreSQL connection, pool, migrations, schema and row models
//! - [`domain`]   ids, validated values, one service per aggregate; each returns its events;
//!   `domain::transition`, the one conditional update every state change goes through
//! - [`events`]   the event vocabulary (seed 001's messages) and the event log
//! - [`realtime`] the actors that route committed events to sessions: publisher, a registry per
//!   worker thread, notifiers, presence (who watches each station, shared between nodes)
//! - [`ws`]       the WebSocket endpoints, the hand-over of the connection at the upgrade, the
//!   session actor and its outlet
//! - [`http`]     REST routes, input parsing at the edge, idempotency, health, the protocol documents
//! - [`router`]   routes declared once, served by the app and listed for the protocol documents
//! - [`sweeper`]  booking expiry and pruning in the background
//! - [`clock`]    time as stored (unix ms) and as shown (RFC 3339)
//! - [`metrics`]  Prometheus metrics, shared by the hub, the sessions and the request log
//! - [`protocol`] the WebSocket protocol as types: client messages, server control messages, close codes
//! - [`bench`]    the load generator behind `swapcast bench`

pub mod auth;
pub mod bench;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod realtime;
pub mod router;
pub mod startup;
pub mod state;
pub mod sweeper;
pub mod ws;
