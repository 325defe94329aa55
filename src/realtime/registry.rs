//! The `StationRegistry` actors: which connection watches which station (and who watches the
//! `system` channel). There is one per worker thread, holding that thread's sessions, so handing
//! an event to a session is a call on its own thread rather than a message across threads; events
//! and user changes go to every registry ([`Registries`]). Each routes a station event to that
//! station's watchers and the all-stations watchers, choosing the rendered form each subscription
//! may see; every form is made once per event and registry and shared by all its recipients.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::*;
use crate::clock::{iso, now_ms};
use crate::domain::ids::StationId;
use crate::events::wire::{tagged, Frame, Rendered};
use crate::events::Audience;
use crate::metrics::Metrics;
use crate::protocol::ServerMessage;

struct Connection {
    to: Recipient<ToSession>,
    outlet: SharedOutlet,
    viewer: Option<Viewer>,
    channels: Vec<Channel>,
    /// Decisions begun before the last change to the user show no personal data: the re-check
    /// that change started decides again.
    hidden_before: Decided,
    /// Per channel left, the generations the leave covers (see [`SubscribedBy::Join`]).
    left: Vec<(Channel, u64)>,
}

/// One subscription, with what delivering to it takes (so an event needs no lookup of the
/// connection per recipient).
struct Watch {
    personal: PersonalData,
    /// The outlet generation of the join that made it (a re-check keeps it).
    generation: u64,
    decided: Decided,
    /// What `personal` was before a change to the user hid it until re-checked.
    suspended: Option<PersonalData>,
    tagged: bool,
    outlet: SharedOutlet,
    to: Recipient<ToSession>,
}

pub struct StationRegistry {
    connections: HashMap<SessionId, Connection>,
    /// Channel → who watches it. Indexed by channel so an event costs its own audience, not every
    /// connection.
    watchers: HashMap<Channel, HashMap<SessionId, Watch>>,
    /// Publications not yet delivered to every watcher, oldest first.
    backlog: VecDeque<Job>,
    /// A continuation of [`StationRegistry::drain`] is scheduled.
    draining: bool,
    /// Counts subscriptions made: a job may take a later publication's events only if nobody
    /// subscribed in between (a newcomer must get those).
    subscribed: u64,
    metrics: Arc<Metrics>,
    /// Told who begins and stops watching a station's own channel.
    presence: Option<Recipient<Viewing>>,
}

/// How often the `system` channel gets a `system_metrics` sample (CONTRACT §4.3).
pub const SYSTEM_METRICS_INTERVAL: Duration = Duration::from_secs(5);

impl StationRegistry {
    fn new(metrics: Arc<Metrics>, presence: Option<Recipient<Viewing>>) -> StationRegistry {
        StationRegistry {
            connections: HashMap::new(),
            watchers: HashMap::new(),
            backlog: VecDeque::new(),
            draining: false,
            subscribed: 0,
            metrics,
            presence,
        }
    }

    /// Presence counts a station's own channel (the seed feed and `/ws` `station:{id}`), not the
    /// all-stations feed.
    fn tell_presence(&self, session: SessionId, channel: Channel, came: bool) {
        let (Some(presence), Channel::Station(station)) = (&self.presence, channel) else {
            return;
        };
        let message = if came {
            let viewer = self.connections.get(&session).and_then(|c| c.viewer.clone());
            Viewing::Came {
                station,
                session,
                viewer,
            }
        } else {
            Viewing::Went { station, session }
        };
        presence.do_send(message);
    }
}

impl Actor for StationRegistry {
    type Context = Context<Self>;
}

/// Every registry of one hub. Sessions register with their own thread's ([`Registries::local`]);
/// what concerns all sessions is sent to each.
#[derive(Clone)]
pub struct Registries {
    shared: Arc<Shared>,
}

struct Shared {
    /// Tells this hub's registries from another's on the same thread (tests run several servers).
    hub: u64,
    shards: RwLock<Vec<Addr<StationRegistry>>>,
    metrics: Arc<Metrics>,
    node: Arc<str>,
    presence: Option<Recipient<Viewing>>,
}

thread_local! {
    static LOCAL: RefCell<HashMap<u64, Addr<StationRegistry>>> = RefCell::new(HashMap::new());
}

static NEXT_HUB: AtomicU64 = AtomicU64::new(1);

