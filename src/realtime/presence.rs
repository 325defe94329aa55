//! Presence (CONTRACT §4.5): who watches each station's own channel, on every node of the
//! cluster.
//!
//! This node's viewers are told by its registries ([`Viewing`]), the one place that knows who
//! watches what. Other nodes' arrive over the backplane ([`PresenceWire`]): each change at once,
//! numbered, and every [`BEAT`] the node's whole presence, which is also its sign of life. A node
//! not heard from for [`TTL`] is gone, and so are its viewers — a node killed without a word
//! leaves no ghost for longer than that. Silence counts only while this node hears its own
//! messages come back ([`Presence::expire`]): cut off, it keeps the others' viewers as last heard.
//! A node that restarts has a new incarnation: what its earlier life said is dropped the moment
//! it speaks again. A numbered change that arrives out of
//! turn (NATS delivers at most once) makes the peer's view wait for its next whole presence.
//!
//! `viewer_joined` / `viewer_left` follow a signed-in user's first and last connection to a
//! station over the merged view: a second tab, a second node, or a token renewed in place makes no
//! pair. Every node decides them from the same view, and each tells its own staff sessions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use super::backplane::Backplane;
use super::messages::{PresenceEntry, PresenceHeard, PresenceWire, SessionId, StaffNotice, Viewer, Viewing};
use super::registry::Registries;
use crate::clock::now_ms;
use crate::domain::ids::{StationId, UserId};
use crate::domain::values::Role;
use crate::protocol::ServerMessage;
use crate::realtime::messages::Channel;

/// How often a node tells the others its whole presence.
pub const BEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is gone, with its viewers (three beats: one lost message
/// is not a death). With the [`EXPIRY_CHECK`], a dead node's viewers are gone within 7 s.
pub const TTL: Duration = Duration::from_secs(6);
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Entries per message of a whole presence: a display name is at most 100 characters, so a part
/// stays well under NATS's 1 MiB payload limit.
const STATE_PART: usize = 1000;

/// A signed-in viewer as `signed_in` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignedIn {
    pub user_id: UserId,
    pub display_name: String,
    pub role: Role,
    #[serde(serialize_with = "crate::clock::serialize_iso")]
    pub since: i64,
}

/// One station's presence: connections, and the signed-in users among them (once each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub viewers: usize,
    pub signed_in: Vec<SignedIn>,
}

/// A station's presence as one caller may see it: `signed_in` for its staff only.
#[derive(Clone, Debug, Serialize)]
pub struct Visible {
    pub station_id: StationId,
    pub viewers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_in: Option<Vec<SignedIn>>,
}

/// What a station's presence is now.
#[derive(Message)]
#[rtype(result = "View")]
pub struct PresenceQuery(pub StationId);

/// The backplane this node tells the others through.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseBackplane(pub Backplane);

/// A signed-in user's first connection to a station began, or their last one ended.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Notice {
    station: StationId,
    joined: bool,
    viewer: Viewer,
    viewers: usize,
}

#[derive(Default)]
struct Room {
    viewers: usize,
    users: HashMap<UserId, Present>,
}

struct Present {
    viewer: Viewer,
    connections: usize,
    since: i64,
}

/// The merged view over every node.
#[derive(Default)]
struct Rooms(HashMap<StationId, Room>);

