//! Joining a channel, outside the session actor: may this caller watch it (the policy), register
//! it with the registry or the user's notifier, then catch it up — a snapshot, or a replay from
//! the event log after `last_event_id` — and let it go live. The seam between catch-up and live is
//! closed by the session, which holds live events meanwhile and skips those already covered.

use std::collections::HashSet;
use std::sync::Arc;

use actix::Recipient;
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::outlet::CATCHUP_CHUNK;
use crate::auth::extract::load_caller;
use crate::auth::{policy, Caller, Identity};
use crate::clock::now_ms;
use crate::db;
use crate::domain::ids::{StationId, UserId};
use crate::domain::stations;
use crate::domain::values::Role;
use crate::error::{Error, Result};
use crate::events::wire::{self, Frame};
use crate::events::{log, Audience};
use crate::protocol::ServerMessage;
use crate::realtime::messages::{
    Channel, Connect, Decided, PersonalData, Reinstate, SessionId, Settled, SharedOutlet, Subscribe, SubscribedBy,
    ToSession, Viewer,
};
use crate::realtime::snapshots::KeptStation;
use crate::state::AppState;

/// Where a channel starts: fresh (with a snapshot) or after an event id the client already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Fresh,
    Resume(i64),
    /// `last_event_id` was given but is not an id.
    Unreadable,
}

/// Events replayed per read: one chunk, handed over once the socket has taken the one before.
const REPLAY_CHUNK: i64 = CATCHUP_CHUNK as i64;

/// Registers a new connection; returns the newest event id, for `connection_established`.
pub fn register(
    state: &AppState,
    session: SessionId,
    to: Recipient<ToSession>,
    outlet: SharedOutlet,
    actor: Option<&Caller>,
) -> i64 {
    state.hub.registry.local().do_send(Connect {
        session,
        to,
        outlet,
        viewer: actor.map(viewer),
    });
    state.hub.latest_event_id()
}

/// A signed-in caller as presence shows them.
pub fn viewer(actor: &Caller) -> Viewer {
    Viewer {
        user_id: actor.id,
        display_name: actor.display_name.clone(),
        role: actor.role,
    }
}

/// The channels a caller is subscribed to on sign-in: their notifications, and an operator's
/// own stations.
pub async fn automatic(state: &AppState, actor: &Caller) -> Result<Vec<Channel>> {
    let who = actor.clone();
    let operated = state.read(move |conn| stations::operated_by(conn, Some(&who))).await?;
    let mut channels = vec![Channel::Notifications];
    channels.extend(
        operated
            .into_iter()
            .filter(|(_, operator)| policy::sees_personal_data(Some(actor), *operator))
            .map(|(id, _)| Channel::Station(id)),
    );
    Ok(channels)
}

/// May this caller watch this channel, and where do they see personal data?
async fn authorize(state: &AppState, actor: Option<&Caller>, channel: Channel) -> Result<PersonalData> {
    match channel {
        Channel::Notifications => {
            actor.ok_or(Error::Unauthenticated)?;
            Ok(PersonalData::Hidden)
        }
        Channel::System => {
            policy::require_admin(actor.ok_or(Error::Unauthenticated)?)?;
            Ok(PersonalData::Hidden)
        }
        Channel::Stations if !policy::may_see_personal_data_somewhere(actor) => {
            // No need to ask the database which stations they operate. (A station's own channel
            // still reads the station: an unknown one is refused before anything is registered.)
            policy::may_read_stations(actor, state.settings.public_feeds)?;
            Ok(PersonalData::Hidden)
        }
        Channel::Station(_) | Channel::Stations => {
            policy::may_read_stations(actor, state.settings.public_feeds)?;
            let who = actor.cloned();
            state
                .read(move |conn| match channel {
                    Channel::Station(id) => Ok(personal_at(
                        who.as_ref(),
                        stations::operator_of(&stations::load(conn, id)?),
                    )),
                    _ if policy::sees_all_personal_data(who.as_ref()) => Ok(PersonalData::Shown),
                    _ => {
                        let operated: HashSet<StationId> = stations::operated_by(conn, who.as_ref())?
                            .into_iter()
                            .filter(|(_, operator)| policy::sees_personal_data(who.as_ref(), *operator))
                            .map(|(id, _)| id)
                            .collect();
                        Ok(if operated.is_empty() {
                            PersonalData::Hidden
                        } else {
                            PersonalData::ShownFor(operated)
                        })
                    }
                })
                .await
        }
    }
}

