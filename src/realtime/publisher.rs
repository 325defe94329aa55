//! The publisher: where committed events enter the realtime side. Events arrive out of order —
//! the threads that committed them report back in any order, and other nodes' events come over
//! the backplane — so the publisher puts them back in event-id order, renders each once per
//! audience, and routes it to the registry (station events) or the notifier directory (personal
//! events).
//!
//! Completeness comes from the event log, not from the messengers. Ids are contiguous in commit
//! order (see [`crate::events::log`]), so a hole in the sequence is an event that certainly
//! committed; after [`GAP_WAIT`] it is read from the log. And an event that nobody reported at
//! all (the backplane is down, or dropped the last message) is found by polling: whatever was
//! already committed one poll ago and is still not routed is read from the log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::directory::NotifierDirectory;
use super::messages::*;
use super::registry::Registries;
use super::snapshots::StationSnapshots;
use crate::db::{self, Pool};
use crate::domain::ids::StationId;
use crate::domain::stations;
use crate::events::wire::{render, Rendered};
use crate::events::{log, Audience, Event};
use crate::metrics::Metrics;

/// How long a hole in the id sequence is waited for before it is read from the log. Reports of
/// this node's commits close a hole within microseconds, the backplane within milliseconds.
pub const GAP_WAIT: Duration = Duration::from_millis(150);
/// How often the log is polled for events nobody reported, while the backplane is up (or there is
/// none): a safety net, so it is rare.
pub const POLL: Duration = Duration::from_secs(1);
/// How often while the backplane is down: other nodes' events then arrive only this way.
pub const POLL_BACKPLANE_DOWN: Duration = Duration::from_millis(200);
/// The most events read from the log at once; a longer hole takes several reads.
const FETCH_LIMIT: i64 = 1000;
const TICK: Duration = Duration::from_millis(50);

pub struct Publisher {
    /// The id of the next event to route.
    next: i64,
    waiting: BTreeMap<i64, Event>,
    /// Since when `next` has been missing while later events wait.
    stalled_since: Option<Instant>,
    /// The newest committed id as of the previous read of the log.
    polled_latest: i64,
    last_poll: Instant,
    /// A read of the log is under way; one at a time.
    fetching: bool,
    /// Read everything committed and not yet routed at the next tick.
    read_all: bool,
    backplane_up: bool,
    /// The hub's newest known committed id, raised by what arrives from elsewhere.
    latest: Arc<AtomicI64>,
    /// Told of each station event before it is routed, and of the stations revision at each poll.
    stations: Arc<StationSnapshots>,
    pool: Pool,
    registry: Registries,
    directory: Addr<NotifierDirectory>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// `last_event_id`: the newest event already committed when the process started.
    pub fn new(
        last_event_id: i64,
        latest: Arc<AtomicI64>,
        stations: Arc<StationSnapshots>,
        pool: Pool,
        registry: Registries,
        directory: Addr<NotifierDirectory>,
        metrics: Arc<Metrics>,
    ) -> Publisher {
        Publisher {
            next: last_event_id + 1,
            waiting: BTreeMap::new(),
            stalled_since: None,
            polled_latest: last_event_id,
            last_poll: Instant::now(),
            fetching: false,
            read_all: false,
            backplane_up: true,
            latest,
            stations,
            pool,
            registry,
            directory,
            metrics,
        }
    }

    fn route(&mut self, event: Event, stations: &mut Vec<(StationId, i64, Arc<Rendered>)>) {
        self.metrics.count_event();
        let rendered = Arc::new(render(&event));
        match event.audience {
            Audience::Station(station) => stations.push((station, event.id.0, rendered)),
            Audience::User(_) => self.directory.do_send(Publish(rendered)),
        }
        self.next = event.id.0 + 1;
    }