impl Rooms {
    /// Adds, then removes (so an entry replaced by one of the same user never lets the user's
    /// count touch zero), and says whose presence began or ended.
    fn apply(&mut self, added: &[PresenceEntry], removed: &[PresenceEntry]) -> Vec<Notice> {
        // Whether each user touched was present before, and as whom (a node's whole presence
        // can touch thousands at once: a map, not a list).
        let mut before: HashMap<(StationId, UserId), (bool, Viewer)> = HashMap::new();
        let mut note = |rooms: &Self, entry: &PresenceEntry| {
            if let Some(viewer) = &entry.viewer {
                before.entry((entry.station, viewer.user_id)).or_insert_with(|| {
                    let present = rooms
                        .0
                        .get(&entry.station)
                        .is_some_and(|r| r.users.contains_key(&viewer.user_id));
                    (present, viewer.clone())
                });
            }
        };
        for entry in added {
            note(self, entry);
            let room = self.0.entry(entry.station).or_default();
            room.viewers += 1;
            if let Some(viewer) = &entry.viewer {
                let present = room.users.entry(viewer.user_id).or_insert_with(|| Present {
                    viewer: viewer.clone(),
                    connections: 0,
                    since: entry.since,
                });
                present.connections += 1;
                present.viewer = viewer.clone();
            }
        }
        for entry in removed {
            note(self, entry);
            let Some(room) = self.0.get_mut(&entry.station) else {
                continue;
            };
            room.viewers = room.viewers.saturating_sub(1);
            if let Some(viewer) = &entry.viewer {
                if let Some(present) = room.users.get_mut(&viewer.user_id) {
                    present.connections -= 1;
                    if present.connections == 0 {
                        room.users.remove(&viewer.user_id);
                    }
                }
            }
            if room.viewers == 0 {
                self.0.remove(&entry.station);
            }
        }
        let mut notices: Vec<Notice> = before
            .into_iter()
            .filter_map(|((station, user), (was, viewer))| {
                let room = self.0.get(&station);
                let now = room.and_then(|r| r.users.get(&user));
                let viewers = room.map_or(0, |r| r.viewers);
                match (was, now) {
                    (false, Some(present)) => Some(Notice {
                        station,
                        joined: true,
                        viewer: present.viewer.clone(),
                        viewers,
                    }),
                    (true, None) => Some(Notice {
                        station,
                        joined: false,
                        viewer,
                        viewers,
                    }),
                    _ => None,
                }
            })
            .collect();
        // Joins before leaves, each in a stable order (the map's is not).
        notices.sort_by_key(|n| (n.station, !n.joined, n.viewer.user_id));
        notices
    }

    fn view(&self, station: StationId) -> View {
        let Some(room) = self.0.get(&station) else {
            return View::default();
        };
        let mut signed_in: Vec<SignedIn> = room
            .users
            .values()
            .map(|p| SignedIn {
                user_id: p.viewer.user_id,
                display_name: p.viewer.display_name.clone(),
                role: p.viewer.role,
                since: p.since,
            })
            .collect();
        signed_in.sort_by_key(|s| (s.since, s.user_id));
        View {
            viewers: room.viewers,
            signed_in,
        }
    }
}

type Key = (StationId, SessionId);

/// Another node as last heard.
struct Peer {
    incarnation: u64,
    /// The last change applied.
    seq: u64,
    seen: Instant,
    entries: HashMap<Key, PresenceEntry>,
    /// A change was missed: changes wait for the next whole presence.
    stale: bool,
    /// A whole presence on its way in: its `seq`, the next part expected, the entries so far.
    pending: Option<(u64, u32, Vec<PresenceEntry>)>,
}

impl Peer {
    fn new(incarnation: u64) -> Peer {
        Peer {
            incarnation,
            seq: 0,
            seen: Instant::now(),
            entries: HashMap::new(),
            // Heard from its first change on, its presence is known from nothing; heard later, a
            // change out of turn makes it wait for the whole.
            stale: false,
            pending: None,
        }
    }
}

pub struct Presence {
    /// This life of this node: a restarted node is told from its earlier life by it.
    incarnation: u64,
    seq: u64,
    local: HashMap<Key, PresenceEntry>,
    peers: HashMap<String, Peer>,
    rooms: Rooms,
    registries: Registries,
    backplane: Option<Backplane>,
    /// When this node last heard its own presence come back over NATS.
    heard_self: Option<Instant>,
}

impl Presence {
    pub fn new(registries: Registries) -> Presence {
        Presence {
            incarnation: rand::random(),
            seq: 0,
            local: HashMap::new(),
            peers: HashMap::new(),
            rooms: Rooms::default(),
            registries,
            backplane: None,
            heard_self: None,
        }
    }

    /// Tells this node's staff sessions of each notice (every node does the same for its own),
    /// but not `except`, the connection of this node whose change it tells of.
    fn tell(&self, notices: Vec<Notice>, except: Option<SessionId>) {
        for notice in notices {
            let channel = Channel::Station(notice.station).name();
            let message = if notice.joined {
                ServerMessage::ViewerJoined {
                    user_id: notice.viewer.user_id,
                    display_name: &notice.viewer.display_name,
                    role: notice.viewer.role,
                    viewers: notice.viewers,
                }
            } else {
                ServerMessage::ViewerLeft {
                    user_id: notice.viewer.user_id,
                    display_name: &notice.viewer.display_name,
                    role: notice.viewer.role,
                    viewers: notice.viewers,
                }
            };
            self.registries.broadcast(StaffNotice {
                station: notice.station,
                frame: message.tagged_frame(&channel),
                except,
            });
        }
    }

