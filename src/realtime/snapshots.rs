//! The all-stations snapshot, rendered once per log position and shared by every connection that
//! needs it: a hundred dashboards connecting at once cost one read of the station rows and one
//! copy of the frames, which their sockets then hold by reference.

use std::sync::{Arc, OnceLock};

use crate::clock::now_ms;
use crate::db::{self, Pool};
use crate::domain::stations;
use crate::error::Result;
use crate::events::wire::{self, Frame};
use crate::metrics::Metrics;

/// Every station's `inventory_update` with `action: snapshot`, as of one log position.
pub struct Snapshot {
    /// The newest event the snapshot reflects.
    pub position: i64,
    /// The stations' revision it reflects (changes that write no event: a new station, a name).
    revision: i64,
    texts: Vec<bytestring::ByteString>,
    plain: OnceLock<Arc<[Frame]>>,
    /// With `"channel":"stations"`, for `/ws`.
    tagged: OnceLock<Arc<[Frame]>>,
}

impl Snapshot {
    /// The frames in the form a connection speaks, rendered by the first connection to ask.
    pub fn frames(&self, tagged: bool) -> Arc<[Frame]> {
        let (cell, channel) = if tagged {
            (&self.tagged, Some("stations"))
        } else {
            (&self.plain, None)
        };
        cell.get_or_init(|| {
            self.texts
                .iter()
                .map(|text| match channel {
                    Some(name) => Frame::text(&wire::tagged(text, name)),
                    None => Frame::text(text),
                })
                .collect()
        })
        .clone()
    }
}

/// How far behind the log the shared snapshot may be and still serve: its users replay the events
/// since from the log (a few chunks), instead of each reading and rendering every station again
/// — under a steady stream of changes, connections arriving one after another share one snapshot.
pub const REPLAY_AT_MOST: i64 = 1_000;

#[derive(Default)]
pub struct Snapshots {
    /// The newest snapshot; the lock also makes connections that need a newer one wait for a
    /// single read instead of each reading the stations.
    current: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// A snapshot that reflects the station rows as they stood at `needed` (a log position and a
    /// stations revision, `stations::revision`), or stands at most [`REPLAY_AT_MOST`] events
    /// before it: the one there is, or a new one read once for every connection waiting
    /// meanwhile. Its user replays what lies between.
    pub async fn at_least(&self, pool: &Pool, metrics: &Metrics, needed: (i64, i64)) -> Result<Arc<Snapshot>> {
        let mut current = self.current.lock().await;
        if let Some(snapshot) = current
            .as_ref()
            .filter(|s| s.position >= needed.0.saturating_sub(REPLAY_AT_MOST) && s.revision >= needed.1)
        {
            return Ok(snapshot.clone());
        }
        metrics.snapshot_reads.inc();
        let (position, revision, texts) = db::run(pool, |conn| {
            db::read_consistent(conn, |conn| {
                let (position, revision) = stations::revision(conn)?;
                let at = now_ms();
                let texts = stations::all(conn)?
                    .iter()
                    .map(|s| wire::snapshot(s, position, at))
                    .collect();
                Ok((position, revision, texts))
            })
        })
        .await?;
        let snapshot = Arc::new(Snapshot {
            position,
            revision,
            texts,
            plain: OnceLock::new(),
            tagged: OnceLock::new(),
        });
        *current = Some(snapshot.clone());
        Ok(snapshot)
    }
}
