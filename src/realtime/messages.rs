//! Every message the realtime actors exchange. Actors route; none of these carries a database
//! handle or asks a permission question — visibility is decided before a subscription is made.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::auth::tokens::Credentials;
use crate::domain::ids::{StationId, UserId};
use crate::events::wire::{Frame, Rendered};
use crate::events::Event;

/// Identifies one WebSocket connection for as long as the process runs.
pub type SessionId = u64;

/// The sending half of a session, shared with the registry of the session's own thread: live
/// events are handed over by a call on that thread, not by a mailbox message per recipient (which
/// was most of a delivery's cost). What needs the session itself (waiting for the kernel,
/// closing) the outlet asks for through [`Attention`].
pub trait Outlet: Send {
    /// Live events of one channel, in order; the frames are the registry's, shared by reference.
    /// `generation` is the one the watch was made for ([`SubscribedBy::Join`]): a watch of an
    /// earlier subscription of the channel, perhaps as another user, feeds no later one.
    fn live(&mut self, channel: Channel, generation: u64, items: &mut dyn Iterator<Item = (i64, &Frame)>) -> Attention;
}

pub type SharedOutlet = Arc<Mutex<dyn Outlet>>;

/// What an outlet needs after a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Attention {
    None,
    /// Tell the session ([`ToSession::Attend`]): it has something to do on its socket.
    Poke,
    /// The session overflowed or its connection broke: tell it, and forget it.
    Drop,
}

/// What a session's socket is told.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A personal event (station events reach sessions through their outlets).
    Event {
        channel: Channel,
        /// The subscription's generation, as for station events ([`Outlet::live`]).
        generation: u64,
        event_id: i64,
        frame: Frame,
    },
    /// What a channel needs before its live events: a snapshot (no ids) or replayed events (ids), in order.
    /// `drained` is told once the socket has taken them, so a catch-up never hands over more
    /// than a reader takes.
    Catchup {
        channel: Channel,
        /// The subscription it is for ([`crate::ws`]'s outlet ignores an earlier one's).
        generation: u64,
        items: Vec<(Option<i64>, Frame)>,
        drained: tokio::sync::oneshot::Sender<()>,
    },
    /// The channel is caught up through `position`: flush the live events held meanwhile that are newer.
    GoLive {
        channel: Channel,
        generation: u64,
        position: i64,
    },
    /// A message on a channel that is not an event (a `system_metrics` sample): sent if the
    /// channel is live, never held or replayed.
    Sample { channel: Channel, frame: Frame },
    /// A channel's message that is not an event but must not be missed by a subscriber (a
    /// presence notice to staff): sent when live, held while the channel catches up.
    Notice {
        channel: Channel,
        /// The watch's generation, as for events ([`Outlet::live`]).
        generation: u64,
        frame: Frame,
    },
    /// The connected user changed (role, activity): check every subscription again.
    Recheck,
    /// The user as a re-check found them, for the credentials it checked (ignored if the
    /// connection has signed in otherwise since).
    Identity {
        of: Credentials,
        actor: crate::auth::Caller,
    },
    /// A channel the identity of `of` may no longer watch (`None`: it may not stay connected — a
    /// disabled account closes with 4003, an ended sign-in session with 4001).
    Revoked {
        of: Credentials,
        channel: Option<Channel>,
        error: crate::error::Error,
    },
    /// The channel may not be joined (or no longer exists for this caller).
    Refused {
        channel: Channel,
        /// The subscription refused: a later one of the same channel stands.
        generation: u64,
        error: crate::error::Error,
    },
    /// Its outbound queue overflowed: close with 1013 so the client resumes.
    Overflowed,
    /// Its outlet needs it (see [`Attention::Poke`]).
    Attend,
    /// The server is stopping: close with 1001.
    ShutDown,
}

/// A stream of messages a connection can subscribe to. The seed endpoints each carry one; the
/// `/ws` endpoint carries several, and names them in every message (`"channel"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Every station's events.
    Stations,
    Station(StationId),
    /// The connected user's own events.
    Notifications,
    /// Live server metrics (admins).
    System,
}

impl Channel {
    pub fn name(self) -> String {
        match self {
            Channel::Stations => "stations".into(),
            Channel::Station(id) => format!("station:{id}"),
            Channel::Notifications => "notifications".into(),
            Channel::System => "system".into(),
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        match name {
            "stations" => Some(Channel::Stations),
            "notifications" => Some(Channel::Notifications),
            "system" => Some(Channel::System),
            _ => {
                // One spelling per channel: `station:01` or `station:+1` is not `station:1` (a
                // client comparing the names it gets back with the ones it sent must match).
                let id = name.strip_prefix("station:")?;
                let canonical = id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0');
                canonical
                    .then(|| id.parse().ok())
                    .flatten()
                    .map(|id| Channel::Station(StationId(id)))
            }
        }
    }
}

/// Where a subscription may see personal data (`battery_booked.user`): decided by
/// [`crate::auth::policy`] when the subscription is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersonalData {
    Hidden,
    Shown,
    ShownFor(HashSet<StationId>),
}

impl PersonalData {
    pub fn shown_for(&self, station: StationId) -> bool {
        match self {
            PersonalData::Hidden => false,
            PersonalData::Shown => true,
            PersonalData::ShownFor(stations) => stations.contains(&station),
        }
    }
}

/// Every connection registers, whatever it watches (for shutdown and counts).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub session: SessionId,
    pub to: Recipient<ToSession>,
    pub outlet: SharedOutlet,
    /// Who is connected, if anyone signed in: changes to that user reach this connection, and
    /// presence shows them.
    pub viewer: Option<Viewer>,
}

/// A connection signed in (again) in band: changes to this user now reach it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Identify {
    pub session: SessionId,
    pub viewer: Viewer,
}

