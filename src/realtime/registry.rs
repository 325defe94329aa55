//! The `StationRegistry` actor: which connection watches which station. It routes each station
//! event to that station's subscribers and the all-stations subscribers, choosing the rendered form
//! each subscription may see.

use std::collections::HashMap;

use actix::prelude::*;

use super::messages::*;
use super::outbox::{deliver, Delivery};
use crate::events::Audience;

struct Connection {
    to: Recipient<ToSession>,
    scopes: Vec<Scope>,
}

#[derive(Default)]
pub struct StationRegistry {
    connections: HashMap<SessionId, Connection>,
    /// Scope → who watches it, and whether each may see personal data there. Indexed by scope so
    /// an event costs its own audience, not every connection.
    watchers: HashMap<Scope, HashMap<SessionId, PersonalData>>,
}

impl Actor for StationRegistry {
    type Context = Context<Self>;
}

impl StationRegistry {
    fn forget(&mut self, session: SessionId) {
        let Some(connection) = self.connections.remove(&session) else {
            return;
        };
        for scope in connection.scopes {
            if let Some(watchers) = self.watchers.get_mut(&scope) {
                watchers.remove(&session);
                if watchers.is_empty() {
                    self.watchers.remove(&scope);
                }
            }
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
                    scopes: Vec::new(),
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
        if !connection.scopes.contains(&msg.scope) {
            connection.scopes.push(msg.scope);
        }
        self.watchers
            .entry(msg.scope)
            .or_default()
            .insert(msg.session, msg.personal);
    }
}

impl Handler<Publish> for StationRegistry {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Context<Self>) {
        let Audience::Station(station) = event.audience else {
            return;
        };
        let mut dropped = Vec::new();
        for scope in [Scope::Station(station), Scope::AllStations] {
            let Some(watchers) = self.watchers.get(&scope) else {
                continue;
            };
            for (session, personal) in watchers {
                let Some(connection) = self.connections.get(session) else {
                    continue;
                };
                let text = event.for_viewer(personal.shown_for(station)).clone();
                if deliver(
                    &connection.to,
                    ToSession::Event {
                        event_id: event.event_id,
                        text,
                    },
                ) == Delivery::Drop
                {
                    dropped.push(*session);
                }
            }
        }
        for session in dropped {
            self.forget(session);
        }
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

impl Handler<CountQuery> for StationRegistry {
    type Result = MessageResult<CountQuery>;

    fn handle(&mut self, _: CountQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Counts {
            connections: self.connections.len(),
            subscriptions: self.watchers.values().map(HashMap::len).sum(),
        })
    }
}
