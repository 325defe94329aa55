//! The notifier directory: starts a user's [`Notifier`] with their first connection, stops it
//! after the last one leaves, and routes each personal event to it.

use std::collections::HashMap;

use actix::prelude::*;

use super::messages::*;
use super::notifier::Notifier;
use crate::domain::ids::UserId;
use crate::events::Audience;

struct Entry {
    notifier: Addr<Notifier>,
    sessions: usize,
}

#[derive(Default)]
pub struct NotifierDirectory {
    users: HashMap<UserId, Entry>,
}

impl Actor for NotifierDirectory {
    type Context = Context<Self>;
}

impl Handler<Join> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        let entry = self.users.entry(msg.user).or_insert_with(|| Entry {
            notifier: Notifier::default().start(),
            sessions: 0,
        });
        entry.sessions += 1;
        entry.notifier.do_send(msg);
    }
}

impl Handler<Leave> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        let Some(entry) = self.users.get_mut(&msg.user) else {
            return;
        };
        let notifier = entry.notifier.clone();
        entry.sessions = entry.sessions.saturating_sub(1);
        if entry.sessions == 0 {
            self.users.remove(&msg.user);
            notifier.do_send(msg);
            // Queued behind the Leave: the notifier stops once it has let go of the last session.
            notifier.do_send(StopNotifier);
        } else {
            notifier.do_send(msg);
        }
    }
}

impl Handler<Publish> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let Audience::User(user) = msg.0.audience else { return };
        // No notifier: the user has no live connection; the event stays in the log.
        if let Some(entry) = self.users.get(&user) {
            entry.notifier.do_send(msg);
        }
    }
}

impl Handler<CountQuery> for NotifierDirectory {
    type Result = MessageResult<CountQuery>;

    fn handle(&mut self, _: CountQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Counts {
            connections: self.users.values().map(|e| e.sessions).sum(),
            subscriptions: self.users.len(),
        })
    }
}