/// A fresh subscription to one station: may the caller watch it, and its snapshot — as kept
/// from the station's last opening when nothing can have changed it since
/// ([`StationSnapshots`](crate::realtime::snapshots::StationSnapshots)), else in one database
/// read. The snapshot is taken before the registration, so [`catch_up`] takes what was routed in
/// between from the log. (Opening a station's feed is what a dashboard does on every load: each
/// hop to the database is a thread hand-off in the connection's critical path.)
async fn authorize_with_snapshot(
    state: &AppState,
    actor: Option<&Caller>,
    id: StationId,
) -> Result<(PersonalData, Snapshot)> {
    policy::may_read_stations(actor, state.settings.public_feeds)?;
    // Where who operates the station decides what the caller sees, it is read, never taken as
    // kept: a station handed over on another node is forgotten here only once that node's word
    // arrives.
    let operator_decides = policy::personal_data_turns_on_operator(actor);
    let kept = match state.hub.stations.get(id).filter(|_| !operator_decides) {
        Some(kept) => kept,
        None => {
            let epoch = state.hub.stations.epoch();
            let (revision, read) = state
                .read(move |conn| {
                    db::read_consistent(conn, |conn| {
                        let station = stations::StationView::new(stations::load(conn, id)?)?;
                        let (position, revision) = stations::revision(conn)?;
                        Ok((revision, KeptStation { position, station }))
                    })
                })
                .await?;
            state.hub.metrics.station_snapshot_reads.inc();
            state.hub.stations.keep(epoch, revision, read)
        }
    };
    let personal = personal_at(actor, kept.station.operator_id);
    let text = wire::snapshot(&kept.station, kept.position, now_ms());
    Ok((
        personal,
        Snapshot {
            position: kept.position,
            text,
        },
    ))
}

/// Where a caller sees personal data of one station's events: there, or nowhere.
fn personal_at(who: Option<&Caller>, operator: Option<UserId>) -> PersonalData {
    if policy::sees_personal_data(who, operator) {
        PersonalData::Shown
    } else {
        PersonalData::Hidden
    }
}

/// A station's snapshot as of an event id.
struct Snapshot {
    position: i64,
    text: ByteString,
}

impl Snapshot {
    /// The station as loaded, as of the newest event: in one consistent read with the load.
    fn read(conn: &mut db::DbConn, station: crate::db::models::Station) -> Result<Snapshot> {
        let position = log::latest_id(conn)?;
        let text = wire::snapshot(&stations::StationView::new(station)?, position, now_ms());
        Ok(Snapshot { position, text })
    }
}

/// One channel of one session on its way in.
pub struct Joining {
    pub session: SessionId,
    pub to: Recipient<ToSession>,
    /// Who the connection is signed in as; the join asks for the caller as they are now, as a
    /// REST request would, never as they were when the connection signed in.
    pub identity: Option<Identity>,
    pub channel: Channel,
    /// The outlet's generation of this subscription, named by everything the catch-up sends.
    pub generation: u64,
    /// Whether messages carry `"channel"` (`/ws`).
    pub tagged: bool,
    pub start: Start,
    /// Sent before the channel's first message, and only once the channel is allowed (a seed
    /// endpoint's `connection_established`): a connection refused here gets its Close as its only
    /// frame.
    pub preface: Option<Frame>,
    /// Whether a `/ws` subscription says `subscribed` first: not when a channel that fell behind
    /// joins again to catch up.
    pub announce: bool,
}

/// Authorizes, registers and catches up one channel of one session.
pub async fn join(state: Arc<AppState>, joining: Joining) {
    let Joining {
        session,
        ref to,
        ref identity,
        channel,
        generation,
        tagged,
        start,
        ref preface,
        announce,
    } = joining;
    let outcome = async {
        let decided = Decided::now();
        let actor = match identity {
            Some(identity) => Some(load_caller(&state, identity.credentials).await?),
            None => None,
        };
        let (personal, read_ahead) = match (channel, start) {
            (Channel::Station(id), Start::Fresh) => {
                let (personal, snapshot) = authorize_with_snapshot(&state, actor.as_ref(), id).await?;
                (personal, Some(snapshot))
            }
            _ => (authorize(&state, actor.as_ref(), channel).await?, None),
        };
        let registered = match (channel, actor.as_ref()) {
            // The session sent its Join itself, in order with its Leave (a Join from here could
            // come after the Leave of a client that left or hung up at once, and stay). The
            // directory takes this after it: from then on the user's events reach the session,
            // so the log is read only after.
            (Channel::Notifications, Some(_)) => state.hub.directory.send(Settled).await,
            _ => {
                let subscribe = Subscribe {
                    session,
                    channel,
                    personal: personal.clone(),
                    tagged,
                    decided,
                    by: SubscribedBy::Join(generation),
                };
                state.hub.registry.local().send(subscribe).await
            }
        };
        registered.map_err(|e| Error::Internal(anyhow::anyhow!("hub unavailable: {e}")))?;
        let wanted = Wanted {
            channel,
            generation,
            tagged,
            start,
            preface: preface.clone(),
            announce,
            read_ahead,
        };
        catch_up(&state, to, actor.as_ref(), &personal, wanted).await
    };
    if let Err(error) = outcome.await {
        to.do_send(ToSession::Refused {
            channel,
            generation,
            error,
        });
    }
}

