//! What every request handler and background task shares, and the two ways they reach the
//! database: [`AppState::read`] and [`AppState::change`].

use std::sync::Arc;

use crate::auth::guard::LoginGuard;
use crate::auth::tokens::TokenKeys;
use crate::auth::{policy, Caller};
use crate::config::Settings;
use crate::domain::ids::StationId;
use crate::domain::stations;
use crate::realtime::presence::Visible;
use tokio::sync::oneshot;

use crate::db::writer::Writer;
use crate::db::{self, DbConn, Pool};
use crate::domain::additions::Addition;
use crate::domain::batteries::{BatteryView, NewBatteryInput};
use crate::domain::commit::Queued;
use crate::domain::Change;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::realtime::snapshots::Snapshots;
use crate::realtime::Hub;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    /// The database's one writer thread, which every change goes through, in batches.
    pub writer: Writer<Box<dyn Queued>>,
    pub settings: Arc<Settings>,
    pub keys: Arc<TokenKeys>,
    pub hub: Hub,
    /// Sign-in throttling and the bound on password hashing.
    pub login: Arc<LoginGuard>,
    /// The all-stations snapshot, shared by the connections that start from it.
    pub snapshots: Arc<Snapshots>,
}

impl AppState {
    /// Runs one domain change in its own transaction, off the async threads, and hands its events
    /// to the hub right after the commit — on the committing thread, so they are published even if
    /// the request that made them is abandoned meanwhile. This is the only publish point.
    pub async fn change<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Change) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.change_then(f, |_, _| {}).await
    }

    /// [`change`](Self::change), then `then` on the committing thread right after the commit —
    /// for hub notices that are not events (an admin changed a user), so they too are sent even if
    /// the request is abandoned.
    pub async fn change_then<T, F, G>(&self, f: F, then: G) -> Result<T>
    where
        F: FnOnce(&mut Change) -> Result<T> + Send + 'static,
        G: FnOnce(&T, &Hub) + Send + 'static,
        T: Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let queued = Pending {
            f: Some(f),
            then: Some(then),
            value: None,
            hub: self.hub.clone(),
            span: tracing::Span::current(),
            done,
        };
        self.queue(Box::new(queued), answer).await
    }

    /// Hands a change to the writer and waits for its answer.
    async fn queue<T>(&self, change: Box<dyn Queued>, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.writer.submit(change)?;
        answer
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer dropped a change")))?
    }

    /// Adds a battery (`batteries::add`) through the writer as an [`Addition`], which the group
    /// commit stages together with the additions queued next to it.
    pub async fn add_battery(&self, actor: Caller, station: StationId, input: NewBatteryInput) -> Result<BatteryView> {
        let (done, answer) = oneshot::channel();
        let queued = Adding {
            addition: Addition::new(actor, station, input),
            hub: self.hub.clone(),
            done,
        };
        self.queue(Box::new(queued), answer).await
    }

    /// A station's presence as this caller may see it (CONTRACT §4.5): anyone who may watch the
    /// station gets the count, its staff (admins, its operator) also who is signed in; an
    /// unknown station is not found. The one rule for `GET …/presence` and `/ws` `presence`.
    pub async fn presence(&self, actor: Option<&Caller>, id: StationId) -> Result<Visible> {
        policy::may_read_stations(actor, self.settings.public_feeds)?;
        let station = self.read(move |conn| stations::load(conn, id)).await?;
        let staff = policy::sees_personal_data(actor, stations::operator_of(&station));
        let view = self.hub.presence(id).await?;
        Ok(Visible {
            station_id: id,
            viewers: view.viewers,
            signed_in: staff.then_some(view.signed_in),
        })
    }

    /// Runs a read (or a write that produces no events) off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        db::run(&self.pool, f).await
    }
}

/// A change in the writer's queue: the change, what to do after its commit, and whom to answer.
struct Pending<T, F, G> {
    f: Option<F>,
    then: Option<G>,
    value: Option<T>,
    hub: Hub,
    span: tracing::Span,
    done: oneshot::Sender<Result<T>>,
}

impl<T, F, G> Queued for Pending<T, F, G>
where
    F: FnOnce(&mut Change) -> Result<T> + Send + 'static,
    G: FnOnce(&T, &Hub) + Send + 'static,
    T: Send + 'static,
{
    fn stage(&mut self, ch: &mut Change) -> Result<()> {
        let _entered = self.span.enter();
        let f = self.f.take().expect("a change is staged once");
        self.value = Some(f(ch)?);
        Ok(())
    }

    /// On the writer's thread right after the commit, so the events are published even if the
    /// request that made them was abandoned meanwhile.
    fn committed(self: Box<Self>, events: Vec<Event>) {
        let Pending {
            then, value, hub, done, ..
        } = *self;
        let value = value.expect("a committed change was staged");
        hub.publish(events);
        if let Some(then) = then {
            then(&value, &hub);
        }
        // The caller may have gone (its request was abandoned); the change stands regardless.
        let _ = done.send(Ok(value));
    }

    fn refused(self: Box<Self>, error: Error) {
        let _ = self.done.send(Err(error));
    }
}

/// A battery addition in the writer's queue, and whom to answer.
struct Adding {
    addition: Addition,
    hub: Hub,
    done: oneshot::Sender<Result<BatteryView>>,
}

impl Queued for Adding {
    fn stage(&mut self, ch: &mut Change) -> Result<()> {
        self.addition.stage_alone(ch)
    }

    fn addition(&mut self) -> Option<&mut Addition> {
        Some(&mut self.addition)
    }

    fn committed(self: Box<Self>, events: Vec<Event>) {
        let Adding { addition, hub, done } = *self;
        hub.publish(events);
        let made = addition.made.expect("a committed addition made its battery");
        let _ = done.send(Ok(made));
    }

    fn refused(self: Box<Self>, error: Error) {
        let _ = self.done.send(Err(error));
    }
}