    fn send(&self, wire: PresenceWire) {
        if let Some(backplane) = &self.backplane {
            backplane.presence(wire);
        }
    }

    /// This node's whole presence, in parts (at least one: an empty one is the sign of life).
    fn beat(&self) {
        let entries: Vec<&PresenceEntry> = self.local.values().collect();
        let chunks: Vec<&[&PresenceEntry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(STATE_PART).collect()
        };
        let parts = chunks.len() as u32;
        for (part, chunk) in chunks.into_iter().enumerate() {
            self.send(PresenceWire::State {
                incarnation: self.incarnation,
                seq: self.seq,
                part: part as u32,
                parts,
                entries: chunk.iter().map(|e| (*e).clone()).collect(),
            });
        }
    }

    /// A peer is gone once it has been silent for the [`TTL`] while NATS carried this node's own
    /// messages for long after its last: a node cut off from NATS — disconnected, or a NATS that
    /// hangs with the connection open — hears neither itself nor the others, and cannot tell a
    /// dead node from a cut wire. It keeps the others' viewers as last heard (a leave and a join
    /// again for everyone watching elsewhere would be false); once its own messages come back,
    /// the others' whole presence corrects the view, and a node that died meanwhile is gone.
    fn expire(&mut self) {
        let Some(heard_self) = self.heard_self else {
            return;
        };
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| {
                peer.seen.elapsed() > TTL && heard_self.saturating_duration_since(peer.seen) > TTL - BEAT
            })
            .map(|(node, _)| node.clone())
            .collect();
        for node in dead {
            tracing::info!(node, "presence: node silent, its viewers are gone");
            self.forget_peer(&node);
        }
    }

    fn forget_peer(&mut self, node: &str) {
        if let Some(peer) = self.peers.remove(node) {
            let removed: Vec<PresenceEntry> = peer.entries.into_values().collect();
            let notices = self.rooms.apply(&[], &removed);
            self.tell(notices, None);
        }
    }

    fn heard(&mut self, node: String, wire: PresenceWire) {
        let incarnation = match &wire {
            PresenceWire::Change { incarnation, .. } | PresenceWire::State { incarnation, .. } => *incarnation,
        };
        if self.peers.get(&node).is_some_and(|p| p.incarnation != incarnation) {
            // The node restarted: its earlier life's viewers are gone now, not after the TTL.
            self.forget_peer(&node);
        }
        let peer = self.peers.entry(node).or_insert_with(|| Peer::new(incarnation));
        peer.seen = Instant::now();
        let (added, removed) = match wire {
            PresenceWire::Change {
                seq,
                station,
                session,
                entry,
                ..
            } => {
                if peer.stale || seq <= peer.seq {
                    return;
                }
                if seq != peer.seq + 1 {
                    peer.stale = true;
                    return;
                }
                peer.seq = seq;
                let old = peer.entries.remove(&(station, session));
                if let Some(entry) = &entry {
                    peer.entries.insert((station, session), entry.clone());
                }
                (entry.into_iter().collect(), old.into_iter().collect())
            }
            PresenceWire::State {
                seq,
                part,
                parts,
                entries,
                ..
            } => {
                let pending = match peer.pending.take() {
                    _ if part == 0 => Some((seq, 1, entries)),
                    Some((at, next, mut so_far)) if at == seq && next == part => {
                        so_far.extend(entries);
                        Some((at, next + 1, so_far))
                    }
                    // A part went missing: wait for the next whole.
                    _ => None,
                };
                let Some((at, received, whole)) = pending else {
                    return;
                };
                if received < parts {
                    peer.pending = Some((at, received, whole));
                    return;
                }
                if at < peer.seq && !peer.stale {
                    return;
                }
                let whole: HashMap<Key, PresenceEntry> =
                    whole.into_iter().map(|e| ((e.station, e.session), e)).collect();
                let added: Vec<PresenceEntry> = whole
                    .iter()
                    .filter(|(key, entry)| peer.entries.get(key) != Some(entry))
                    .map(|(_, entry)| entry.clone())
                    .collect();
                let removed: Vec<PresenceEntry> = peer
                    .entries
                    .iter()
                    .filter(|(key, entry)| whole.get(key) != Some(entry))
                    .map(|(_, entry)| entry.clone())
                    .collect();
                peer.entries = whole;
                peer.seq = at;
                peer.stale = false;
                (added, removed)
            }
        };
        let notices = self.rooms.apply(&added, &removed);
        self.tell(notices, None);
    }
}

