//! The realtime side: actors that route committed events to WebSocket sessions.
//!
//! - [`backplane`] carries events between the nodes of a cluster (NATS)
//! - [`publisher`] orders committed events by id and renders each once per audience
//! - [`registry`]  a `StationRegistry` per worker thread: station → that thread's watching sessions
//! - [`directory`] starts and stops one [`notifier::Notifier`] per connected user
//! - [`notifier`]  a user's sessions
//! - [`presence`]  who watches each station, over every node
//! - [`per_ip`]    WebSocket connections per peer address
//! - [`outbox`]    the never-wait rule for handing a message to a session
//! - [`messages`]  every message they exchange

pub mod backplane;
pub mod directory;
pub mod messages;
pub mod notifier;
pub mod outbox;
pub mod per_ip;
pub mod presence;
pub mod publisher;
pub mod registry;
#[cfg(test)]
mod sink;
pub mod snapshots;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::auth::callers::CallerCache;
use crate::db::Pool;
use crate::domain::ids::UserId;
use crate::events::Event;
use crate::metrics::Metrics;
use backplane::Backplane;
use directory::NotifierDirectory;
use messages::{Committed, SessionId, UserChanged};
use presence::{Presence, PresenceQuery, UseBackplane};
use publisher::Publisher;
use registry::Registries;
use snapshots::StationSnapshots;

/// Handles to the running hub; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Hub {
    pub publisher: Addr<Publisher>,
    pub registry: Registries,
    pub directory: Addr<NotifierDirectory>,
    pub presence: Addr<Presence>,
    pub metrics: Arc<Metrics>,
    /// This node's name, in metrics and stats.
    pub node: Arc<str>,
    /// The other nodes, when there are any (`SWAPCAST_NATS_URL`).
    pub backplane: Option<Backplane>,
    /// WebSocket connections per peer address (`SWAPCAST_MAX_CONNECTIONS_PER_IP`).
    pub per_ip: Arc<per_ip::PerIp>,
    /// Signed-in users as last read; [`Hub::user_changed`] forgets them.
    pub actors: Arc<CallerCache>,
    /// Stations as their feeds last opened with them; [`Hub::stations_changed`] forgets them.
    pub stations: Arc<StationSnapshots>,
    /// The newest event id this node knows to be committed: what a connecting client is told,
    /// without a database read per handshake.
    latest: Arc<AtomicI64>,
}

impl Hub {
    /// Starts the actors on the current arbiter. `last_event_id` is the newest committed event.
    pub fn start(pool: Pool, last_event_id: i64, node: String) -> Hub {
        let metrics = Arc::new(Metrics::default());
        let node: Arc<str> = node.into();
        // The registries tell presence who watches what; presence tells the registries' staff
        // sessions who came and went.
        let mut registries = None;
        let presence = Presence::create(|ctx| {
            let started = Registries::start(metrics.clone(), node.clone(), Some(ctx.address().recipient()));
            registries = Some(started.clone());
            Presence::new(started)
        });
        let registry = registries.expect("the registries start with presence");
        let directory = NotifierDirectory::new(metrics.clone()).start();
        let latest = Arc::new(AtomicI64::new(last_event_id));
        let stations = Arc::new(StationSnapshots::default());
        let publisher = Publisher::new(
            last_event_id,
            latest.clone(),
            stations.clone(),
            pool,
            registry.clone(),
            directory.clone(),
            metrics.clone(),
        )
        .start();
        Hub {
            publisher,
            registry,
            directory,
            presence,
            metrics,
            node,
            backplane: None,
            actors: Arc::default(),
            stations,
            per_ip: Arc::default(),
            latest,
        }
    }

    /// Joins the cluster of the nodes that share this database over NATS at `url`.
    pub async fn join_cluster(&mut self, url: &str, cluster: &str) -> anyhow::Result<()> {
        let local = backplane::Local {
            node: self.node.clone(),
            publisher: self.publisher.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            actors: self.actors.clone(),
            stations: self.stations.clone(),
            presence: self.presence.clone().recipient(),
        };
        let backplane = Backplane::start(url, cluster, local).await?;
        self.presence.do_send(UseBackplane(backplane.clone()));
        self.backplane = Some(backplane);
        Ok(())
    }

    /// Leaves the cluster's subscriptions, when the server has stopped (see [`Backplane::stop`]).
    pub async fn leave_cluster(&self) {
        if let Some(backplane) = &self.backplane {
            backplane.stop().await;
        }
    }

    /// The model hook: called right after a transaction committed, from the thread that committed
    /// it, so every committed event is reported even if the request that made it was abandoned.
    pub fn publish(&self, events: Vec<Event>) {
        let Some(newest) = events.iter().map(|e| e.id.0).max() else {
            return;
        };
        self.latest.fetch_max(newest, Ordering::Relaxed);
        if let Some(backplane) = &self.backplane {
            backplane.publish(events.clone());
        }
        self.publisher.do_send(Committed(events));
    }

    /// An admin changed a user (role, activity): their live connections re-check what they may
    /// watch. Called right after the change committed.
    pub fn user_changed(&self, user: UserId) {
        self.actors.forget(user);
        self.registry.broadcast(UserChanged { user });
        if let Some(backplane) = &self.backplane {
            backplane.user_changed(user);
        }
    }

    /// An admin or operator changed station rows without an event (a name, an operator): the
    /// stations kept for opening feeds are forgotten, here and on every node. Called right after
    /// the change committed.
    pub fn stations_changed(&self) {
        self.stations.forget_all();
        if let Some(backplane) = &self.backplane {
            backplane.stations_changed();
        }
    }

    /// Who watches a station now, over every node.
    pub async fn presence(&self, station: crate::domain::ids::StationId) -> crate::error::Result<presence::View> {
        self.presence
            .send(PresenceQuery(station))
            .await
            .map_err(|e| crate::error::Error::Internal(anyhow::anyhow!("presence unavailable: {e}")))
    }

    /// The newest event id known here to be committed (this node's commits at once, other nodes'
    /// as they arrive).
    pub fn latest_event_id(&self) -> i64 {
        self.latest.load(Ordering::Relaxed)
    }

    pub fn next_session_id() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