fn feed_of(channel: Channel, actor: Option<&Caller>) -> Option<log::Feed> {
    match channel {
        Channel::Stations => Some(log::Feed::AllStations),
        Channel::Station(id) => Some(log::Feed::Station(id)),
        Channel::Notifications => actor.map(|a| log::Feed::User(a.id)),
        Channel::System => None,
    }
}

/// What a catch-up is for: which channel, in which form, from where.
struct Wanted {
    channel: Channel,
    generation: u64,
    tagged: bool,
    start: Start,
    preface: Option<Frame>,
    announce: bool,
    /// The snapshot, when it was read with the authorization (before the registration).
    read_ahead: Option<Snapshot>,
}

async fn catch_up(
    state: &AppState,
    to: &Recipient<ToSession>,
    actor: Option<&Caller>,
    personal: &PersonalData,
    wanted: Wanted,
) -> Result<()> {
    let Wanted {
        channel,
        generation,
        tagged,
        start,
        preface,
        announce,
        read_ahead,
    } = wanted;
    let name = channel.name();
    let form = |text: ByteString| Frame::text(if tagged { wire::tagged(&text, &name) } else { text }.as_ref());
    let mut items: Vec<(Option<i64>, Frame)> = preface.into_iter().map(|frame| (None, frame)).collect();
    if tagged && announce {
        items.push((None, ServerMessage::Subscribed { channel: name.clone() }.frame()));
    }
    let feed = feed_of(channel, actor);
    let resumable = match (start, feed) {
        (Start::Resume(after), Some(_)) => state.read(move |conn| log::can_resume_from(conn, after)).await?,
        _ => false,
    };
    let replaying = Replay {
        channel,
        generation,
        tagged,
        personal,
    };
    if let (Start::Resume(after), true, Some(feed)) = (start, resumable, feed) {
        state.hub.metrics.resume_replays.inc();
        return match replaying.after(state, to, feed, items, after).await? {
            Some(last) => go_live(to, channel, generation, last).await,
            None => Ok(()),
        };
    }
    match start {
        Start::Resume(_) if feed.is_some() => items.push((
            None,
            form(
                ServerMessage::error(
                    "resume_expired",
                    "Events after last_event_id are no longer retained; starting from a snapshot",
                )
                .text(),
            ),
        )),
        Start::Unreadable => items.push((
            None,
            form(
                ServerMessage::error(
                    "invalid_last_event_id",
                    "last_event_id must be an event id; starting from a snapshot",
                )
                .text(),
            ),
        )),
        _ => {}
    }
    // Registered already: what the connection gets before its live events must reflect every
    // event committed before now, since the registry holds only those after. The shared
    // all-stations snapshot may be a little older than that; the events since come from the log.
    let mut behind = false;
    let (position, snapshot): (i64, Arc<[Frame]>) = match channel {
        Channel::Stations => {
            let needed = state.read(stations::revision).await?;
            let snapshot = state
                .snapshots
                .at_least(&state.pool, &state.hub.metrics, needed)
                .await?;
            behind = snapshot.position < needed.0;
            (snapshot.position, snapshot.frames(tagged))
        }
        Channel::Station(id) => {
            let Snapshot { position, text } = match read_ahead {
                Some(snapshot) => {
                    // Registered now: every event of the station routed before this is in the
                    // log, and every one routed later reaches the registry and is held.
                    behind = state.hub.stations.routed_after(id, snapshot.position);
                    snapshot
                }
                None => {
                    state
                        .read(move |conn| {
                            db::read_consistent(conn, |conn| {
                                let station = stations::load(conn, id)?;
                                Snapshot::read(conn, station)
                            })
                        })
                        .await?
                }
            };
            (position, Arc::from([form(text)]))
        }
        // No snapshot: every event held since the registration passes.
        Channel::Notifications | Channel::System => (i64::MIN, Arc::from([])),
    };
    let mut rest = snapshot.iter();
    loop {
        let room = CATCHUP_CHUNK.saturating_sub(items.len()).max(1);
        items.extend(rest.by_ref().take(room).map(|frame| (None, frame.clone())));
        let last = items.len() < CATCHUP_CHUNK;
        if !hand_over(to, channel, generation, std::mem::take(&mut items)).await {
            return Ok(());
        }
        if last {
            break;
        }
    }
    let position = match (behind, feed) {
        (true, Some(feed)) => match replaying.after(state, to, feed, Vec::new(), position).await? {
            Some(last) => last,
            None => return Ok(()),
        },
        _ => position,
    };
    go_live(to, channel, generation, position).await
}