impl Actor for Presence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(BEAT, |this, _| this.beat());
        ctx.run_interval(EXPIRY_CHECK, |this, _| this.expire());
    }
}

impl Handler<Viewing> for Presence {
    type Result = ();

    fn handle(&mut self, msg: Viewing, _: &mut Context<Self>) {
        let (station, session, entry) = match msg {
            Viewing::Came {
                station,
                session,
                viewer,
            } => {
                let since = self.local.get(&(station, session)).map_or_else(now_ms, |e| e.since);
                let entry = PresenceEntry {
                    station,
                    session,
                    viewer,
                    since,
                };
                (station, session, Some(entry))
            }
            Viewing::Went { station, session } => (station, session, None),
        };
        let old = match &entry {
            Some(entry) => self.local.insert((station, session), entry.clone()),
            None => self.local.remove(&(station, session)),
        };
        if old.is_none() && entry.is_none() {
            return;
        }
        let added: Vec<PresenceEntry> = entry.iter().cloned().collect();
        let notices = self.rooms.apply(&added, &old.into_iter().collect::<Vec<_>>());
        self.tell(notices, Some(session));
        self.seq += 1;
        self.send(PresenceWire::Change {
            incarnation: self.incarnation,
            seq: self.seq,
            station,
            session,
            entry,
        });
    }
}

impl Handler<PresenceHeard> for Presence {
    type Result = ();

    fn handle(&mut self, msg: PresenceHeard, _: &mut Context<Self>) {
        if msg.own {
            self.heard_self = Some(Instant::now());
        } else {
            self.heard(msg.node, msg.wire);
        }
    }
}

impl Handler<PresenceQuery> for Presence {
    type Result = MessageResult<PresenceQuery>;

    fn handle(&mut self, PresenceQuery(station): PresenceQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.rooms.view(station))
    }
}

impl Handler<UseBackplane> for Presence {
    type Result = ();

