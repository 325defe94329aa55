//! The WebSocket endpoints of seed 001: `/ws/stations/`, `/ws/stations/{id}/`, `/ws/notifications/`.
//!
//! The upgrade always succeeds; a caller who may not connect learns why from the close code sent
//! right after it (browsers cannot read an HTTP refusal of a WebSocket). Admission — who is
//! calling, may they watch this, does the station exist — happens here, before the session
//! starts; the session then only routes. This module is the only user of `actix-web-actors`.

mod inbound;
mod session;

use std::collections::{HashMap, HashSet};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::WsResponseBuilder;
use serde_json::{json, Value};

use crate::auth::extract::{authenticate, find_token, TokenSource};
use crate::auth::{policy, Actor};
use crate::clock::now_ms;
use crate::db;
use crate::domain::ids::StationId;
use crate::domain::stations;
use crate::error::Error;
use crate::events::{log, wire, Audience};
use crate::realtime::messages::{Connect, Join, PersonalData, Scope, SessionId, Subscribe, ToSession};
use crate::realtime::Hub;
use crate::state::AppState;
use session::{close, Limits, WsSession};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/stations", web::get().to(all_stations))
        .route("/ws/stations/{id}", web::get().to(one_station))
        .route("/ws/notifications", web::get().to(notifications));
}

/// What a connection watches.
#[derive(Clone, Copy, Debug)]
enum Feed {
    Stations(Scope),
    Notifications,
}

/// A caller who may connect, and what they may see.
struct Admitted {
    actor: Option<Actor>,
    personal: PersonalData,
}

/// Why a caller may not connect: a close code and a reason.
type Refusal = (u16, String);

async fn all_stations(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> actix_web::Result<HttpResponse> {
    open(state, req, stream, Feed::Stations(Scope::AllStations)).await
}

async fn one_station(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
    id: web::Path<String>,
) -> actix_web::Result<HttpResponse> {
    // A malformed id names no station: 4004 after the upgrade, like an unknown one.
    let station = id.parse::<i64>().map(StationId).unwrap_or(StationId(-1));
    open(state, req, stream, Feed::Stations(Scope::Station(station))).await
}

async fn notifications(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> actix_web::Result<HttpResponse> {
    open(state, req, stream, Feed::Notifications).await
}

async fn open(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
    feed: Feed,
) -> actix_web::Result<HttpResponse> {
    let admission = admit(&state, &req, feed).await;
    let id = Hub::next_session_id();
    let settings = &state.settings;
    let limits = Limits {
        heartbeat: std::time::Duration::from_secs(settings.heartbeat.max(1)),
        max_message: settings.max_frame,
        rate_per_sec: settings.rate_limit,
        send_queue: settings.send_queue.max(1),
    };
    let notified_user = match (&admission, feed) {
        (Ok(admitted), Feed::Notifications) => admitted.actor.as_ref().map(|a| a.id),
        _ => None,
    };
    let session = WsSession::new(id, greeting(feed, &admission), notified_user, state.hub.clone(), limits);
    let (addr, response) = WsResponseBuilder::new(session, &req, stream)
        .frame_size(settings.max_frame)
        .start_with_addr()?;
    let to = addr.recipient::<ToSession>();
    match admission {
        Err((code, reason)) => to.do_send(ToSession::Refuse { code, reason }),
        Ok(admitted) => {
            actix_web::rt::spawn(subscribe(state.into_inner(), id, to, feed, admitted, start_of(&req)));
        }
    }
    Ok(response)
}

/// Seed 001's `connection_established`, less `last_event_id` (added when the snapshot is taken).
fn greeting(feed: Feed, admission: &Result<Admitted, Refusal>) -> Value {
    match feed {
        Feed::Stations(Scope::AllStations) => {
            json!({"type": "connection_established", "message": "Connected to all stations"})
        }
        Feed::Stations(Scope::Station(id)) => {
            json!({"type": "connection_established", "message": format!("Connected to station_{id}"), "station_id": id})
        }
        Feed::Notifications => {
            let user = admission.as_ref().ok().and_then(|a| a.actor.as_ref()).map(|a| a.id);
            json!({"type": "connection_established", "message": "Connected to notifications", "user_id": user})
        }
    }
}

fn refusal(error: Error) -> Refusal {
    let code = match error {
        Error::InvalidToken | Error::Unauthenticated => close::INVALID_TOKEN,
        Error::TokenExpired => close::TOKEN_EXPIRED,
        Error::AccountDisabled | Error::Forbidden(_) => close::FORBIDDEN,
        Error::NotFound(_) => close::UNKNOWN_STATION,
        _ => 1011,
    };
    (code, error.to_string())
}

/// A cookie is sent by the browser whatever page opened the socket, so a cookie-authenticated
/// WebSocket must come from this server's own origin or an allowed one (no cross-site hijacking).
fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) else {
        // Not a browser: nothing could have attached the cookie behind the user's back.
        return true;
    };
    let origin = origin.trim_end_matches('/');
    let info = req.connection_info();
    let own_http = format!("http://{}", info.host());
    let own_https = format!("https://{}", info.host());
    origin == own_http || origin == own_https || allowed.iter().any(|a| a.trim_end_matches('/') == origin)
}