/// Events of a feed replayed from the log to one subscription, in the form it speaks.
struct Replay<'a> {
    channel: Channel,
    generation: u64,
    tagged: bool,
    personal: &'a PersonalData,
}

impl Replay<'_> {
    /// Replays the feed's events after `after`, behind `items`, a chunk at a time at the reader's
    /// pace; returns the newest id handed over, or `None` when the subscription went away.
    async fn after(
        &self,
        state: &AppState,
        to: &Recipient<ToSession>,
        feed: log::Feed,
        mut items: Vec<(Option<i64>, Frame)>,
        mut after: i64,
    ) -> Result<Option<i64>> {
        let name = self.channel.name();
        loop {
            let chunk = state
                .read(move |conn| log::after_in(conn, feed, after, REPLAY_CHUNK))
                .await?;
            let done = (chunk.len() as i64) < REPLAY_CHUNK;
            for event in &chunk {
                let rendered = wire::render(event);
                let shown = match event.audience {
                    Audience::Station(station) => self.personal.shown_for(station),
                    Audience::User(_) => false,
                };
                let text = rendered.for_viewer(shown);
                let frame = if self.tagged {
                    Frame::text(&wire::tagged(text, &name))
                } else {
                    Frame::text(text)
                };
                items.push((Some(event.id.0), frame));
            }
            if let Some(last) = chunk.last() {
                after = last.id.0;
            }
            if !hand_over(to, self.channel, self.generation, std::mem::take(&mut items)).await {
                return Ok(None);
            }
            if done {
                return Ok(Some(after));
            }
        }
    }
}

/// Hands one chunk of a catch-up to the session and waits until its socket has taken it, so a
/// snapshot or a replay of any size goes out at the pace the reader reads. False when the session
/// or the channel went away meanwhile: nobody is left to catch up, and nothing is to be said.
async fn hand_over(
    to: &Recipient<ToSession>,
    channel: Channel,
    generation: u64,
    items: Vec<(Option<i64>, Frame)>,
) -> bool {
    let (drained, taken) = oneshot::channel();
    to.send(ToSession::Catchup {
        channel,
        generation,
        items,
        drained,
    })
    .await
    .is_ok()
        && taken.await.is_ok()
}

/// The channel is caught up through `position`.
async fn go_live(to: &Recipient<ToSession>, channel: Channel, generation: u64, position: i64) -> Result<()> {
    // A session that went away meanwhile refuses the message, and there is nothing to do.
    let _ = to
        .send(ToSession::GoLive {
            channel,
            generation,
            position,
        })
        .await;
    Ok(())
}

/// After a change to the connected user (an admin's, or the end of a sign-in session): an account
/// that is disabled, or whose session ended, loses the connection; otherwise the session takes the
/// user as they now are, keeps the channels the policy still allows (with personal data re-decided)
/// and loses the others. Every answer names the credentials it checked, so a connection that has
/// signed in as someone else meanwhile ignores it.
pub async fn recheck(
    state: Arc<AppState>,
    session: SessionId,
    to: Recipient<ToSession>,
    identity: Identity,
    channels: Vec<Channel>,
    tagged: bool,
) {
    let of = identity.credentials;
    let decided = Decided::now();
    let actor = match load_caller(&state, of).await {
        Ok(actor) => actor,
        Err(error @ (Error::AccountDisabled | Error::InvalidToken)) => {
            return to.do_send(ToSession::Revoked {
                of,
                channel: None,
                error,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-check a changed user's subscriptions");
            return;
        }
    };
    to.do_send(ToSession::Identity {
        of,
        actor: actor.clone(),
    });
    // What a caller may watch follows from their role alone — except an operator's, which also
    // follows from which stations they operate. Unchanged and not an operator: every channel still
    // stands as it was decided and shows again what the change hid, and no station is read again
    // (while NATS is down every signed-in connection re-checks each second; that must not become a
    // read per channel).
    if actor == identity.actor && actor.role != Role::Operator {
        state.hub.registry.local().do_send(Reinstate { session, decided });
        return;
    }
    for channel in channels {
        match authorize(&state, Some(&actor), channel).await {
            Ok(personal) if channel != Channel::Notifications => {
                // Subscribing again replaces the watch, with personal data decided anew.
                let again = Subscribe {
                    session,
                    channel,
                    personal,
                    tagged,
                    decided,
                    by: SubscribedBy::Recheck,
                };
                if state.hub.registry.local().send(again).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => to.do_send(ToSession::Revoked {
                of,
                channel: Some(channel),
                error,
            }),
        }
    }
}