impl Registries {
    /// Starts the `system_metrics` sampler on the current arbiter. Every registry tells
    /// `presence` who watches which station.
    pub fn start(metrics: Arc<Metrics>, node: Arc<str>, presence: Option<Recipient<Viewing>>) -> Registries {
        let registries = Registries {
            shared: Arc::new(Shared {
                hub: NEXT_HUB.fetch_add(1, Ordering::Relaxed),
                shards: RwLock::new(Vec::new()),
                metrics,
                node,
                presence,
            }),
        };
        actix::spawn(registries.clone().sample_forever());
        registries
    }

    /// The registry of the calling thread, started there on first use (a worker's first session).
    pub fn local(&self) -> Addr<StationRegistry> {
        LOCAL.with(|local| {
            local
                .borrow_mut()
                .entry(self.shared.hub)
                .or_insert_with(|| {
                    let shard = StationRegistry::new(self.shared.metrics.clone(), self.shared.presence.clone()).start();
                    self.shards().push(shard.clone());
                    shard
                })
                .clone()
        })
    }

    fn shards(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Addr<StationRegistry>>> {
        self.shared.shards.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn all(&self) -> Vec<Addr<StationRegistry>> {
        self.shared
            .shards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends a message to every registry (in order, from any one sender).
    pub fn broadcast<M>(&self, message: M)
    where
        M: Message<Result = ()> + Clone + Send + 'static,
        StationRegistry: Handler<M>,
    {
        for shard in self.shared.shards.read().unwrap_or_else(PoisonError::into_inner).iter() {
            shard.do_send(message.clone());
        }
    }

    /// Sends a message to every registry and waits until each has taken it.
    pub async fn broadcast_and_wait<M>(&self, message: M)
    where
        M: Message<Result = ()> + Clone + Send + 'static,
        StationRegistry: Handler<M>,
    {
        for shard in self.all() {
            // A registry whose worker already stopped has nobody left to tell.
            let _ = shard.send(message.clone()).await;
        }
    }

    /// This node's watchers, over every registry.
    pub async fn stats(&self) -> RegistryStats {
        let mut total = RegistryStats::default();
        let mut stations: HashMap<StationId, usize> = HashMap::new();
        for shard in self.all() {
            // A registry whose worker stopped holds nobody.
            let Ok(stats) = shard.send(StatsQuery).await else {
                continue;
            };
            total.connections += stats.connections;
            total.subscriptions += stats.subscriptions;
            total.all_stations += stats.all_stations;
            for (station, watchers) in stats.stations {
                *stations.entry(station).or_default() += watchers;
            }
        }
        let (_, _, notifications) = self.shared.metrics.snapshot();
        total.subscriptions += notifications as usize;
        total.stations = stations.into_iter().collect();
        total.stations.sort();
        total
    }

    /// A `system_metrics` sample every [`SYSTEM_METRICS_INTERVAL`], made once for the node.
    async fn sample_forever(self) {
        let mut last = (Instant::now(), 0u64, 0u64);
        loop {
            actix::clock::sleep(SYSTEM_METRICS_INTERVAL).await;
            let (events, deliveries, _) = self.shared.metrics.snapshot();
            let (then, events_then, deliveries_then) = last;
            let secs = then.elapsed().as_secs_f64().max(0.001);
            last = (Instant::now(), events, deliveries);
            let stats = self.stats().await;
            let sample = ServerMessage::SystemMetrics {
                connections: stats.connections,
                subscriptions: stats.subscriptions,
                events_per_sec: ((events - events_then) as f64 / secs * 10.0).round() / 10.0,
                deliveries_per_sec: ((deliveries - deliveries_then) as f64 / secs * 10.0).round() / 10.0,
                node: &self.shared.node,
                timestamp: iso(now_ms()),
            };
            let frame = sample.tagged_frame(&Channel::System.name());
            self.broadcast(SystemSample(frame));
        }
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
            let watched = watchers.remove(&session).is_some();
            if watchers.is_empty() {
                self.watchers.remove(&channel);
            }
            if watched {
                self.tell_presence(session, channel, false);
            }
        }
    }

    /// Delivers a slice of the backlog, then lets the thread's other work run (an HTTP request
    /// waiting behind a fan-out to thousands would otherwise wait for all of it) and goes on.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let mut budget = FAN_OUT_SLICE;
        let mut delivered = 0u64;
        let mut dropped = Vec::new();
        while budget > 0 {
            let Some(job) = self.backlog.front_mut() else { break };
            let watchers = self.watchers.get(&job.channel);
            while budget > 0 && job.next < job.sessions.len() {
                let session = job.sessions[job.next];
                job.next += 1;
                budget -= 1;
                // Gone since (or overflowed): nothing to deliver.
                let Some(watch) = watchers.and_then(|w| w.get(&session)) else {
                    continue;
                };
                job.prepare(watch);
                let job = &*job;
                // Every form was just made by `prepare`: none is skipped.
                let mut items = (0..job.events.len()).filter_map(|i| job.form(i, watch));
                let attention = watch.outlet.lock().unwrap_or_else(PoisonError::into_inner).live(
                    job.channel,
                    watch.generation,
                    &mut items,
                );
                match attention {
                    Attention::None => delivered += job.events.len() as u64,
                    Attention::Poke => {
                        delivered += job.events.len() as u64;
                        watch.to.do_send(ToSession::Attend);
                    }
                    Attention::Drop => {
                        watch.to.do_send(ToSession::Attend);
                        dropped.push(session);
                    }
                }
            }
            if job.next >= job.sessions.len() {
                if job.last_of_publication {
                    let now = now_ms();
                    for (event, _) in &job.events {
                        self.metrics
                            .deliver_latency
                            .observe(now.saturating_sub(event.at) as f64 / 1000.0);
                    }
                }
                self.backlog.pop_front();
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        for session in dropped {
            self.forget(session);
        }
        if !self.backlog.is_empty() && !self.draining {
            self.draining = true;
            let later = actix::fut::wrap_future(tokio::task::yield_now());
            ctx.spawn(later.map(|(), this: &mut Self, ctx| {
                this.draining = false;
                this.drain(ctx);
            }));
        }
    }
}

/// Deliveries a registry makes before letting other work on its thread run.
const FAN_OUT_SLICE: usize = 256;

/// One channel's share of a publication, delivered a slice at a time.
struct Job {
    channel: Channel,
    name: String,
    events: Vec<(Arc<Rendered>, StationId)>,
    /// Who watched when the events arrived; a later subscriber starts from a snapshot (or a
    /// replay) that covers them.
    sessions: Vec<SessionId>,
    next: usize,
    /// Each form, made once on first need: per event, [public, private] × [plain, tagged].
    forms: Vec<[[Option<Frame>; 2]; 2]>,
    /// The publication's delivery latency is observed when this job is done.
    last_of_publication: bool,
    /// [`StationRegistry::subscribed`] when the job was made.
    subscribed: u64,
}

impl Job {
    fn new(
        channel: Channel,
        events: Vec<(Arc<Rendered>, StationId)>,
        sessions: Vec<SessionId>,
        subscribed: u64,
    ) -> Job {
        Job {
            subscribed,
            channel,
            name: channel.name(),
            forms: vec![Default::default(); events.len()],
            events,
            sessions,
            next: 0,
            last_of_publication: false,
        }
    }

    /// Which form of event `i` this watcher gets: [public, private] × [plain, tagged].
    fn slot(&self, i: usize, watch: &Watch) -> (usize, usize) {
        let shown = watch.personal.shown_for(self.events[i].1);
        (usize::from(shown), usize::from(watch.tagged))
    }

    /// Makes the forms this watcher needs that no one needed before.
    fn prepare(&mut self, watch: &Watch) {
        for i in 0..self.events.len() {
            let (shown, tagged_form) = self.slot(i, watch);
            if self.forms[i][shown][tagged_form].is_none() {
                let plain = self.events[i].0.for_viewer(shown == 1);
                let frame = if tagged_form == 1 {
                    Frame::text(&tagged(plain, &self.name))
                } else {
                    Frame::text(plain)
                };
                self.forms[i][shown][tagged_form] = Some(frame);
            }
        }
    }

    /// This watcher's form of event `i`, made by [`Job::prepare`].
    fn form(&self, i: usize, watch: &Watch) -> Option<(i64, &Frame)> {
        let (shown, tagged_form) = self.slot(i, watch);
        let frame = self.forms[i][shown][tagged_form].as_ref()?;
        Some((self.events[i].0.event_id, frame))
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
                    outlet: msg.outlet,
                    viewer: msg.viewer,
                    channels: Vec::new(),
                    hidden_before: Decided::default(),
                    left: Vec::new(),
                },
            );
        }
    }
}

