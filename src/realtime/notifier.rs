//! The `Notifier` actor: one per user with live connections, holding that user's sessions, so a
//! user's events reach that user's connections alone.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::*;
use super::outbox::{deliver, Delivery};
use crate::events::wire::{self, Frame};
use crate::metrics::Metrics;

pub struct Notifier {
    /// Each session, whether it wants messages tagged with their channel, and its subscription's
    /// generation.
    sessions: HashMap<SessionId, (Recipient<ToSession>, bool, u64)>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(metrics: Arc<Metrics>) -> Notifier {
        Notifier {
            sessions: HashMap::new(),
            metrics,
        }
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;
}

impl Handler<Join> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        self.sessions.insert(msg.session, (msg.to, msg.tagged, msg.generation));
    }
}

impl Handler<Leave> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.sessions.remove(&msg.session);
    }
}

impl Handler<Publish> for Notifier {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) {
        let channel = Channel::Notifications;
        let metrics = &self.metrics;
        // Made on first need, once per event, shared by every tagged session.
        let mut forms: [Option<Frame>; 2] = Default::default();
        self.sessions.retain(|_, (to, tagged, generation)| {
            let frame = forms[usize::from(*tagged)]
                .get_or_insert_with(|| {
                    if *tagged {
                        Frame::text(&wire::tagged(&event.public, &channel.name()))
                    } else {
                        Frame::text(&event.public)
                    }
                })
                .clone();
            let queued = deliver(
                to,
                ToSession::Event {
                    channel,
                    generation: *generation,
                    event_id: event.event_id,
                    frame,
                },
            ) == Delivery::Queued;
            if queued {
                metrics.count_delivery();
            }
            queued
        });
        self.metrics
            .deliver_latency
            .observe(crate::clock::now_ms().saturating_sub(event.at) as f64 / 1000.0);
    }
}

impl Handler<StopNotifier> for Notifier {
    type Result = ();

    fn handle(&mut self, _: StopNotifier, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
