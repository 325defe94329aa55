//! The `StationRegistry` actor: which connection watches which station (and who watches the
//! `system` channel). It routes each station event to that station's watchers and the
//! all-stations watchers, choosing the rendered form each subscription may see; every form is made
//! once per event and shared by all its recipients.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::*;
use super::outbox::{deliver, Delivery};
use crate::clock::{iso, now_ms};
use crate::domain::ids::{StationId, UserId};
use crate::events::wire::{tagged, Frame, Rendered};
use crate::events::Audience;
use crate::metrics::Metrics;
use serde_json::json;

struct Connection {
    to: Recipient<ToSession>,
    user: Option<UserId>,
    channels: Vec<Channel>,
}

struct Watch {
    personal: PersonalData,
    tagged: bool,
}

pub struct StationRegistry {
    connections: HashMap<SessionId, Connection>,
    /// Channel → who watches it. Indexed by channel so an event costs its own audience, not every
    /// connection.
    watchers: HashMap<Channel, HashMap<SessionId, Watch>>,
    metrics: Arc<Metrics>,
    node: Arc<str>,
    /// The counters at the previous `system_metrics` sample, for rates.
    last_sample: (Instant, u64, u64),
}

/// How often the `system` channel gets a `system_metrics` sample (CONTRACT §4.3).
pub const SYSTEM_METRICS_INTERVAL: Duration = Duration::from_secs(5);

impl StationRegistry {
    pub fn new(metrics: Arc<Metrics>, node: Arc<str>) -> StationRegistry {
        StationRegistry {
            connections: HashMap::new(),
            watchers: HashMap::new(),
            last_sample: (Instant::now(), 0, 0),
            metrics,
            node,
        }
    }

    fn subscriptions(&self) -> usize {
        let (_, _, notifications) = self.metrics.snapshot();
        self.watchers.values().map(HashMap::len).sum::<usize>() + notifications as usize
    }

    /// Sends a `system_metrics` sample to the `system` channel's watchers.
    fn sample(&mut self) {
        let (events, deliveries, _) = self.metrics.snapshot();
        let (then, events_then, deliveries_then) = self.last_sample;
        let secs = then.elapsed().as_secs_f64().max(0.001);
        self.last_sample = (Instant::now(), events, deliveries);
        let Some(watchers) = self.watchers.get(&Channel::System) else {
            return;
        };
        let frame = Frame::text(&tagged(
            &json!({
                "type": "system_metrics",
                "connections": self.connections.len(),
                "subscriptions": self.subscriptions(),
                "events_per_sec": ((events - events_then) as f64 / secs * 10.0).round() / 10.0,
                "deliveries_per_sec": ((deliveries - deliveries_then) as f64 / secs * 10.0).round() / 10.0,
                "node": &*self.node,
                "timestamp": iso(now_ms()),
            })
            .to_string(),
            &Channel::System.name(),
        ));
        for session in watchers.keys() {
            if let Some(connection) = self.connections.get(session) {
                connection.to.do_send(ToSession::Sample {
                    channel: Channel::System,
                    frame: frame.clone(),
                });
            }
        }
    }
}

impl Actor for StationRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SYSTEM_METRICS_INTERVAL, |this, _| this.sample());
    }
}

impl StationRegistry {
    fn forget(&mut self, session: SessionId) {
        let Some(connection) = self.connections.remove(&session) else {
            return;
        };
        for channel in connection.channels {
            self.unwatch(session, channel);
        }
    }

    fn unwatch(&mut self, session: SessionId, channel: Channel) {
        if let Some(watchers) = self.watchers.get_mut(&channel) {
            watchers.remove(&session);
            if watchers.is_empty() {
                self.watchers.remove(&channel);
            }
        }
    }