    fn accept(&mut self, events: Vec<Event>) {
        if let Some(newest) = events.iter().map(|e| e.id.0).max() {
            self.latest.fetch_max(newest, Ordering::Relaxed);
        }
        for event in events {
            if event.id.0 >= self.next {
                self.waiting.insert(event.id.0, event);
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        let before = self.next;
        let mut stations = Vec::new();
        while let Some(event) = self.waiting.remove(&self.next) {
            self.route(event, &mut stations);
        }
        if !stations.is_empty() {
            self.stations
                .routed(stations.iter().map(|(station, id, _)| (*station, *id)));
            let rendered = stations.into_iter().map(|(_, _, rendered)| rendered).collect();
            self.registry.broadcast(PublishStations(rendered));
        }
        self.stalled_since = match (self.waiting.is_empty(), self.stalled_since) {
            (true, _) => None,
            (false, since) if since.is_none() || self.next != before => Some(Instant::now()),
            (false, since) => since,
        };
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.fetching {
            return;
        }
        if self.stalled_since.is_some_and(|since| since.elapsed() >= GAP_WAIT) {
            let first_waiting = self.waiting.first_key_value().map_or(self.next, |(&id, _)| id);
            self.read_log(Some(first_waiting - 1), ctx);
            return;
        }
        let every = if self.backplane_up { POLL } else { POLL_BACKPLANE_DOWN };
        if std::mem::take(&mut self.read_all) {
            self.read_log(Some(i64::MAX), ctx);
        } else if self.last_poll.elapsed() >= every {
            self.last_poll = Instant::now();
            // What was committed a poll ago should have been reported by now; fetch what was not.
            let upto = (self.polled_latest >= self.next).then_some(self.polled_latest);
            self.read_log(upto, ctx);
        }
    }

    /// Reads the newest committed id and, with `upto`, the events from `next` through `upto` (at
    /// most through the newest: ids up to it all committed, ids past it may not exist yet).
    fn read_log(&mut self, upto: Option<i64>, ctx: &mut Context<Self>) {
        self.fetching = true;
        let from = self.next;
        let pool = self.pool.clone();
        let read = async move {
            db::run(&pool, move |conn| {
                let (latest, revision) = stations::revision(conn)?;
                let upto = upto.map(|upto| upto.min(latest).min(from + FETCH_LIMIT - 1));
                let events = match upto {
                    Some(upto) if upto >= from => log::range(conn, from, upto)?,
                    _ => Vec::new(),
                };
                Ok((latest, revision, upto, events))
            })
            .await
        };
        ctx.spawn(read.into_actor(self).map(move |result, this, _| {
            this.fetching = false;
            match result {
                Ok((latest, revision, upto, events)) => {
                    this.polled_latest = latest;
                    this.stations.saw_revision(revision);
                    match upto {
                        Some(upto) if upto >= from => this.fetched(from, upto, events),
                        _ => {}
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the event log; retrying"),
            }
        }));
    }

    fn fetched(&mut self, from: i64, upto: i64, events: Vec<Event>) {
        let unreported = events
            .iter()
            .filter(|e| e.id.0 >= self.next && !self.waiting.contains_key(&e.id.0))
            .count();
        self.metrics.events_from_log.inc_by(unreported as u64);
        if self.next != from {
            // Reports arrived meanwhile; whatever they did not cover is read again next tick.
            self.accept(events);
            return;
        }
        let found_from = events.first().map_or(upto + 1, |e| e.id.0);
        if found_from > self.next {
            // Committed ids are contiguous, so these were pruned by the retention sweep: no one
            // can be given them any more.
            tracing::warn!(
                missing_from = self.next,
                resumed_at = found_from,
                "events pruned before they were routed"
            );
            self.next = found_from;
        }
        self.accept(events);
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |this, ctx| this.tick(ctx));
    }
}

impl Handler<Committed> for Publisher {
    type Result = ();

    fn handle(&mut self, Committed(events): Committed, _: &mut Context<Self>) {
        self.accept(events);
    }
}

impl Handler<BackplaneState> for Publisher {
    type Result = ();

    /// On reconnecting, the log is read at once: other nodes' events of the outage are there.
    fn handle(&mut self, BackplaneState { up }: BackplaneState, _: &mut Context<Self>) {
        self.backplane_up = up;
        self.read_all |= up;
    }
}