impl Handler<Identify> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Identify, _: &mut Context<Self>) {
        let Some(connection) = self.connections.get_mut(&msg.session) else {
            return;
        };
        if connection.viewer.as_ref() == Some(&msg.viewer) {
            return;
        }
        connection.viewer = Some(msg.viewer);
        // Presence shows the connection as who it is now (a renewal as the same user is no pair).
        let stations: Vec<Channel> = connection
            .channels
            .iter()
            .copied()
            .filter(|c| matches!(c, Channel::Station(_)))
            .collect();
        for channel in stations {
            if self
                .watchers
                .get(&channel)
                .is_some_and(|w| w.contains_key(&msg.session))
            {
                self.tell_presence(msg.session, channel, true);
            }
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
        let existing = self
            .watchers
            .get(&msg.channel)
            .and_then(|w| w.get(&msg.session))
            .map(|w| w.generation);
        let (stale, generation) = match (msg.by, existing) {
            (SubscribedBy::Recheck, None) => (true, 0),
            (SubscribedBy::Recheck, Some(generation)) => (false, generation),
            (SubscribedBy::Join(generation), _) => (
                connection
                    .left
                    .iter()
                    .any(|(channel, up_to)| *channel == msg.channel && generation <= *up_to),
                generation,
            ),
        };
        if stale {
            return;
        }
        if !connection.channels.contains(&msg.channel) {
            connection.channels.push(msg.channel);
        }
        let watchers = self.watchers.entry(msg.channel).or_default();
        if watchers.get(&msg.session).is_some_and(|w| w.decided > msg.decided) {
            return;
        }
        let (personal, suspended) = if msg.decided < connection.hidden_before {
            (PersonalData::Hidden, Some(msg.personal))
        } else {
            (msg.personal, None)
        };
        let watch = Watch {
            personal,
            generation,
            suspended,
            decided: msg.decided,
            tagged: msg.tagged,
            outlet: connection.outlet.clone(),
            to: connection.to.clone(),
        };
        let new = watchers.insert(msg.session, watch).is_none();
        self.subscribed += 1;
        if new {
            self.tell_presence(msg.session, msg.channel, true);
        }
    }
}

