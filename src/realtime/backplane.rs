//! The cluster backplane (`SWAPCAST_NATS_URL`): several nodes on one database behave as one.
//!
//! After a commit, the node that made the change publishes its events on NATS
//! (`swapcast.<cluster>.events`), a commit's events together in as few messages as fit; every node
//! subscribes and hands other nodes' events to its publisher, which orders them among its own.
//! (One message per event made each event a publish, a decode on every node — its own included —
//! and a hand-off to the publisher of its own.) NATS delivers at most once, so it is only the fast
//! path: the publisher fills holes and outages from the event log (see [`super::publisher`]), and
//! nothing here waits for NATS — while it is away, outgoing events are dropped, not queued.
//!
//! `<cluster>` is an id kept in the database, so nodes find each other by sharing a database and
//! two deployments on one NATS server never mix. Nodes also tell each other who they are and whom
//! they serve (`….nodes`), for the cluster-wide `GET /api/realtime/stats`, and which users an
//! admin changed (`….users`), so those users' sessions on every node re-check their rights; that
//! station rows changed without an event (`….stations`, so that no node opens a feed with a
//! station as it was kept before, see [`super::snapshots`]); and who watches which station
//! (`….presence`, see [`super::presence`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Subscriber};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::messages::{BackplaneState, Committed, PresenceHeard, PresenceWire, RecheckAll, RegistryStats, UserChanged};
use super::publisher::Publisher;
use super::registry::Registries;
use super::snapshots::StationSnapshots;
use crate::auth::callers::CallerCache;
use crate::domain::ids::UserId;
use crate::events::Event;
use crate::metrics::Metrics;

/// How often a node tells the others about itself; one silent for three of these is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long a starting node waits for NATS before it serves without it.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// While NATS is away, other nodes' changes to users and sign-in sessions cannot be heard: every
/// signed-in connection re-checks itself against the database this often instead (the contract's
/// one second for revocation holds through an outage, at the cost of a read per user per tick).
const OUTAGE_RECHECK: Duration = Duration::from_secs(1);

/// A running backplane connection; cheap to clone.
#[derive(Clone)]
pub struct Backplane {
    client: Client,
    outbound: mpsc::UnboundedSender<Outbound>,
    peers: Arc<Mutex<HashMap<String, Peer>>>,
    /// The tasks that own a subscription, and what ends them ([`Backplane::stop`]).
    receivers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

struct Peer {
    seen: Instant,
    stats: RegistryStats,
}

enum Outbound {
    Events(Vec<Event>),
    UserChanged(UserId),
    StationsChanged,
    Presence(PresenceWire),
}

/// What goes over NATS: who sent it, and what.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    node: String,
    body: T,
}

/// The NATS subjects of one cluster.
#[derive(Clone)]
struct Subjects {
    prefix: String,
}

impl Subjects {
    fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }

    fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    fn users(&self) -> String {
        format!("{}.users", self.prefix)
    }

    fn stations(&self) -> String {
        format!("{}.stations", self.prefix)
    }

    fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }
}

/// Names the node that published a batch of events, so that a node passes over its own unread.
const NODE_HEADER: &str = "Swapcast-Node";
/// A message of events is cut after the event that takes it past this many bytes: well under the
/// 1 MiB NATS refuses by default, and a batched telemetry commit (thousands of events) still goes
/// in a few messages.
const EVENTS_MESSAGE_BYTES: usize = 256 * 1024;

/// The hub's actors a backplane feeds.
pub struct Local {
    pub node: Arc<str>,
    pub publisher: Addr<Publisher>,
    pub registry: Registries,
    pub metrics: Arc<Metrics>,
    pub actors: Arc<CallerCache>,
    pub stations: Arc<StationSnapshots>,
    pub presence: Recipient<PresenceHeard>,
}