    /// Hands each watcher of `channel` its forms of `events` in one message, dropping those that
    /// do not keep up. Each form is made once, on first need: per event, [public, private] ×
    /// [plain, tagged].
    fn fan_out(&mut self, channel: Channel, events: &[(&Rendered, StationId)]) {
        let Some(watchers) = self.watchers.get(&channel) else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let name = channel.name();
        let mut forms: Vec<[[Option<Frame>; 2]; 2]> = vec![Default::default(); events.len()];
        let mut form = |i: usize, watch: &Watch| {
            let (event, station) = events[i];
            let shown = watch.personal.shown_for(station);
            let frame = forms[i][usize::from(shown)][usize::from(watch.tagged)].get_or_insert_with(|| {
                let plain = event.for_viewer(shown);
                if watch.tagged {
                    Frame::text(&tagged(plain, &name))
                } else {
                    Frame::text(plain)
                }
            });
            (event.event_id, frame.clone())
        };
        let mut dropped = Vec::new();
        let mut delivered = 0;
        for (session, watch) in watchers {
            let Some(connection) = self.connections.get(session) else {
                continue;
            };
            // One event (the common case) needs no list.
            let message = if events.len() == 1 {
                let (event_id, frame) = form(0, watch);
                ToSession::Event {
                    channel,
                    event_id,
                    frame,
                }
            } else {
                let items = (0..events.len()).map(|i| form(i, watch)).collect();
                ToSession::Events { channel, items }
            };
            match deliver(&connection.to, message) {
                Delivery::Queued => delivered += events.len() as u64,
                Delivery::Drop => dropped.push(*session),
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        for session in dropped {
            self.forget(session);
        }
    }
}

impl Handler<Connect> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        // A session that stopped before it was registered would otherwise linger.
        if msg.to.connected() {
            self.connections.insert(
                msg.session,
                Connection {
                    to: msg.to,
                    user: msg.user,
                    channels: Vec::new(),
                },
            );
        }
    }
}

impl Handler<Disconnect> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.forget(msg.session);
    }
}

impl Handler<Subscribe> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        let Some(connection) = self.connections.get_mut(&msg.session) else {
            return;
        };
        if !connection.channels.contains(&msg.channel) {
            connection.channels.push(msg.channel);
        }
        let watch = Watch {
            personal: msg.personal,
            tagged: msg.tagged,
        };
        self.watchers.entry(msg.channel).or_default().insert(msg.session, watch);
    }
}

impl Handler<Unsubscribe> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(connection) = self.connections.get_mut(&msg.session) {
            connection.channels.retain(|c| *c != msg.channel);
        }
        self.unwatch(msg.session, msg.channel);
    }
}

impl Handler<PublishStations> for StationRegistry {
    type Result = ();

    fn handle(&mut self, PublishStations(events): PublishStations, _: &mut Context<Self>) {
        let stationed: Vec<(&Rendered, StationId)> = events
            .iter()
            .filter_map(|e| match e.audience {
                Audience::Station(station) => Some((&**e, station)),
                Audience::User(_) => None,
            })
            .collect();
        self.fan_out(Channel::Stations, &stationed);
        let mut stations: Vec<StationId> = stationed.iter().map(|(_, station)| *station).collect();
        stations.sort_unstable();
        stations.dedup();
        for station in stations {
            let mine: Vec<_> = stationed.iter().copied().filter(|(_, s)| *s == station).collect();
            self.fan_out(Channel::Station(station), &mine);
        }
        let now = now_ms();
        for event in &events {
            self.metrics
                .deliver_latency
                .observe(now.saturating_sub(event.at) as f64 / 1000.0);
        }
    }
}

impl Handler<UserChanged> for StationRegistry {
    type Result = ();

    /// Until the re-check has decided again, the user sees no personal data: a right just taken
    /// away is never used for an event committed after the change, and one that remains comes
    /// back within milliseconds.
    fn handle(&mut self, msg: UserChanged, _: &mut Context<Self>) {
        for (session, connection) in self.connections.iter().filter(|(_, c)| c.user == Some(msg.user)) {
            for channel in &connection.channels {
                if let Some(watch) = self.watchers.get_mut(channel).and_then(|w| w.get_mut(session)) {
                    watch.personal = PersonalData::Hidden;
                }
            }
            connection.to.do_send(ToSession::Recheck);
        }
    }
}

impl Handler<RecheckAll> for StationRegistry {
    type Result = ();

    fn handle(&mut self, _: RecheckAll, _: &mut Context<Self>) {
        for connection in self.connections.values().filter(|c| c.user.is_some()) {
            connection.to.do_send(ToSession::Recheck);
        }
    }
}

impl Handler<StatsQuery> for StationRegistry {
    type Result = MessageResult<StatsQuery>;

    fn handle(&mut self, _: StatsQuery, _: &mut Context<Self>) -> Self::Result {
        let mut stations: Vec<(StationId, usize)> = self
            .watchers
            .iter()
            .filter_map(|(channel, watchers)| match channel {
                Channel::Station(id) => Some((*id, watchers.len())),
                _ => None,
            })
            .collect();
        stations.sort();
        MessageResult(RegistryStats {
            connections: self.connections.len(),
            subscriptions: self.subscriptions(),
            stations,
            all_stations: self.watchers.get(&Channel::Stations).map_or(0, HashMap::len),
        })
    }
}

impl Handler<ShutDownAll> for StationRegistry {
    type Result = ();

    fn handle(&mut self, _: ShutDownAll, _: &mut Context<Self>) {
        for connection in self.connections.values() {
            connection.to.do_send(ToSession::ShutDown);
        }
    }
}