impl Handler<Unsubscribe> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(connection) = self.connections.get_mut(&msg.session) {
            connection.channels.retain(|c| *c != msg.channel);
            connection.left.retain(|(c, _)| *c != msg.channel);
            connection.left.push((msg.channel, msg.joined_up_to));
        }
        self.unwatch(msg.session, msg.channel);
    }
}

impl Handler<PublishStations> for StationRegistry {
    type Result = ();

    /// Queues a job per channel that has watchers here: the all-stations channel, then each
    /// station's own; each watcher gets its events at once.
    fn handle(&mut self, PublishStations(events): PublishStations, ctx: &mut Context<Self>) {
        let stationed: Vec<(Arc<Rendered>, StationId)> = events
            .iter()
            .filter_map(|e| match e.audience {
                Audience::Station(station) => Some((e.clone(), station)),
                Audience::User(_) => None,
            })
            .collect();
        let mut channels = vec![Channel::Stations];
        let mut stations: Vec<StationId> = stationed.iter().map(|(_, station)| *station).collect();
        stations.sort_unstable();
        stations.dedup();
        channels.extend(stations.into_iter().map(Channel::Station));
        for channel in channels {
            let Some(watchers) = self.watchers.get(&channel) else {
                continue;
            };
            let mine: Vec<_> = stationed
                .iter()
                .filter(|(_, station)| channel == Channel::Stations || channel == Channel::Station(*station))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            // Behind on deliveries, consecutive publications to the same watchers go out
            // together: one write per watcher for several commits.
            match self.backlog.back_mut() {
                Some(last) if last.next == 0 && last.channel == channel && last.subscribed == self.subscribed => {
                    last.forms
                        .extend(std::iter::repeat_with(Default::default).take(mine.len()));
                    last.events.extend(mine);
                }
                _ => {
                    let sessions = watchers.keys().copied().collect();
                    self.backlog
                        .push_back(Job::new(channel, mine, sessions, self.subscribed));
                }
            }
        }
        if let Some(last) = self.backlog.back_mut() {
            last.last_of_publication = true;
        }
        if !self.draining {
            self.drain(ctx);
        }
    }
}

impl Handler<UserChanged> for StationRegistry {
    type Result = ();