/// A connection is gone: forget all it had.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session: SessionId,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub session: SessionId,
    pub channel: Channel,
    pub personal: PersonalData,
    /// Whether messages carry `"channel"` (the `/ws` endpoint) or not (the seed endpoints).
    pub tagged: bool,
    /// When `personal` began to be decided. A join and a re-check of the same channel run side by
    /// side; the registry keeps the later decision whichever message arrives last, so a join that
    /// read the station before an operator was taken off it cannot undo the re-check made after.
    pub decided: Decided,
    /// What asks for the watch.
    pub by: SubscribedBy,
}

/// Who subscribes: the session's own join, or a re-check after a change to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribedBy {
    /// A join, with the outlet generation it started as. A join runs outside the session, so its
    /// `Subscribe` can arrive after the `Unsubscribe` sent when the client left the channel at
    /// once: a generation the leave already covers makes no watch (else a ghost viewer stays).
    Join(u64),
    /// A re-check's decision: it replaces the watch, and makes none if the channel was left
    /// while the re-check ran (else an unsubscribed channel would come back, and with it a
    /// viewer who left).
    Recheck,
}

/// The order in which personal-data decisions were begun in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decided(u64);

impl Decided {
    /// Taken before the database is read for the decision.
    pub fn now() -> Decided {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Decided(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session: SessionId,
    pub channel: Channel,
    /// The newest generation the session's outlet had handed out when it left: every join of the
    /// channel begun before the leave has one at most this.
    pub joined_up_to: u64,
}

/// A user's connection joins that user's notifier.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub user: UserId,
    pub session: SessionId,
    pub to: Recipient<ToSession>,
    /// Whether messages carry `"channel"`.
    pub tagged: bool,
    /// The outlet generation of the join, which its events name ([`Outlet::live`]): a
    /// connection that signs in as someone else gets none of the last user's in flight.
    pub generation: u64,
}

/// Answered once the directory has taken every message sent to it before: a join waits for the
/// session's `Join` this way before it reads the log.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settled;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub user: UserId,
    pub session: SessionId,
}

/// Committed events, handed to the publisher right after their transaction committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub Vec<Event>);

/// Every signed-in connection re-checks its rights: after a backplane outage, during which
/// another node's changes to users could not be heard.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RecheckAll;

/// The backplane connected (`up`) or lost its connection: the publisher polls the log faster
/// while it is down, and reads everything it missed when it is back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BackplaneState {
    pub up: bool,
}

/// Station events routed together (those one drain of the publisher found in order, usually
/// one commit's), rendered, on their way to the registries: each watcher gets them at once.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PublishStations(pub Vec<Arc<Rendered>>);

/// One personal event, rendered, on its way to the notifier directory or a notifier.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<Rendered>);

/// An admin changed this user: their connections check their subscriptions again.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct UserChanged {
    pub user: UserId,
}

/// A re-check begun at `decided` found the user unchanged: the personal data their watches showed
/// before the change shows again (unless a later change is being re-checked meanwhile).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reinstate {
    pub session: SessionId,
    pub decided: Decided,
}

/// Close every connection with 1001.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ShutDownAll;

/// The notifier of a user has no sessions left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNotifier;

/// How many connections and subscriptions a registry holds.
#[derive(Message)]
#[rtype(result = "Counts")]
pub struct CountQuery;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: usize,
    pub subscriptions: usize,
}

/// A `system_metrics` sample for the `system` channel's watchers.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct SystemSample(pub Frame);

/// What the registry knows about its watchers, for `GET /api/realtime/stats`.
#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct StatsQuery;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RegistryStats {
    pub connections: usize,
    pub subscriptions: usize,
    /// Watchers of each station's own channel.
    pub stations: Vec<(StationId, usize)>,
    /// Watchers of the all-stations channel.
    pub all_stations: usize,
}

/// A signed-in viewer of a station, as presence shows them to the station's staff.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Viewer {
    pub user_id: UserId,
    pub display_name: String,
    pub role: crate::domain::values::Role,
}

/// A connection began or stopped watching a station's own channel (told by its registry, the one
/// place that knows who watches what). `Came` again for the same connection replaces what was
/// known of it: it signed in, or renewed as a user whose name or role changed.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum Viewing {
    Came {
        station: StationId,
        session: SessionId,
        viewer: Option<Viewer>,
    },
    Went {
        station: StationId,
        session: SessionId,
    },
}

/// A `viewer_joined` / `viewer_left` for the station's staff watching its `/ws` channel.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct StaffNotice {
    pub station: StationId,
    pub frame: Frame,
    /// This node's connection it tells of, which is not told of itself.
    pub except: Option<SessionId>,
}

/// One connection's presence at a station, as nodes tell each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    pub station: StationId,
    pub session: SessionId,
    pub viewer: Option<Viewer>,
    /// When it began to watch (unix ms).
    pub since: i64,
}

/// What a node tells the others about its viewers over the backplane: each change at once, and
/// its whole presence every [`super::presence::BEAT`] (in parts, so no message outgrows NATS's
/// limit), which also says the node is alive.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceWire {
    /// `entry` is `None` when the connection went.
    Change {
        incarnation: u64,
        seq: u64,
        station: StationId,
        session: SessionId,
        entry: Option<PresenceEntry>,
    },
    /// Part `part` of `parts` of the node's presence as of change `seq`.
    State {
        incarnation: u64,
        seq: u64,
        part: u32,
        parts: u32,
        entries: Vec<PresenceEntry>,
    },
}

/// A presence message as the backplane received it: another node's, or this node's own coming
/// back (`own`), the sign that NATS carries what this node says.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceHeard {
    pub node: String,
    pub wire: PresenceWire,
    pub own: bool,
}