async fn admit(state: &AppState, req: &HttpRequest, feed: Feed) -> Result<Admitted, Refusal> {
    let actor = match find_token(req).map_err(refusal)? {
        None => None,
        Some((token, source)) => {
            let actor = authenticate(state, &token).await.map_err(refusal)?;
            if source == TokenSource::Cookie && !origin_allowed(req, &state.settings.allowed_origins) {
                return Err((close::FORBIDDEN, "Cross-site WebSocket refused".into()));
            }
            Some(actor)
        }
    };
    let personal = match feed {
        Feed::Notifications => {
            if actor.is_none() {
                return Err((close::INVALID_TOKEN, "Authentication required".into()));
            }
            PersonalData::Hidden
        }
        Feed::Stations(scope) => {
            policy::may_read_stations(actor.as_ref(), state.settings.public_feeds).map_err(refusal)?;
            let who = actor.clone();
            state
                .read(move |conn| match scope {
                    Scope::Station(id) => {
                        let station = stations::load(conn, id)?;
                        let shown = policy::sees_personal_data(who.as_ref(), stations::operator_of(&station));
                        Ok(if shown {
                            PersonalData::Shown
                        } else {
                            PersonalData::Hidden
                        })
                    }
                    Scope::AllStations if policy::sees_all_personal_data(who.as_ref()) => Ok(PersonalData::Shown),
                    Scope::AllStations => {
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
                .map_err(refusal)?
        }
    };
    Ok(Admitted { actor, personal })
}

/// Where a connection starts: fresh (with a snapshot) or after an event id it already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Fresh,
    Resume(i64),
    /// `last_event_id` was given but is not an id.
    Unreadable,
}

fn start_of(req: &HttpRequest) -> Start {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok();
    match query.as_ref().and_then(|q| q.get("last_event_id")) {
        None => Start::Fresh,
        Some(raw) => raw.parse().map(Start::Resume).unwrap_or(Start::Unreadable),
    }
}

/// Events replayed per read. A chunk is handed over only once the session has taken the one
/// before — and a session whose socket is not draining takes nothing — so a long replay never
/// sits in memory at once.
const REPLAY_CHUNK: i64 = 500;

/// Registers the session, then catches it up and lets it go live. Live events published after
/// the registration are held by the session meanwhile, and those its catch-up already covered
/// are skipped there: no gap and no duplicate at the seam.
async fn subscribe(
    state: std::sync::Arc<AppState>,
    session: SessionId,
    to: actix::Recipient<ToSession>,
    feed: Feed,
    admitted: Admitted,
    start: Start,
) {
    let hub = &state.hub;
    if hub
        .registry
        .send(Connect {
            session,
            to: to.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let personal = admitted.personal.clone();
    let (registered, log_feed) = match (feed, admitted.actor.as_ref()) {
        (Feed::Stations(scope), _) => {
            let log_feed = match scope {
                Scope::AllStations => log::Feed::AllStations,
                Scope::Station(id) => log::Feed::Station(id),
            };
            (
                hub.registry
                    .send(Subscribe {
                        session,
                        scope,
                        personal: admitted.personal,
                    })
                    .await,
                log_feed,
            )
        }
        (Feed::Notifications, Some(actor)) => {
            let join = Join {
                user: actor.id,
                session,
                to: to.clone(),
            };
            (hub.directory.send(join).await, log::Feed::User(actor.id))
        }
        (Feed::Notifications, None) => return,
    };
    if registered.is_err() {
        return;
    }
    if let Err(e) = catch_up(&state, &to, feed, log_feed, &personal, start).await {
        let (code, reason) = refusal(e);
        to.do_send(ToSession::Refuse { code, reason });
    }
}

async fn catch_up(
    state: &AppState,
    to: &actix::Recipient<ToSession>,
    feed: Feed,
    log_feed: log::Feed,
    personal: &PersonalData,
    start: Start,
) -> Result<(), Error> {
    // A session that went away meanwhile refuses messages; there is nobody left to catch up.
    let gone = |_| Error::Internal(anyhow::anyhow!("session gone"));
    let latest = state.read(log::latest_id).await?;
    to.send(ToSession::Greet { last_event_id: latest })
        .await
        .map_err(gone)?;
    let resumable = match start {
        Start::Resume(after) => state.read(move |conn| log::can_resume_from(conn, after)).await?,
        _ => false,
    };
    if let (Start::Resume(mut after), true) = (start, resumable) {
        loop {
            let chunk = state
                .read(move |conn| log::after_in(conn, log_feed, after, REPLAY_CHUNK))
                .await?;
            let done = (chunk.len() as i64) < REPLAY_CHUNK;
            let items: Vec<_> = chunk
                .iter()
                .map(|event| {
                    let rendered = wire::render(event);
                    let shown = match event.audience {
                        Audience::Station(station) => personal.shown_for(station),
                        Audience::User(_) => false,
                    };
                    (Some(event.id.0), rendered.for_viewer(shown).clone())
                })
                .collect();
            if let Some(last) = chunk.last() {
                after = last.id.0;
            }
            to.send(ToSession::Catchup(items)).await.map_err(gone)?;
            if done {
                break;
            }
        }
        return to.send(ToSession::GoLive { position: after }).await.map_err(gone);
    }
    let mut items = Vec::new();
    match start {
        Start::Resume(_) => items.push((
            None,
            wire::text(&json!({
                "type": "error",
                "code": "resume_expired",
                "message": "Events after last_event_id are no longer retained; starting from a snapshot",
            })),
        )),
        Start::Unreadable => items.push((
            None,
            wire::text(&json!({
                "type": "error",
                "code": "invalid_last_event_id",
                "message": "last_event_id must be an event id; starting from a snapshot",
            })),
        )),
        Start::Fresh => {}
    }
    let (position, snapshot) = state
        .read(move |conn| {
            db::read_consistent(conn, |conn| {
                let position = log::latest_id(conn)?;
                let views = match feed {
                    Feed::Stations(Scope::Station(id)) => vec![stations::get(conn, id)?],
                    Feed::Stations(Scope::AllStations) => stations::all(conn)?,
                    Feed::Notifications => Vec::new(),
                };
                let at = now_ms();
                Ok((
                    position,
                    views
                        .iter()
                        .map(|s| wire::snapshot(s, position, at))
                        .collect::<Vec<_>>(),
                ))
            })
        })
        .await?;
    items.extend(snapshot.into_iter().map(|text| (None, text)));
    to.send(ToSession::Catchup(items)).await.map_err(gone)?;
    // A snapshot already reflects every event up to its position; a notification feed has no
    // snapshot, so every event held since the registration goes out.
    let position = match feed {
        Feed::Stations(_) => position,
        Feed::Notifications => i64::MIN,
    };
    to.send(ToSession::GoLive { position }).await.map_err(gone)
}