    /// Until the re-check has decided again, the user sees no personal data: a right just taken
    /// away is never used for an event committed after the change, and one that remains comes
    /// back within milliseconds.
    fn handle(&mut self, msg: UserChanged, _: &mut Context<Self>) {
        let now = Decided::now();
        for (session, connection) in self
            .connections
            .iter_mut()
            .filter(|(_, c)| c.viewer.as_ref().map(|v| v.user_id) == Some(msg.user))
        {
            connection.hidden_before = now;
            for channel in &connection.channels {
                if let Some(watch) = self.watchers.get_mut(channel).and_then(|w| w.get_mut(session)) {
                    let before = std::mem::replace(&mut watch.personal, PersonalData::Hidden);
                    watch.suspended.get_or_insert(before);
                }
            }
            connection.to.do_send(ToSession::Recheck);
        }
    }
}

impl Handler<Reinstate> for StationRegistry {
    type Result = ();

    fn handle(&mut self, msg: Reinstate, _: &mut Context<Self>) {
        let Some(connection) = self.connections.get(&msg.session) else {
            return;
        };
        if msg.decided < connection.hidden_before {
            return;
        }
        for channel in &connection.channels {
            if let Some(watch) = self.watchers.get_mut(channel).and_then(|w| w.get_mut(&msg.session)) {
                if let Some(before) = watch.suspended.take() {
                    watch.personal = before;
                }
            }
        }
    }
}

impl Handler<RecheckAll> for StationRegistry {
    type Result = ();

