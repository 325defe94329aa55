//! What every request handler and background task shares, and the two ways they reach the
//! database: [`AppState::read`] and [`AppState::change`].

use std::sync::Arc;

use crate::auth::guard::LoginGuard;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::db::writer::Writer;
use crate::db::{self, DbConn, Pool};
use crate::domain::{self, Change};
use crate::error::Result;
use crate::realtime::snapshots::Snapshots;
use crate::realtime::Hub;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    /// SQLite's one writer thread, which every change goes through (`None` on PostgreSQL).
    pub writer: Option<Writer>,
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
        let hub = self.hub.clone();
        let change = move |conn: &mut DbConn| {
            let committed = domain::commit(conn, f)?;
            hub.publish(committed.events);
            then(&committed.value, &hub);
            Ok(committed.value)
        };
        match &self.writer {
            Some(writer) => writer.run(change).await,
            None => db::run(&self.pool, change).await,
        }
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