    fn handle(&mut self, UseBackplane(backplane): UseBackplane, _: &mut Context<Self>) {
        self.backplane = Some(backplane);
        self.beat();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn users(view: &View) -> HashSet<i64> {
        view.signed_in.iter().map(|s| s.user_id.0).collect()
    }

    fn viewer(id: i64, name: &str) -> Option<Viewer> {
        Some(Viewer {
            user_id: UserId(id),
            display_name: name.into(),
            role: Role::User,
        })
    }

    fn entry(station: i64, session: u64, viewer: Option<Viewer>) -> PresenceEntry {
        PresenceEntry {
            station: StationId(station),
            session,
            viewer,
            since: 1,
        }
    }

    fn kinds(notices: &[Notice]) -> Vec<(bool, i64, usize)> {
        notices
            .iter()
            .map(|n| (n.joined, n.viewer.user_id.0, n.viewers))
            .collect()
    }

    #[test]
    fn a_user_joins_on_their_first_connection_and_leaves_on_their_last() {
        let mut rooms = Rooms::default();
        let tab1 = entry(1, 1, viewer(7, "Ann"));
        let tab2 = entry(1, 2, viewer(7, "Ann"));
        let anonymous = entry(1, 3, None);
        assert_eq!(kinds(&rooms.apply(std::slice::from_ref(&tab1), &[])), [(true, 7, 1)]);
        assert!(
            rooms.apply(std::slice::from_ref(&tab2), &[]).is_empty(),
            "a second tab is no join"
        );
        assert!(
            rooms.apply(std::slice::from_ref(&anonymous), &[]).is_empty(),
            "anonymous: a count only"
        );
        assert_eq!(rooms.view(StationId(1)).viewers, 3);
        assert!(
            rooms.apply(&[], &[tab1]).is_empty(),
            "one tab of two closed is no leave"
        );
        assert_eq!(kinds(&rooms.apply(&[], &[tab2])), [(false, 7, 1)]);
        assert_eq!(
            rooms.view(StationId(1)),
            View {
                viewers: 1,
                signed_in: vec![]
            }
        );
        rooms.apply(&[], &[anonymous]);
        assert!(rooms.0.is_empty(), "an empty room is dropped");
    }

    #[test]
    fn a_renewal_as_the_same_user_is_no_pair_and_another_user_is() {
        let mut rooms = Rooms::default();
        let before = entry(1, 1, viewer(7, "Ann"));
        rooms.apply(std::slice::from_ref(&before), &[]);
        let renamed = entry(1, 1, viewer(7, "Ann B."));
        assert!(rooms.apply(std::slice::from_ref(&renamed), &[before]).is_empty());
        assert_eq!(rooms.view(StationId(1)).signed_in[0].display_name, "Ann B.");
        let other = entry(1, 1, viewer(8, "Bo"));
        assert_eq!(kinds(&rooms.apply(&[other], &[renamed])), [(true, 8, 1), (false, 7, 1)]);
    }

    fn state(incarnation: u64, seq: u64, entries: Vec<PresenceEntry>) -> PresenceWire {
        PresenceWire::State {
            incarnation,
            seq,
            part: 0,
            parts: 1,
            entries,
        }
    }

    fn change(incarnation: u64, seq: u64, e: &PresenceEntry, came: bool) -> PresenceWire {
        PresenceWire::Change {
            incarnation,
            seq,
            station: e.station,
            session: e.session,
            entry: came.then(|| e.clone()),
        }
    }

    #[actix::test]
    async fn peers_changes_apply_in_turn_and_a_gap_waits_for_the_whole() {
        let registries = Registries::start(Default::default(), "test".into(), None);
        let mut presence = Presence::new(registries);
        let (a, b) = (entry(1, 1, viewer(7, "Ann")), entry(1, 2, viewer(8, "Bo")));
        presence.heard("n2".into(), change(5, 1, &a, true));
        assert_eq!(users(&presence.rooms.view(StationId(1))), HashSet::from([7]));
        // Change 2 was lost: 3 is not applied until the whole presence says so.
        presence.heard("n2".into(), change(5, 3, &b, true));
        assert_eq!(presence.rooms.view(StationId(1)).viewers, 1);
        presence.heard("n2".into(), state(5, 3, vec![a.clone(), b.clone()]));
        assert_eq!(users(&presence.rooms.view(StationId(1))), HashSet::from([7, 8]));
        presence.heard("n2".into(), change(5, 4, &a, false));
        assert_eq!(users(&presence.rooms.view(StationId(1))), HashSet::from([8]));
        // The node restarts: its earlier life's viewers are gone at its first word.
        presence.heard("n2".into(), state(6, 0, vec![]));
        assert_eq!(presence.rooms.view(StationId(1)), View::default());
    }

    #[actix::test]
    async fn a_whole_presence_in_parts_counts_only_when_every_part_came() {
        let registries = Registries::start(Default::default(), "test".into(), None);
        let mut presence = Presence::new(registries);
        let part = |part, entries| PresenceWire::State {
            incarnation: 1,
            seq: 9,
            part,
            parts: 2,
            entries,
        };
        presence.heard("n2".into(), part(0, vec![entry(1, 1, None)]));
        assert_eq!(presence.rooms.view(StationId(1)).viewers, 0, "half a presence");
        presence.heard("n2".into(), part(1, vec![entry(1, 2, None)]));
        assert_eq!(presence.rooms.view(StationId(1)).viewers, 2);
        // A part lost: the whole is not taken.
        presence.heard("n2".into(), part(1, vec![]));
        assert_eq!(presence.rooms.view(StationId(1)).viewers, 2);
    }

    /// A node silent for the TTL while NATS carries this node's own messages is gone; one that is
    /// silent while this node does not hear itself either (NATS down, or hung) is not.
    #[actix::test]
    async fn a_silent_node_is_gone_after_the_ttl_only_while_this_node_hears_itself() {
        let registries = Registries::start(Default::default(), "test".into(), None);
        let mut presence = Presence::new(registries);
        presence.heard("n2".into(), state(1, 0, vec![entry(1, 1, viewer(7, "Ann"))]));
        let long_ago = Instant::now() - TTL - Duration::from_millis(1);
        presence.peers.get_mut("n2").unwrap().seen = long_ago;
        presence.expire();
        assert_eq!(
            presence.rooms.view(StationId(1)).viewers,
            1,
            "never heard itself: cut off"
        );
        presence.heard_self = Some(long_ago + BEAT);
        presence.expire();
        assert_eq!(
            presence.rooms.view(StationId(1)).viewers,
            1,
            "NATS went quiet for both soon after the peer's last word"
        );
        presence.heard_self = Some(Instant::now());
        presence.expire();
        assert_eq!(presence.rooms.view(StationId(1)), View::default());
    }
}