impl Backplane {
    /// Connects in the background (a node starts, and serves, while NATS is away) and starts the
    /// tasks that carry events both ways on the current arbiter.
    pub async fn start(url: &str, cluster: &str, local: Local) -> anyhow::Result<Backplane> {
        let subjects = Subjects {
            prefix: format!("swapcast.{cluster}"),
        };
        let on_event = (local.publisher.clone(), local.registry.clone());
        let client = ConnectOptions::new()
            .name(format!("swapcast {}", local.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                (Duration::from_millis(100) * attempts.min(100) as u32).min(RECONNECT_DELAY_MAX)
            })
            .event_callback(move |event| {
                let (publisher, registry) = on_event.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("backplane connected");
                            publisher.do_send(BackplaneState { up: true });
                            registry.broadcast(RecheckAll);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("backplane disconnected; other nodes' events now come from the log");
                            publisher.do_send(BackplaneState { up: false });
                        }
                        other => tracing::info!(event = %other, "backplane"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("SWAPCAST_NATS_URL {}: {e}", crate::db::redact(url)))?;
        // Serving before the first connection would drop this node's first events on the way
        // out (the others would read them from the log, later): wait a little for it.
        let deadline = Instant::now() + FIRST_CONNECT_WAIT;
        while client.connection_state() != State::Connected && Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        if client.connection_state() != State::Connected {
            tracing::warn!(
                url = crate::db::redact(url),
                "backplane not connected yet; serving, and retrying in the background"
            );
            local.publisher.do_send(BackplaneState { up: false });
        }

        let events = client.subscribe(subjects.events()).await?;
        let nodes = client.subscribe(subjects.nodes()).await?;
        let users = client.subscribe(subjects.users()).await?;
        let stations = client.subscribe(subjects.stations()).await?;
        let presence = client.subscribe(subjects.presence()).await?;
        let (outbound, queue) = mpsc::unbounded_channel();
        let backplane = Backplane {
            client: client.clone(),
            outbound,
            peers: Arc::default(),
            receivers: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        let local = Arc::new(local);
        actix_web::rt::spawn(send(client.clone(), subjects.clone(), queue, local.clone()));
        backplane.receive(receive_events(events, local.clone()));
        backplane.receive(receive_users(users, local.clone()));
        backplane.receive(receive_stations(stations, local.clone()));
        backplane.receive(receive_presence(presence, local.clone()));
        backplane.receive(receive_nodes(nodes, local.clone(), backplane.peers.clone()));
        actix_web::rt::spawn(recheck_while_down(client.clone(), local.clone()));
        actix_web::rt::spawn(heartbeat(client, subjects, local));
        Ok(backplane)
    }

    /// Runs a task that owns a subscription until [`stop`](Self::stop).
    fn receive(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let mut stopping = self.stopping.subscribe();
        let handle = actix_web::rt::spawn(async move {
            tokio::select! {
                () = task => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        });
        self.receivers.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    }

    /// Ends the subscriptions while the runtime still runs: a subscription dropped with the
    /// runtime (when the server stops) unsubscribes through a runtime that is gone, and panics.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        let receivers = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|p| p.into_inner()));
        for receiver in receivers {
            let _ = receiver.await;
        }
    }

    /// Hands committed events to the sending task; never waits.
    pub fn publish(&self, events: Vec<Event>) {
        let _ = self.outbound.send(Outbound::Events(events));
    }

    pub fn user_changed(&self, user: UserId) {
        let _ = self.outbound.send(Outbound::UserChanged(user));
    }

    pub fn stations_changed(&self) {
        let _ = self.outbound.send(Outbound::StationsChanged);
    }

    /// Sent in the order given, after what was handed over before (presence numbers its changes).
    pub fn presence(&self, wire: PresenceWire) {
        let _ = self.outbound.send(Outbound::Presence(wire));
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The other nodes heard from lately, with what they last said about their watchers.
    pub fn peers(&self) -> Vec<(String, RegistryStats)> {
        let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        peers.retain(|_, peer| peer.seen.elapsed() < HEARTBEAT * 3);
        let mut list: Vec<_> = peers
            .iter()
            .map(|(node, peer)| (node.clone(), peer.stats.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

fn encode<T: Serialize>(node: &str, body: T) -> Option<bytes::Bytes> {
    let envelope = Envelope {
        node: node.to_owned(),
        body,
    };
    match serde_json::to_vec(&envelope) {
        Ok(bytes) => Some(bytes.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a backplane message");
            None
        }
    }
}

/// Decodes a message from another node (`None` for this node's own, and for garbage).
fn decode<T: for<'de> Deserialize<'de>>(node: &str, payload: &[u8]) -> Option<T> {
    match serde_json::from_slice::<Envelope<T>>(payload) {
        Ok(envelope) if envelope.node != node => Some(envelope.body),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable backplane message");
            None
        }
    }
}

async fn send(client: Client, subjects: Subjects, mut queue: mpsc::UnboundedReceiver<Outbound>, local: Arc<Local>) {
    while let Some(item) = queue.recv().await {
        if client.connection_state() != State::Connected {
            // The other nodes read these from the log; queueing them would only grow memory.
            if let Outbound::Events(events) = &item {
                local.metrics.backplane_dropped.inc_by(events.len() as u64);
            }
            continue;
        }
        let messages = match item {
            Outbound::Events(events) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(NODE_HEADER, &*local.node);
                for payload in event_messages(&events) {
                    let published = client
                        .publish_with_headers(subjects.events(), headers.clone(), payload)
                        .await;
                    if let Err(e) = published {
                        tracing::warn!(error = %e, "backplane publish failed");
                    }
                }
                continue;
            }
            Outbound::UserChanged(user) => encode(&local.node, user)
                .map(|payload| vec![(subjects.users(), payload)])
                .unwrap_or_default(),
            Outbound::StationsChanged => encode(&local.node, ())
                .map(|payload| vec![(subjects.stations(), payload)])
                .unwrap_or_default(),
            Outbound::Presence(wire) => encode(&local.node, wire)
                .map(|payload| vec![(subjects.presence(), payload)])
                .unwrap_or_default(),
        };
        for (subject, payload) in messages {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::warn!(error = %e, "backplane publish failed");
            }
        }
    }
}

/// A commit's events as JSON arrays of at most about [`EVENTS_MESSAGE_BYTES`] each, in order.
fn event_messages(events: &[Event]) -> Vec<bytes::Bytes> {
    let mut messages = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for event in events {
        let mut one = match serde_json::to_vec(event) {
            Ok(one) => one,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an event for the backplane");
                continue;
            }
        };
        current.push(if current.is_empty() { b'[' } else { b',' });
        current.append(&mut one);
        if current.len() >= EVENTS_MESSAGE_BYTES {
            current.push(b']');
            messages.push(std::mem::take(&mut current).into());
        }
    }
    if !current.is_empty() {
        current.push(b']');
        messages.push(current.into());
    }
    messages
}

async fn receive_events(mut events: Subscriber, local: Arc<Local>) {
    while let Some(message) = events.next().await {
        let sender = message.headers.as_ref().and_then(|h| h.get(NODE_HEADER));
        if sender.is_some_and(|node| node.as_str() == &*local.node) {
            continue;
        }
        match serde_json::from_slice::<Vec<Event>>(&message.payload) {
            Ok(events) if !events.is_empty() => local.publisher.do_send(Committed(events)),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "undecodable backplane events"),
        }
    }
}

async fn receive_users(mut users: Subscriber, local: Arc<Local>) {
    while let Some(message) = users.next().await {
        if let Some(user) = decode::<UserId>(&local.node, &message.payload) {
            local.actors.forget(user);
            local.registry.broadcast(UserChanged { user });
        }
    }
}

async fn receive_stations(mut stations: Subscriber, local: Arc<Local>) {
    while let Some(message) = stations.next().await {
        if decode::<()>(&local.node, &message.payload).is_some() {
            local.stations.forget_all();
        }
    }
}

async fn receive_presence(mut presence: Subscriber, local: Arc<Local>) {
    while let Some(message) = presence.next().await {
        if let Ok(envelope) = serde_json::from_slice::<Envelope<PresenceWire>>(&message.payload) {
            local.presence.do_send(PresenceHeard {
                own: envelope.node == *local.node,
                node: envelope.node,
                wire: envelope.body,
            });
        }
    }
}

async fn receive_nodes(mut nodes: Subscriber, local: Arc<Local>, peers: Arc<Mutex<HashMap<String, Peer>>>) {
    while let Some(message) = nodes.next().await {
        let Ok(envelope) = serde_json::from_slice::<Envelope<RegistryStats>>(&message.payload) else {
            continue;
        };
        if envelope.node != *local.node {
            let mut peers = peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let peer = Peer {
                seen: Instant::now(),
                stats: envelope.body,
            };
            peers.insert(envelope.node, peer);
        }
    }
}

/// See [`OUTAGE_RECHECK`].
async fn recheck_while_down(client: Client, local: Arc<Local>) {
    let mut tick = actix_web::rt::time::interval(OUTAGE_RECHECK);
    loop {
        tick.tick().await;
        if client.connection_state() != State::Connected {
            local.registry.broadcast(RecheckAll);
        }
    }
}

async fn heartbeat(client: Client, subjects: Subjects, local: Arc<Local>) {
    let mut every = actix_web::rt::time::interval(HEARTBEAT);
    loop {
        every.tick().await;
        if client.connection_state() != State::Connected {
            continue;
        }
        let stats = local.registry.stats().await;
        if let Some(payload) = encode(&local.node, stats) {
            if let Err(e) = client.publish(subjects.nodes(), payload).await {
                tracing::warn!(error = %e, "backplane heartbeat failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{EventId, UserId};
    use crate::domain::values::Level;
    use crate::events::{Audience, EventBody};

    fn notification(id: i64, message: String) -> Event {
        Event {
            id: EventId(id),
            at: 1_709_029_800_000,
            audience: Audience::User(UserId(id % 7)),
            body: EventBody::Notification {
                title: "t".into(),
                message,
                level: Level::Info,
            },
        }
    }

    /// A commit's events go in messages NATS takes (each cut just past the size), and arrive as
    /// they left: all of them, in order.
    #[test]
    fn a_commits_events_go_in_few_messages_in_order() {
        let events: Vec<Event> = (1..=3_000)
            .map(|id| notification(id, "x".repeat(id as usize % 300)))
            .collect();
        let largest = events
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap().len())
            .max()
            .unwrap();
        let messages = event_messages(&events);
        assert!(
            messages.len() > 1,
            "{} bytes of events in one message",
            EVENTS_MESSAGE_BYTES
        );
        let mut heard = Vec::new();
        for message in &messages {
            assert!(
                message.len() <= EVENTS_MESSAGE_BYTES + largest + 2,
                "{} bytes",
                message.len()
            );
            heard.extend(serde_json::from_slice::<Vec<Event>>(message).unwrap());
        }
        assert_eq!(heard, events);
        assert!(event_messages(&[]).is_empty());
        let one = event_messages(&events[..1]);
        assert_eq!(serde_json::from_slice::<Vec<Event>>(&one[0]).unwrap(), events[..1]);
    }
}
