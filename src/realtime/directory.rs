//! The notifier directory: starts a user's [`Notifier`] with their first connection, stops it
//! after the last one leaves, and routes each personal event to it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;

use super::messages::*;
use super::notifier::Notifier;
use crate::domain::ids::UserId;
use crate::events::Audience;
use crate::metrics::Metrics;

struct Entry {
    notifier: Addr<Notifier>,
    /// The user's sessions that joined, by id: leaving twice, or without having joined, changes
    /// nothing, so a session may always take its one way out.
    sessions: HashSet<SessionId>,
}

pub struct NotifierDirectory {
    users: HashMap<UserId, Entry>,
    metrics: Arc<Metrics>,
}

impl NotifierDirectory {
    pub fn new(metrics: Arc<Metrics>) -> NotifierDirectory {
        NotifierDirectory {
            users: HashMap::new(),
            metrics,
        }
    }
}

impl Actor for NotifierDirectory {
    type Context = Context<Self>;
}

impl Handler<Join> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        // A session that stopped before it joined would otherwise keep a notifier alive.
        if !msg.to.connected() {
            return;
        }
        let metrics = self.metrics.clone();
        let entry = self.users.entry(msg.user).or_insert_with(|| Entry {
            notifier: Notifier::new(metrics).start(),
            sessions: HashSet::new(),
        });
        if entry.sessions.insert(msg.session) {
            self.metrics.notification_joined(1);
            entry.notifier.do_send(msg);
        }
    }
}

impl Handler<Leave> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        let Some(entry) = self.users.get_mut(&msg.user) else {
            return;
        };
        if !entry.sessions.remove(&msg.session) {
            return;
        }
        let notifier = entry.notifier.clone();
        self.metrics.notification_joined(-1);
        if entry.sessions.is_empty() {
            self.users.remove(&msg.user);
            notifier.do_send(msg);
            // Queued behind the Leave: the notifier stops once it has let go of the last session.
            notifier.do_send(StopNotifier);
        } else {
            notifier.do_send(msg);
        }
    }
}

impl Handler<Settled> for NotifierDirectory {
    type Result = ();

    fn handle(&mut self, _: Settled, _: &mut Context<Self>) {}
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
            connections: self.users.values().map(|e| e.sessions.len()).sum(),
            subscriptions: self.users.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::sink::Sink;

    #[actix::test]
    async fn a_notifier_lives_from_the_first_join_to_the_last_leave() {
        let directory = NotifierDirectory::new(Default::default()).start();
        let user = UserId(1);
        let (a, b) = (Sink.start().recipient(), Sink.start().recipient());
        directory
            .send(Join {
                user,
                session: 1,
                to: a,
                tagged: false,
                generation: 1,
            })
            .await
            .unwrap();
        directory
            .send(Join {
                user,
                session: 2,
                to: b,
                tagged: false,
                generation: 1,
            })
            .await
            .unwrap();
        assert_eq!(
            directory.send(CountQuery).await.unwrap(),
            Counts {
                connections: 2,
                subscriptions: 1
            }
        );
        directory.send(Leave { user, session: 1 }).await.unwrap();
        assert_eq!(directory.send(CountQuery).await.unwrap().subscriptions, 1);
        // Leaving twice, or a session that never joined, takes nobody else's place.
        directory.send(Leave { user, session: 1 }).await.unwrap();
        directory.send(Leave { user, session: 9 }).await.unwrap();
        assert_eq!(directory.send(CountQuery).await.unwrap().connections, 1);
        directory.send(Leave { user, session: 2 }).await.unwrap();
        assert_eq!(
            directory.send(CountQuery).await.unwrap(),
            Counts {
                connections: 0,
                subscriptions: 0
            }
        );
    }

    #[actix::test]
    async fn a_session_gone_before_it_joined_starts_no_notifier() {
        let directory = NotifierDirectory::new(Default::default()).start();
        let sink = Sink.start();
        let to = sink.clone().recipient();
        sink.send(StopSink).await.unwrap();
        directory
            .send(Join {
                user: UserId(1),
                session: 1,
                to,
                tagged: false,
                generation: 1,
            })
            .await
            .unwrap();
        assert_eq!(directory.send(CountQuery).await.unwrap().subscriptions, 0);
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopSink;
    impl Handler<StopSink> for Sink {
        type Result = ();
        fn handle(&mut self, _: StopSink, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
}
