//! Every message the realtime actors exchange. Actors route; none of these carries a database
//! handle or asks a permission question — visibility is decided before a subscription is made.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::domain::ids::{StationId, UserId};
use crate::events::wire::Rendered;
use crate::events::Event;

/// Identifies one WebSocket connection for as long as the process runs.
pub type SessionId = u64;

/// What a session's socket is told.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A live event (already rendered for this session's audience).
    Event { event_id: i64, text: ByteString },
    /// The subscription is in place: send `connection_established` with the newest event id.
    Greet { last_event_id: i64 },
    /// What the client needs before live events: a snapshot (no ids) or replayed events (ids), in order.
    Catchup(Vec<(Option<i64>, ByteString)>),
    /// Caught up through `position`: flush the live events held meanwhile that are newer.
    GoLive { position: i64 },
    /// The session could not be admitted; close with this code (sent after the upgrade).
    Refuse { code: u16, reason: String },
    /// Its outbound queue overflowed: close with 1013 so the client resumes.
    Overflowed,
    /// The server is stopping: close with 1001.
    ShutDown,
}

/// Which stations' events a subscription receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    AllStations,
    Station(StationId),
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
    pub scope: Scope,
    pub personal: PersonalData,
}

/// A user's connection joins that user's notifier.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub user: UserId,
    pub session: SessionId,
    pub to: Recipient<ToSession>,
}

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

/// One event, rendered, on its way to the registry or a notifier.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<Rendered>);

/// Close every connection with 1001.
#[derive(Message)]
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
