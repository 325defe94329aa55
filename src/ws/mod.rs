//! The WebSocket endpoints: seed 001's `/ws/stations/`, `/ws/stations/{id}/` and
//! `/ws/notifications/` (one channel each, messages exactly as the seed documents them), and
//! `/ws`, one connection for many channels with in-band authentication and requests.
//!
//! The upgrade always succeeds; a caller who may not connect learns why from the close code sent
//! right after it (browsers cannot read an HTTP refusal of a WebSocket).
//!
//! - [`upgrade`]  the hand-over of the connection from HTTP to its session
//! - [`session`]  the `WsSession` actor
//! - [`outlet`]   the session's sending half, shared with its thread's registry
//! - [`socket`]   the session's connection: frames in, shared frames out
//! - [`channels`] joining a channel: authorization, registration, catch-up
//! - [`actions`]  requests over `/ws`
//! - [`inbound`]  fragments, rate limits

mod actions;
mod channels;
#[cfg(feature = "conformance")]
pub mod conformance;
mod frames;
mod inbound;
mod outlet;
mod session;
mod socket;
pub mod upgrade;

use std::collections::HashMap;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::extract::{authenticate, find_token, TokenSource};
use crate::auth::{origin, Caller, Identity};
use crate::domain::ids::StationId;
use crate::protocol::Greeting;
use crate::protocol::{close, close_for};
use crate::realtime::messages::Channel;
use crate::realtime::per_ip::PerIp;
use crate::realtime::Hub;
use crate::router::{Recorder, Router, Served};
use crate::state::AppState;
use channels::Start;
use session::{Kind, Limits, Opening};
use upgrade::Handover;

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes(&mut Served::new(cfg));
}

/// Every WebSocket endpoint (a GET that upgrades), declared once. Paths are matched without a
/// trailing slash (the app trims it), so seed 001's `/ws/stations/` reaches `/ws/stations`.
pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/ws", multiplexed)
        .route(Method::GET, "/ws/stations", all_stations)
        .route(Method::GET, "/ws/stations/{id}", one_station)
        .route(Method::GET, "/ws/notifications", notifications);
}

/// The WebSocket endpoints, as `(method, path)`: the channels `docs/asyncapi.json` must document.
pub fn ws_routes() -> Vec<(Method, String)> {
    Recorder::record(routes)
}

async fn all_stations(state: web::Data<AppState>, req: HttpRequest) -> actix_web::Result<HttpResponse> {
    open(state, req, Some(Channel::Stations)).await
}

async fn one_station(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> actix_web::Result<HttpResponse> {
    // A malformed id names no station: 4004 after the upgrade, like an unknown one.
    let station = id.parse::<i64>().map(StationId).unwrap_or(StationId(-1));
    open(state, req, Some(Channel::Station(station))).await
}

async fn notifications(state: web::Data<AppState>, req: HttpRequest) -> actix_web::Result<HttpResponse> {
    open(state, req, Some(Channel::Notifications)).await
}

async fn multiplexed(state: web::Data<AppState>, req: HttpRequest) -> actix_web::Result<HttpResponse> {
    open(state, req, None).await
}

/// Opens a session: a seed endpoint with its one channel, or `/ws` (`None`).
async fn open(state: web::Data<AppState>, req: HttpRequest, seed: Option<Channel>) -> actix_web::Result<HttpResponse> {
    // Not a WebSocket handshake: refused here, before anyone is authenticated.
    let mut response = HttpResponse::from(actix_http::ws::handshake(req.head())?.finish()).map_into_boxed_body();
    let settings = &state.settings;
    let limits = Limits {
        heartbeat: std::time::Duration::from_secs(settings.heartbeat.max(1)),
        max_message: settings.max_frame,
        rate_per_sec: settings.rate_limit,
        send_queue: settings.send_queue.max(1),
        close_linger: std::time::Duration::from_secs(settings.close_linger),
    };
    let place = match req.peer_addr() {
        Some(peer) => PerIp::take(&state.hub.per_ip, peer.ip(), settings.max_connections_per_ip),
        None => Ok(None),
    };
    // Over the limit: refused after the upgrade like every refusal, before any token is checked.
    let admitted = match &place {
        Ok(_) => Some(admit(&state, &req).await),
        Err(_) => None,
    };
    let (kind, identity) = match admitted {
        None => (
            Kind::Refused {
                code: close::TRY_AGAIN_LATER,
                reason: "Too many connections from this address".into(),
            },
            None,
        ),
        Some(Err((code, reason))) => (Kind::Refused { code, reason }, None),
        Some(Ok(identity)) => match seed {
            Some(channel) => (Kind::Seed { channel }, identity),
            None => (Kind::Multiplexed, identity),
        },
    };
    let greeting = greeting(seed, identity.as_ref().map(|i| &i.actor));
    let opening = Opening {
        id: Hub::next_session_id(),
        state: state.clone().into_inner(),
        kind,
        greeting,
        identity,
        limits,
        start: start_of(&req),
        place: place.ok().flatten(),
    };
    response
        .extensions_mut()
        .insert(Handover::new(move |io, already_read| opening.start(io, already_read)));
    Ok(response)
}

/// `connection_established`, less `last_event_id` (added once the session is registered).
fn greeting(seed: Option<Channel>, identity: Option<&Caller>) -> Greeting {
    let (message, station_id, user_id) = match seed {
        Some(Channel::Stations) => ("Connected to all stations", None, None),
        // "Connected to station_1": the id is appended.
        Some(Channel::Station(id)) => ("Connected to station", Some(id), None),
        Some(Channel::Notifications) => ("Connected to notifications", None, identity.map(|a| a.id)),
        Some(Channel::System) | None => ("Connected", None, None),
    };
    Greeting {
        message,
        station_id,
        user_id,
    }
}

fn start_of(req: &HttpRequest) -> Start {
    // A query string that does not parse carries no usable last_event_id: start fresh.
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok();
    match query.as_ref().and_then(|q| q.get("last_event_id")) {
        None => Start::Fresh,
        Some(raw) => raw.parse().map(Start::Resume).unwrap_or(Start::Unreadable),
    }
}

/// Who is connecting, from the token presented at connect (if any). A bad or expired token is
/// refused even where anonymous callers are welcome, rather than treated as anonymous.
async fn admit(state: &AppState, req: &HttpRequest) -> Result<Option<Identity>, (u16, String)> {
    let Some((token, source)) = find_token(req).map_err(|e| close_for(&e))? else {
        return Ok(None);
    };
    let (actor, credentials) = authenticate(state, &token).await.map_err(|e| close_for(&e))?;
    if source == TokenSource::Cookie && !origin::websocket_allowed(req, &state.settings.allowed_origins) {
        return Err((close::FORBIDDEN, "Cross-site WebSocket refused".into()));
    }
    Ok(Some(Identity { actor, credentials }))
}
