//! The `Notifier` actor: one per user with live connections, holding that user's sessions, so a
//! user's events reach that user's connections alone.

use std::collections::HashMap;

use actix::prelude::*;

use super::messages::*;
use super::outbox::{deliver, Delivery};

#[derive(Default)]
pub struct Notifier {
    sessions: HashMap<SessionId, Recipient<ToSession>>,
}

impl Actor for Notifier {
    type Context = Context<Self>;
}

impl Handler<Join> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        self.sessions.insert(msg.session, msg.to);
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
        self.sessions.retain(|_, to| {
            deliver(
                to,
                ToSession::Event {
                    event_id: event.event_id,
                    text: event.public.clone(),
                },
            ) == Delivery::Queued
        });
    }
}

impl Handler<StopNotifier> for Notifier {
    type Result = ();

    fn handle(&mut self, _: StopNotifier, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
