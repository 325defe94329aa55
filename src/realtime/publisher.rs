//! The publisher: where committed events enter the realtime side. Transactions commit in event-id
//! order, but the threads that committed them report back in any order; the publisher puts them
//! back in order, renders each event once per audience, and routes it to the registry (station
//! events) or the notifier directory (personal events).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::directory::NotifierDirectory;
use super::messages::*;
use super::registry::StationRegistry;
use crate::events::wire::render;
use crate::events::{Audience, Event};
use crate::metrics::Metrics;

/// How long a gap in the id sequence is waited for before the publisher moves past it. Every
/// commit in this process reports its events right after committing, so a gap closes within
/// microseconds; one that does not belongs to a commit whose report was lost.
pub const GAP_WAIT: Duration = Duration::from_secs(2);

pub struct Publisher {
    /// The id of the next event to route.
    next: i64,
    waiting: BTreeMap<i64, Event>,
    /// When the oldest waiting event started waiting behind a gap.
    gap_since: Option<Instant>,
    registry: Addr<StationRegistry>,
    directory: Addr<NotifierDirectory>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// `last_event_id`: the newest event already committed when the process started.
    pub fn new(
        last_event_id: i64,
        registry: Addr<StationRegistry>,
        directory: Addr<NotifierDirectory>,
        metrics: Arc<Metrics>,
    ) -> Publisher {
        Publisher {
            next: last_event_id + 1,
            waiting: BTreeMap::new(),
            gap_since: None,
            registry,
            directory,
            metrics,
        }
    }

    fn route(&mut self, event: Event) {
        self.metrics.count_event();
        let rendered = Publish(Arc::new(render(&event)));
        match event.audience {
            Audience::Station(_) => self.registry.do_send(rendered),
            Audience::User(_) => self.directory.do_send(rendered),
        }
        self.next = event.id.0 + 1;
    }

    fn drain(&mut self) {
        while let Some(event) = self.waiting.remove(&self.next) {
            self.route(event);
        }
        self.gap_since = match (self.waiting.is_empty(), self.gap_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(GAP_WAIT / 4, |this, _| {
            if this.gap_since.is_some_and(|since| since.elapsed() >= GAP_WAIT) {
                if let Some((&first, _)) = this.waiting.first_key_value() {
                    tracing::warn!(
                        missing_from = this.next,
                        resumed_at = first,
                        "event ids skipped after waiting"
                    );
                    this.next = first;
                    this.gap_since = None;
                    this.drain();
                }
            }
        });
    }
}

impl Handler<Committed> for Publisher {
    type Result = ();

    fn handle(&mut self, Committed(events): Committed, _: &mut Context<Self>) {
        for event in events {
            if event.id.0 >= self.next {
                self.waiting.insert(event.id.0, event);
            }
        }
        self.drain();
    }
}
