//! What every request handler and background task shares, and the two ways they reach the
//! database: [`AppState::read`] and [`AppState::change`].

use std::sync::Arc;

use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::db::{self, DbConn, Pool};
use crate::domain::{self, Change};
use crate::error::Result;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub settings: Arc<Settings>,
    pub keys: Arc<TokenKeys>,
}

impl AppState {
    /// Runs one domain change in its own transaction, off the async threads. Its events are in
    /// the log when this returns; this is the one place that hands them on to live delivery.
    pub async fn change<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Change) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let committed = db::run(&self.pool, move |conn| domain::commit(conn, f)).await?;
        Ok(committed.value)
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