    fn handle(&mut self, _: RecheckAll, _: &mut Context<Self>) {
        for connection in self.connections.values().filter(|c| c.viewer.is_some()) {
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
            subscriptions: self.watchers.values().map(HashMap::len).sum(),
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

impl Handler<SystemSample> for StationRegistry {
    type Result = ();

    fn handle(&mut self, SystemSample(frame): SystemSample, _: &mut Context<Self>) {
        let Some(watchers) = self.watchers.get(&Channel::System) else {
            return;
        };
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

impl Handler<StaffNotice> for StationRegistry {
    type Result = ();

    /// To the `/ws` sessions watching the station that may see its personal data (its staff),
    /// but not to the connection whose arrival it tells of. Never replayed on resume (`presence`
    /// tells the whole anew).
    fn handle(&mut self, notice: StaffNotice, _: &mut Context<Self>) {
        let channel = Channel::Station(notice.station);
        let Some(watchers) = self.watchers.get(&channel) else {
            return;
        };
        for (session, watch) in watchers {
            if watch.tagged && watch.personal.shown_for(notice.station) && notice.except != Some(*session) {
                watch.to.do_send(ToSession::Notice {
                    channel,
                    generation: watch.generation,
                    frame: notice.frame.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::ids::UserId;
    use crate::events::wire::Rendered;
    use crate::realtime::sink::Sink;

    /// Records the event ids each delivery call hands over, and the frames.
    #[derive(Default)]
    struct Recorder(Vec<i64>, Vec<Frame>);
    impl Outlet for Recorder {
        fn live(&mut self, _: Channel, _: u64, items: &mut dyn Iterator<Item = (i64, &Frame)>) -> Attention {
            for (id, frame) in items {
                self.0.push(id);
                self.1.push(frame.clone());
            }
            Attention::None
        }
    }

    fn publication(event_id: i64) -> PublishStations {
        PublishStations(vec![Arc::new(Rendered {
            event_id,
            at: now_ms(),
            audience: Audience::Station(StationId(1)),
            public: format!(r#"{{"event_id":{event_id}}}"#).into(),
            private: Some(format!(r#"{{"event_id":{event_id},"user":"u"}}"#).into()),
        })])
    }

    /// Waits until the recorder holds `n` events, and returns whether the last showed the user.
    async fn last_shows_user(recorder: &Mutex<Recorder>, n: usize) -> bool {
        for _ in 0..500 {
            if let Some(frame) = recorder.lock().unwrap().1.get(n - 1) {
                return frame.bytes().windows(4).any(|w| w == b"user");
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        panic!("event {n} never arrived");
    }

    fn subscribe(session: SessionId, personal: PersonalData, decided: Decided) -> Subscribe {
        Subscribe {
            session,
            channel: Channel::Station(StationId(1)),
            personal,
            tagged: false,
            decided,
            by: SubscribedBy::Join(1),
        }
    }

    /// A join and a re-check decide side by side: whichever message comes last, the decision
    /// begun later stands; one begun before a change to the user shows nothing personal, and a
    /// re-check that found the user unchanged shows again what the change hid — unless it was
    /// begun before a later change.
    #[actix::test]
    async fn the_later_decision_stands_whatever_arrives_last() {
        let registry = StationRegistry::new(Arc::default(), None).start();
        let recorder = watch(&registry, 7).await;
        registry.do_send(Identify {
            session: 7,
            viewer: Viewer {
                user_id: UserId(3),
                display_name: "Ann".into(),
                role: crate::domain::values::Role::User,
            },
        });
        let (earlier, later) = (Decided::now(), Decided::now());
        registry.do_send(subscribe(7, PersonalData::Hidden, later));
        registry.do_send(subscribe(7, PersonalData::Shown, earlier));
        registry.do_send(publication(1));
        assert!(!last_shows_user(&recorder, 1).await, "a stale decision was applied");

        registry.do_send(subscribe(7, PersonalData::Shown, Decided::now()));
        registry.do_send(publication(2));
        assert!(last_shows_user(&recorder, 2).await);

        let before_change = Decided::now();
        registry.do_send(UserChanged { user: UserId(3) });
        registry.do_send(publication(3));
        assert!(!last_shows_user(&recorder, 3).await, "shown before the re-check");
        registry.do_send(subscribe(7, PersonalData::Shown, before_change));
        registry.do_send(Reinstate {
            session: 7,
            decided: before_change,
        });
        registry.do_send(publication(4));
        assert!(
            !last_shows_user(&recorder, 4).await,
            "a re-check older than the change counted"
        );

        registry.do_send(Reinstate {
            session: 7,
            decided: Decided::now(),
        });
        registry.do_send(publication(5));
        assert!(
            last_shows_user(&recorder, 5).await,
            "the unchanged user's decision did not come back"
        );
    }

    async fn watch(registry: &Addr<StationRegistry>, session: SessionId) -> Arc<Mutex<Recorder>> {
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let outlet: SharedOutlet = recorder.clone();
        let to = Sink.start().recipient();
        registry.do_send(Connect {
            session,
            to,
            outlet,
            viewer: None,
        });
        registry
            .send(Subscribe {
                session,
                channel: Channel::Station(StationId(1)),
                personal: PersonalData::Hidden,
                tagged: false,
                decided: Decided::now(),
                by: SubscribedBy::Join(1),
            })
            .await
            .unwrap();
        recorder
    }

    /// A join runs outside the session, so its `Subscribe` can come after the `Unsubscribe` of a
    /// client that left at once: that join makes no watch (no ghost viewer), a later one does.
    #[actix::test]
    async fn a_join_overtaken_by_its_leave_makes_no_watch() {
        let registry = StationRegistry::new(Arc::default(), None).start();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let outlet: SharedOutlet = recorder.clone();
        registry.do_send(Connect {
            session: 7,
            to: Sink.start().recipient(),
            outlet,
            viewer: None,
        });
        let channel = Channel::Station(StationId(1));
        let join = |generation| Subscribe {
            by: SubscribedBy::Join(generation),
            ..subscribe(7, PersonalData::Hidden, Decided::now())
        };
        registry.do_send(Unsubscribe {
            session: 7,
            channel,
            joined_up_to: 1,
        });
        registry.do_send(join(1));
        registry.do_send(publication(1));
        registry.do_send(join(2));
        registry.do_send(publication(2));
        last_shows_user(&recorder, 1).await;
        assert_eq!(recorder.lock().unwrap().0, vec![2], "the overtaken join made a watch");
    }

    /// More watchers than one slice, publications arriving while a fan-out is under way, and a
    /// subscriber joining between two of them: everyone gets every event after they joined, once
    /// and in order.
    #[actix::test]
    async fn sliced_and_merged_fan_out_keeps_order_and_newcomers() {
        let registry = StationRegistry::new(Arc::default(), None).start();
        let mut early = Vec::new();
        for session in 0..(FAN_OUT_SLICE as u64 * 2 + 10) {
            early.push(watch(&registry, session).await);
        }
        registry.do_send(publication(1));
        registry.do_send(publication(2));
        let newcomer = watch(&registry, 10_000).await;
        registry.do_send(publication(3));
        registry.do_send(publication(4));
        let all_done = || early.iter().all(|r| r.lock().unwrap().0.len() == 4) && newcomer.lock().unwrap().0.len() >= 2;
        for _ in 0..200 {
            if all_done() {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        for recorder in &early {
            assert_eq!(recorder.lock().unwrap().0, vec![1, 2, 3, 4]);
        }
        assert_eq!(newcomer.lock().unwrap().0, vec![3, 4]);
    }
}
