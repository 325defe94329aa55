//! Snapshots kept for the connections that open with one. The all-stations snapshot, rendered
//! once per log position and shared by every connection that needs it: a hundred dashboards
//! connecting at once cost one read of the station rows and one copy of the frames, which their
//! sockets then hold by reference. And each station as its own feed last opened with it
//! ([`StationSnapshots`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::clock::now_ms;
use crate::db::{self, Pool};
use crate::domain::ids::StationId;
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

/// One station as a fresh feed of it opens, kept from the last time its feed opened: dashboards
/// open a station's feed on every page load, and each read of it was a hand-off to a database
/// thread in the connection's critical path (a third of the server's time when feeds open and
/// close as fast as they can).
///
/// A kept station serves only while nothing can have changed it since it was read: no event of
/// the station routed after the log position it was read at ([`StationSnapshots::routed`]), and
/// no change to station rows without an event heard of since — a rename or a new operator on this
/// node or another ([`StationSnapshots::forget_all`], from the changes' hooks and from the
/// backplane's word of changed users), a stations revision newer than any seen (read with every
/// station and by the publisher's poll of the log, which also catches another node's changes when
/// the backplane lost the word, within the poll's second, and offline imports).
pub struct KeptStation {
    /// The newest event the station reflects.
    pub position: i64,
    pub station: stations::StationView,
}

#[derive(Default)]
pub struct StationSnapshots {
    kept: std::sync::Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Raised whenever station rows may have changed without an event: what was kept before
    /// serves no more.
    epoch: u64,
    /// The newest stations revision seen.
    revision: i64,
    stations: HashMap<StationId, (u64, Arc<KeptStation>)>,
    /// The newest event routed to each station's watchers.
    routed: HashMap<StationId, i64>,
}

impl StationSnapshots {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The station as kept, if nothing can have changed it since.
    pub fn get(&self, id: StationId) -> Option<Arc<KeptStation>> {
        let mut kept = self.kept();
        let routed = kept.routed.get(&id).copied().unwrap_or(i64::MIN);
        let epoch = kept.epoch;
        match kept.stations.get(&id) {
            Some((at, station)) if *at == epoch && routed <= station.position => Some(station.clone()),
            Some(_) => {
                kept.stations.remove(&id);
                None
            }
            None => None,
        }
    }

    /// What [`keep`](Self::keep) is given with a station read after this call.
    pub fn epoch(&self) -> u64 {
        self.kept().epoch
    }

    /// Keeps a station read (with the stations revision, in one consistent read) after
    /// [`epoch`](Self::epoch) returned `epoch`: unless something was forgotten meanwhile, since
    /// the read may predate that change.
    pub fn keep(&self, epoch: u64, revision: i64, station: KeptStation) -> Arc<KeptStation> {
        let station = Arc::new(station);
        let mut kept = self.kept();
        let current = kept.epoch == epoch;
        kept.see_revision(revision);
        if current {
            let epoch = kept.epoch;
            kept.stations.insert(station.station.id, (epoch, station.clone()));
        }
        station
    }

    /// The stations revision as the log now stands: one newer than any seen forgets every
    /// station kept.
    pub fn saw_revision(&self, revision: i64) {
        self.kept().see_revision(revision);
    }

    /// Station rows may have changed without an event.
    pub fn forget_all(&self) {
        self.kept().forget_all();
    }

    /// Events about to be routed to the stations' watchers (by the publisher, before it hands
    /// them on — so a subscription registered before this call gets them live, and one that asks
    /// [`routed_after`](Self::routed_after) after it learns of them).
    pub fn routed(&self, events: impl Iterator<Item = (StationId, i64)>) {
        let mut kept = self.kept();
        for (station, id) in events {
            let newest = kept.routed.entry(station).or_insert(id);
            *newest = (*newest).max(id);
        }
    }

    /// Whether an event of the station after `position` has been routed: asked once a
    /// subscription is registered, whether it must read the events since its snapshot from the
    /// log (those routed later reach it live).
    pub fn routed_after(&self, id: StationId, position: i64) -> bool {
        self.kept().routed.get(&id).is_some_and(|&newest| newest > position)
    }
}

impl Kept {
    fn see_revision(&mut self, revision: i64) {
        if revision > self.revision {
            self.revision = revision;
            self.forget_all();
        }
    }

    fn forget_all(&mut self) {
        self.epoch += 1;
        self.stations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::values::StationStatus;
    use crate::events::Inventory;

    fn station(id: i64, position: i64) -> KeptStation {
        KeptStation {
            position,
            station: stations::StationView {
                id: StationId(id),
                name: format!("S{id}"),
                address: None,
                status: StationStatus::Online,
                operator_id: None,
                inventory: Inventory {
                    available_batteries: 1,
                    booked_batteries: 0,
                    total_batteries: 1,
                },
                charging_batteries: 0,
                created_at: 0,
                updated_at: 0,
            },
        }
    }

    fn kept_at(kept: &StationSnapshots, id: i64) -> Option<i64> {
        kept.get(StationId(id)).map(|s| s.position)
    }

    #[test]
    fn a_station_is_kept_until_an_event_of_its_own_is_routed() {
        let kept = StationSnapshots::default();
        kept.keep(kept.epoch(), 0, station(1, 10));
        kept.keep(kept.epoch(), 0, station(2, 10));
        assert_eq!(kept_at(&kept, 1), Some(10));
        kept.routed([(StationId(2), 11), (StationId(1), 9)].into_iter());
        assert_eq!(kept_at(&kept, 1), Some(10), "an event it reflects already");
        assert_eq!(kept_at(&kept, 2), None, "an event after it");
        assert!(kept.routed_after(StationId(2), 10));
        assert!(!kept.routed_after(StationId(1), 10));
        assert!(!kept.routed_after(StationId(3), 0), "never routed");
        // Read again after the event: kept again.
        kept.keep(kept.epoch(), 0, station(2, 11));
        assert_eq!(kept_at(&kept, 2), Some(11));
    }

    #[test]
    fn a_change_without_an_event_forgets_every_station_and_any_read_begun_before_it() {
        let kept = StationSnapshots::default();
        kept.keep(kept.epoch(), 0, station(1, 10));
        let before = kept.epoch();
        kept.forget_all();
        assert_eq!(kept_at(&kept, 1), None);
        // Read before the change, kept after it: it may show the station as it was.
        kept.keep(before, 0, station(1, 10));
        assert_eq!(kept_at(&kept, 1), None);
        kept.keep(kept.epoch(), 0, station(1, 10));
        assert_eq!(kept_at(&kept, 1), Some(10));
    }

    #[test]
    fn a_newer_stations_revision_forgets_what_was_kept_before_it() {
        let kept = StationSnapshots::default();
        kept.keep(kept.epoch(), 3, station(1, 10));
        kept.saw_revision(3);
        assert_eq!(kept_at(&kept, 1), Some(10), "the revision it was read at");
        // A station read at a newer revision is kept, and those read before are forgotten.
        let epoch = kept.epoch();
        kept.keep(epoch, 4, station(2, 12));
        assert_eq!((kept_at(&kept, 1), kept_at(&kept, 2)), (None, Some(12)));
        // The poll of the log finds a newer one still.
        kept.saw_revision(5);
        assert_eq!(kept_at(&kept, 2), None);
        kept.saw_revision(4);
        kept.keep(kept.epoch(), 5, station(2, 12));
        assert_eq!(
            kept_at(&kept, 2),
            Some(12),
            "an older revision heard late forgets nothing"
        );
    }
}
