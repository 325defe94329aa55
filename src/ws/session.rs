//! The `WsSession` actor: one per WebSocket connection, owning its socket. It speaks the protocol
//! (heartbeat, close handshake, fragments, size and rate limits); its [`Outlet`] keeps each
//! channel's stream in order. Work that needs the database (checking a token, joining a channel, an
//! action) runs in tasks from [`super::channels`] and [`super::actions`]; the session only routes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, Frame as WsFrame, OpCode, ProtocolError};
use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::actions;
use super::channels::{self, Start};
use super::frames::{self, Incoming};
use super::inbound::{RateLimiter, Reassembly, Verdict};
use super::outlet::{Need, Outlet};
use super::socket::{self, Socket};
use crate::auth::extract::{authenticate, load_caller};
use crate::auth::tokens::Credentials;
use crate::auth::Identity;
use crate::clock::{iso, now_ms};
use crate::error::Error;
use crate::error::ErrorBody;
use crate::events::wire::Frame;
use crate::protocol::{close, close_for, ClientMessage, Greeting, Inbound, ServerMessage};
use crate::realtime::messages::{
    Channel, Disconnect, Identify, Join, Leave, SessionId, SharedOutlet, ToSession, Unsubscribe,
};
use crate::realtime::per_ip::Place;
use crate::realtime::registry::StationRegistry;
use crate::state::AppState;

/// A peer silent for this many heartbeats is dropped.
const MISSED_HEARTBEATS: u32 = 3;
/// On `/ws`, how long before a token's `exp` the client is told `token_expiring` (at most).
const TOKEN_EXPIRING_LEAD_SECS: u64 = 60;

/// The limits a session enforces, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub heartbeat: Duration,
    pub max_message: usize,
    pub rate_per_sec: u32,
    pub send_queue: usize,
    /// How long a closing session waits for its Close frame to go out and the client to hang up
    /// (`SWAPCAST_CLOSE_LINGER`); a client that hangs up ends it sooner.
    pub close_linger: Duration,
}

/// Which protocol the connection speaks.
pub enum Kind {
    /// A seed-001 endpoint: one channel, messages without `"channel"`, only `ping` from the client.
    Seed { channel: Channel },
    /// `/ws`: many channels, in-band authentication, requests.
    Multiplexed,
    /// Not admitted: the session only sends this close code (after the upgrade, so browsers can
    /// read it) and stops.
    Refused { code: u16, reason: String },
}

pub struct WsSession {
    id: SessionId,
    state: Arc<AppState>,
    kind: Kind,
    /// `connection_established`, less `last_event_id`.
    greeting: Greeting,
    identity: Option<Identity>,
    limits: Limits,
    last_heard: Instant,
    fragments: Reassembly,
    limiter: RateLimiter,
    /// Where the first channels start (`?last_event_id=`).
    start: Start,
    /// Shared with this thread's registry, which writes live events through it.
    out: Arc<Mutex<Outlet>>,
    /// This thread's registry.
    registry: Addr<StationRegistry>,
    /// The client's side has ended.
    peer_gone: bool,
    /// The close at the token's `exp` (4002) and, on `/ws`, the `token_expiring` before it.
    expiry: Vec<SpawnHandle>,
    /// The `exp` a `token_expiring` was sent for: a renewal with a token that expires no later is
    /// not warned about again (a client with no fresher token would otherwise be told at once,
    /// renew with the same token, and be told again, in a loop).
    warned_for: Option<i64>,
    /// An in-band `authenticate` is being checked: what the client sends meanwhile waits, so it
    /// is handled as the identity the client asked for (a `subscribe` sent right after
    /// `authenticate` must not be made anonymously, then dropped by the sign-in).
    signing_in: bool,
    /// Counts sign-ins begun: one that a later one overtook answers nothing and subscribes to
    /// nothing (its user's automatic channels are not the connection's any more).
    sign_ins: u64,
    /// Messages that arrived while signing in, in order.
    after_sign_in: VecDeque<String>,
    /// Held for the connection's life (see [`crate::realtime::per_ip`]).
    _place: Option<Place>,
}

/// Messages held while an `authenticate` is checked; the rate limit keeps this far off.
const HELD_WHILE_SIGNING_IN: usize = 256;

type Ctx = Context<WsSession>;

/// What a session is made of before it has a socket: the handshake decides it, the upgrade hands
/// over the connection.
pub struct Opening {
    pub id: SessionId,
    pub state: Arc<AppState>,
    pub kind: Kind,
    pub greeting: Greeting,
    pub identity: Option<Identity>,
    pub limits: Limits,
    pub start: Start,
    /// This connection's place under `SWAPCAST_MAX_CONNECTIONS_PER_IP`, given back with the session.
    pub place: Option<Place>,
}

impl Opening {
    /// Starts the session on this worker, on the connection the upgrade handed over.
    pub fn start(self, io: TcpStream, already_read: BytesMut) {
        let (socket, inbound) = Socket::split(io, already_read, self.limits.max_message);
        let out = Outlet::new(socket, self.limits.send_queue);
        WsSession::create(move |ctx| {
            ctx.add_stream(inbound);
            WsSession::new(self, out)
        });
    }
}

impl WsSession {
    fn new(opening: Opening, out: Outlet) -> WsSession {
        let registry = opening.state.hub.registry.local();
        let limits = opening.limits;
        WsSession {
            id: opening.id,
            state: opening.state,
            kind: opening.kind,
            greeting: opening.greeting,
            identity: opening.identity,
            limits,
            last_heard: Instant::now(),
            fragments: Reassembly::new(limits.max_message),
            limiter: RateLimiter::new(limits.rate_per_sec, Instant::now()),
            start: opening.start,
            out: Arc::new(Mutex::new(out)),
            registry,
            peer_gone: false,
            expiry: Vec::new(),
            warned_for: None,
            signing_in: false,
            sign_ins: 0,
            after_sign_in: VecDeque::new(),
            _place: opening.place,
        }
    }

    fn out(&self) -> MutexGuard<'_, Outlet> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a frame (or queues it behind those the kernel has not taken).
    fn send(&mut self, frame: Bytes, ctx: &mut Ctx) {
        self.out().send(frame);
        self.attend(ctx);
    }

    /// Does what the outlet needs of the session: stop on a broken connection, close a slow
    /// consumer, wait for the kernel, stop once a close handshake is done.
    fn attend(&mut self, ctx: &mut Ctx) {
        let need = self.out().attend(self.peer_gone);
        match need {
            Need::Stop => ctx.stop(),
            Need::CloseOverflowed => self.overflowed(ctx),
            Need::WaitForKernel => {
                let writable = self.out().socket().writable();
                ctx.spawn(writable.into_actor(self).map(|(), this, ctx| {
                    this.out().writable();
                    this.attend(ctx);
                }));
            }
            Need::Rejoin(due) => {
                for (channel, generation, after) in due {
                    self.catch_up_from_log(channel, generation, after, ctx);
                }
                self.attend(ctx);
            }
            Need::Nothing => {}
        }
    }

    /// The endpoint, as a metrics label (never a station id: labels must stay few).
    fn endpoint(&self) -> &'static str {
        match self.kind {
            Kind::Seed {
                channel: Channel::Stations,
            } => "stations",
            Kind::Seed {
                channel: Channel::Station(_),
            } => "station",
            Kind::Seed { .. } => "notifications",
            Kind::Multiplexed | Kind::Refused { .. } => "ws",
        }
    }

    /// Closes a session whose outbound queue overflowed.
    fn overflowed(&mut self, ctx: &mut Ctx) {
        self.close_slow(ctx, "Send queue overflow; resume with last_event_id");
    }

    /// Closes a slow consumer (1013): what it has not begun to receive is dropped, so the Close
    /// frame is next; the client resumes with `last_event_id`.
    fn close_slow(&mut self, ctx: &mut Ctx, why: &str) {
        self.state.hub.metrics.slow_consumer_closes.inc();
        let reason = CloseReason {
            code: CloseCode::Other(close::TRY_AGAIN_LATER),
            description: Some(why.into()),
        };
        self.close_as(Some(reason), true, ctx);
    }

    /// Whether the connection is signed in with these credentials now.
    fn holds(&self, credentials: Credentials) -> bool {
        self.identity.as_ref().is_some_and(|i| i.credentials == credentials)
    }

    fn tagged(&self) -> bool {
        matches!(self.kind, Kind::Multiplexed)
    }

    fn close(&mut self, ctx: &mut Ctx, code: CloseCode, reason: &str) {
        let reason = CloseReason {
            code,
            description: Some(reason.to_owned()),
        };
        self.close_as(Some(reason), false, ctx);
    }

    /// Sends Close after what is queued (after the frame under way only, if `drop_unsent`), then
    /// FIN; the session ends when the client hangs up too, or after the close linger.
    fn close_as(&mut self, reason: Option<CloseReason>, drop_unsent: bool, ctx: &mut Ctx) {
        if self.out().close(reason, drop_unsent) {
            ctx.run_later(self.limits.close_linger, |_, ctx| ctx.stop());
        }
        self.attend(ctx);
    }

    fn reply(&mut self, ctx: &mut Ctx, message: ServerMessage) {
        self.send(message.frame().bytes().clone(), ctx);
    }

    /// Starts catching a channel up; its live events are held until the catch-up is out.
    fn join(&mut self, channel: Channel, start: Start, ctx: &mut Ctx) {
        self.join_with(channel, start, None, ctx);
    }

    /// [`join`](Self::join), with a message to send before the channel's first (a seed
    /// endpoint's greeting, sent only if the channel may be joined).
    fn join_with(&mut self, channel: Channel, start: Start, preface: Option<Frame>, ctx: &mut Ctx) {
        let joined = self.out().join(channel);
        let Some(generation) = joined else {
            if self.tagged() {
                self.reply(
                    ctx,
                    ServerMessage::Subscribed {
                        channel: channel.name(),
                    },
                );
            }
            return;
        };
        self.spawn_join(channel, generation, start, preface, true, ctx);
    }

    /// A channel whose reader fell behind a burst of live events catches up from the log, as a
    /// resume would, at the reader's pace — joined again quietly (no second `subscribed`), as the
    /// account is now. Only a reader that stops is closed (1013, by the heartbeat's check).
    fn catch_up_from_log(&mut self, channel: Channel, generation: u64, after: i64, ctx: &mut Ctx) {
        self.spawn_join(channel, generation, Start::Resume(after), None, false, ctx);
    }

    /// Authorizes, registers and catches up one subscription of this session, off the actor.
    fn spawn_join(
        &mut self,
        channel: Channel,
        generation: u64,
        start: Start,
        preface: Option<Frame>,
        announce: bool,
        ctx: &mut Ctx,
    ) {
        if let (Channel::Notifications, Some(identity)) = (channel, &self.identity) {
            // From here, in order with the Leave that ends it (see `channels::join`).
            self.state.hub.directory.do_send(Join {
                user: identity.actor.id,
                session: self.id,
                to: ctx.address().recipient(),
                tagged: self.tagged(),
                generation,
            });
        }
        let joining = channels::Joining {
            session: self.id,
            to: ctx.address().recipient(),
            identity: self.identity.clone(),
            channel,
            generation,
            tagged: self.tagged(),
            start,
            preface,
            announce,
        };
        actix_web::rt::spawn(channels::join(self.state.clone(), joining));
    }

    /// The one way a subscription ends — unsubscribed, refused, revoked, or the connection gone:
    /// the outlet forgets the channel and the registry (or, for notifications, the directory)
    /// forgets the watch. Both forgettings are idempotent, so a channel refused before it was
    /// registered leaves the same way.
    fn leave(&mut self, channel: Channel) {
        let joined_up_to = {
            let mut out = self.out();
            if !out.leave(channel) {
                return;
            }
            out.generations()
        };
        match (channel, &self.identity) {
            (Channel::Notifications, Some(identity)) => self.state.hub.directory.do_send(Leave {
                user: identity.actor.id,
                session: self.id,
            }),
            _ => self.registry.do_send(Unsubscribe {
                session: self.id,
                channel,
                joined_up_to,
            }),
        }
    }

    /// Counts one inbound frame against the rate limit — a ping, a pong, a binary or a text
    /// message alike (a fragmented message counts once, when it is complete: its size is bounded
    /// anyway) — and says whether it may be handled.
    fn within_rate(&mut self, ctx: &mut Ctx) -> bool {
        match self.limiter.hit(Instant::now()) {
            Verdict::Allow => true,
            Verdict::Limit { tell } => {
                self.state.hub.metrics.rate_limited.inc();
                if tell {
                    self.reply(
                        ctx,
                        ServerMessage::error("rate_limited", "Too many messages; slow down"),
                    );
                }
                false
            }
            Verdict::Close => {
                self.close(ctx, CloseCode::Policy, "Message rate far over the limit");
                false
            }
        }
    }

    /// One complete text message from the client.
    fn on_text(&mut self, raw: &str, ctx: &mut Ctx) {
        if self.signing_in {
            if self.after_sign_in.len() >= HELD_WHILE_SIGNING_IN {
                return self.reply(
                    ctx,
                    ServerMessage::error("rate_limited", "Too many messages while signing in"),
                );
            }
            self.after_sign_in.push_back(raw.to_owned());
            return;
        }
        let message = match Inbound::parse(raw) {
            Inbound::Message(message) => message,
            Inbound::NotJson => return self.reply(ctx, seed_error("Invalid JSON".into())),
            Inbound::Unknown(kind) => return self.unknown(&kind, ctx),
        };
        match (message, &self.kind) {
            (_, Kind::Refused { .. }) => {}
            (ClientMessage::Ping { timestamp }, _) => {
                let timestamp = timestamp
                    .filter(|t| !t.is_null())
                    .unwrap_or_else(|| Value::from(iso(now_ms())));
                self.reply(ctx, ServerMessage::Pong { timestamp });
            }
            (ClientMessage::Authenticate { token, last_event_id }, Kind::Multiplexed) => {
                self.on_authenticate(token, start_of(last_event_id), ctx)
            }
            (ClientMessage::Subscribe { channel, last_event_id }, Kind::Multiplexed) => {
                self.on_subscribe(channel, last_event_id, ctx)
            }
            (ClientMessage::Unsubscribe { channel }, Kind::Multiplexed) => self.on_unsubscribe(channel, ctx),
            (ClientMessage::Presence { channel, request_id }, Kind::Multiplexed) => {
                self.on_presence(channel, request_id, ctx)
            }
            (
                ClientMessage::Request {
                    request_id,
                    action,
                    data,
                },
                Kind::Multiplexed,
            ) => self.on_request(request_id, action, data, ctx),
            // The seed endpoints know only `ping`.
            (ClientMessage::Authenticate { .. }, _) => self.unknown("authenticate", ctx),
            (ClientMessage::Subscribe { .. }, _) => self.unknown("subscribe", ctx),
            (ClientMessage::Unsubscribe { .. }, _) => self.unknown("unsubscribe", ctx),
            (ClientMessage::Presence { .. }, _) => self.unknown("presence", ctx),
            (ClientMessage::Request { .. }, _) => self.unknown("request", ctx),
        }
    }

    fn unknown(&mut self, kind: &str, ctx: &mut Ctx) {
        self.reply(ctx, seed_error(format!("Unknown message type: {kind}").into()));
    }

    fn on_authenticate(&mut self, token: Option<Value>, start: Start, ctx: &mut Ctx) {
        let Some(token) = token.as_ref().and_then(Value::as_str).map(str::to_owned) else {
            return self.reply(
                ctx,
                ServerMessage::AuthError {
                    code: None,
                    message: "token is required".into(),
                },
            );
        };
        let state = self.state.clone();
        let check = async move { authenticate(&state, &token).await };
        self.signing_in = true;
        self.sign_ins += 1;
        let epoch = self.sign_ins;
        ctx.spawn(
            actix::fut::wrap_future(check).map(move |result, this: &mut Self, ctx| match result {
                _ if this.sign_ins != epoch => {}
                Ok((actor, credentials)) => this.sign_in(Identity { actor, credentials }, start, false, ctx),
                Err(e) => {
                    this.reply(
                        ctx,
                        ServerMessage::AuthError {
                            code: Some(e.code()),
                            message: e.public_message().into(),
                        },
                    );
                    this.signed_in(ctx);
                }
            }),
        );
    }

    /// The sign-in is answered: what the client sent meanwhile is handled now, in order (up to
    /// another `authenticate`, which holds the rest again).
    fn signed_in(&mut self, ctx: &mut Ctx) {
        self.signing_in = false;
        while !self.signing_in {
            let Some(raw) = self.after_sign_in.pop_front() else {
                break;
            };
            self.on_text(&raw, ctx);
        }
    }

    /// Takes an identity (at connect or in band). A renewal for the same user keeps the
    /// subscriptions as they are (re-checked); a different user starts over with the automatic
    /// subscriptions (notifications; an operator's stations). Either way they are listed.
    fn sign_in(&mut self, identity: Identity, start: Start, at_connect: bool, ctx: &mut Ctx) {
        let actor = identity.actor.clone();
        let same_user = self
            .identity
            .as_ref()
            .is_some_and(|current| current.actor.id == actor.id);
        let renewal = same_user && !at_connect;
        if same_user {
            // A renewal keeps the subscriptions, but checks them again as the account is now.
            ctx.notify(ToSession::Recheck);
        } else {
            // Another user starts over: nothing decided for the last one carries over. Each
            // channel left is said, so a client that subscribed before signing in knows to
            // subscribe again (the `authenticated` that follows lists what is made anew).
            let channels = self.out().channels();
            for channel in channels {
                self.leave(channel);
                self.reply(
                    ctx,
                    ServerMessage::Unsubscribed {
                        channel: channel.name(),
                        reason: Some("signed_in_again"),
                        message: Some("Signed in as another user: subscriptions start over".into()),
                    },
                );
            }
        }
        // Changes to this user (and the end of this sign-in session) must find this connection,
        // however it signed in.
        self.registry.do_send(Identify {
            session: self.id,
            viewer: channels::viewer(&actor),
        });
        self.identity = Some(identity);
        self.watch_expiry(ctx);
        let state = self.state.clone();
        let who = actor.clone();
        // A renewal keeps the subscriptions as the client left them: a channel it unsubscribed
        // from is not made again (nor the viewer it was, for presence).
        let automatic = async move {
            if renewal {
                return Ok(Vec::new());
            }
            channels::automatic(&state, &who).await
        };
        // Until it is answered, what the client sends waits (at connect too: an `authenticate`
        // sent at once is handled after this sign-in, not beside it).
        self.signing_in = true;
        let epoch = self.sign_ins;
        ctx.spawn(
            actix::fut::wrap_future(automatic).map(move |result, this: &mut Self, ctx| {
                if this.sign_ins != epoch {
                    return;
                }
                let automatic = result.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "automatic subscriptions unavailable");
                    vec![Channel::Notifications]
                });
                let current = this.out().channels();
                let mut names: Vec<String> = current.iter().map(|c| c.name()).collect();
                names.extend(automatic.iter().filter(|c| !current.contains(c)).map(|c| c.name()));
                names.sort();
                this.reply(
                    ctx,
                    ServerMessage::Authenticated {
                        user_id: actor.id,
                        role: actor.role,
                        subscriptions: names,
                    },
                );
                for channel in automatic {
                    if !current.contains(&channel) {
                        this.join(channel, start, ctx);
                    }
                }
                this.signed_in(ctx);
            }),
        );
    }

    /// A connection is worth no more than its token: at `exp` it closes with 4002 (the client
    /// refreshes and resumes); on `/ws` it is told `token_expiring` first — 60 s before, or at half
    /// the token's lifetime when that is shorter — so it can renew in band. A renewal re-arms both.
    fn watch_expiry(&mut self, ctx: &mut Ctx) {
        for handle in self.expiry.drain(..) {
            ctx.cancel_future(handle);
        }
        let Some(credentials) = self.identity.as_ref().map(|i| i.credentials) else {
            return;
        };
        let left_ms = (credentials.expires_at * 1000 - now_ms()).max(0) as u64;
        let left = Duration::from_millis(left_ms);
        self.expiry.push(ctx.run_later(left, |this, ctx| {
            this.close(
                ctx,
                CloseCode::Other(close::TOKEN_EXPIRED),
                "Token expired; refresh and reconnect",
            )
        }));
        let warned = self.warned_for.is_some_and(|at| credentials.expires_at <= at);
        if self.tagged() && !warned {
            let lifetime = (credentials.expires_at - credentials.issued_at).max(0) as u64;
            let lead = Duration::from_secs(TOKEN_EXPIRING_LEAD_SECS.min(lifetime / 2).max(1));
            let expires_at = credentials.expires_at;
            self.expiry
                .push(ctx.run_later(left.saturating_sub(lead), move |this, ctx| {
                    let expires_in = ((expires_at * 1000 - now_ms()).max(0) + 999) / 1000;
                    this.warned_for = Some(expires_at);
                    this.reply(ctx, ServerMessage::TokenExpiring { expires_in });
                }));
        }
    }

    fn channel_of(&mut self, name: Option<Value>, ctx: &mut Ctx) -> Option<Channel> {
        let Some(name) = name.as_ref().and_then(Value::as_str) else {
            self.reply(
                ctx,
                ServerMessage::Error {
                    code: Some("unknown_channel"),
                    channel: None,
                    message: "\"channel\" must be a channel name, such as \"station:12\"".into(),
                },
            );
            return None;
        };
        let channel = Channel::parse(name);
        if channel.is_none() {
            self.reply(
                ctx,
                ServerMessage::Error {
                    code: Some("unknown_channel"),
                    channel: Some(name.to_owned()),
                    message: format!("No channel named {name:?}").into(),
                },
            );
        }
        channel
    }

    fn on_subscribe(&mut self, channel: Option<Value>, last_event_id: Option<Value>, ctx: &mut Ctx) {
        let Some(channel) = self.channel_of(channel, ctx) else {
            return;
        };
        self.join(channel, start_of(last_event_id), ctx);
    }

    fn on_unsubscribe(&mut self, channel: Option<Value>, ctx: &mut Ctx) {
        let Some(channel) = self.channel_of(channel, ctx) else {
            return;
        };
        self.leave(channel);
        self.reply(
            ctx,
            ServerMessage::Unsubscribed {
                channel: channel.name(),
                reason: None,
                message: None,
            },
        );
    }

    /// Who watches a station's channel, as this caller may see it (the rule of `GET
    /// /api/stations/{id}/presence`); it need not be subscribed.
    fn on_presence(&mut self, channel: Option<Value>, request_id: Option<Value>, ctx: &mut Ctx) {
        let Some(channel) = self.channel_of(channel, ctx) else {
            return;
        };
        let Channel::Station(station) = channel else {
            let message = "Presence is kept for station channels".into();
            return self.reply(
                ctx,
                ServerMessage::Error {
                    code: Some("unknown_channel"),
                    channel: Some(channel.name()),
                    message,
                },
            );
        };
        let state = self.state.clone();
        let identity = self.identity.clone();
        let work = async move {
            let actor = match identity {
                Some(identity) => Some(load_caller(&state, identity.credentials).await?),
                None => None,
            };
            state.presence(actor.as_ref(), station).await
        };
        ctx.spawn(
            actix::fut::wrap_future(work).map(move |result, this: &mut Self, ctx| match result {
                Ok(visible) => this.reply(
                    ctx,
                    ServerMessage::Presence {
                        request_id: request_id.as_ref(),
                        channel: channel.name(),
                        viewers: visible.viewers,
                        signed_in: visible.signed_in.as_deref(),
                    },
                ),
                Err(error) => this.reply(ctx, channel_error(channel, &error)),
            }),
        );
    }

    fn on_request(&mut self, request_id: Option<Value>, action: Option<Value>, data: Option<Value>, ctx: &mut Ctx) {
        let request_id = request_id.unwrap_or(Value::Null);
        let action = action.as_ref().and_then(Value::as_str).unwrap_or("").to_owned();
        let data = data.unwrap_or_else(|| Value::Object(Default::default()));
        let work = actions::perform(self.state.clone(), self.identity.clone(), action.clone(), data);
        ctx.spawn(actix::fut::wrap_future(work).map(move |result, this: &mut Self, ctx| {
            let reply = match result {
                Ok(data) => ServerMessage::Response {
                    request_id: &request_id,
                    action: &action,
                    data,
                },
                Err(ref error) => ServerMessage::RequestError {
                    request_id: &request_id,
                    error: ErrorBody::of(error),
                },
            };
            this.reply(ctx, reply);
        }));
    }

    /// A channel could not be joined: a seed connection closes, a `/ws` one is told and goes on.
    fn refused(&mut self, channel: Channel, error: Error, ctx: &mut Ctx) {
        // A catch-up that failed comes after the registration: take the watch back too.
        self.leave(channel);
        match self.kind {
            Kind::Seed { .. } | Kind::Refused { .. } => {
                let (code, reason) = close_for(&error);
                self.close(ctx, CloseCode::Other(code), &reason)
            }
            Kind::Multiplexed => self.reply(ctx, channel_error(channel, &error)),
        }
    }
}

impl Actor for WsSession {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        if let Kind::Refused { code, reason } = &self.kind {
            let (code, reason) = (*code, reason.clone());
            return self.close(ctx, CloseCode::Other(code), &reason);
        }
        let endpoint = self.endpoint();
        self.state
            .hub
            .metrics
            .ws_connections
            .with_label_values(&[endpoint])
            .inc();
        tracing::info!(session = self.id, endpoint, user = ?self.identity.as_ref().map(|i| i.actor.id.0), "websocket opened");
        // Messages from other threads (personal events, catch-ups) are bounded too: routers that
        // find the mailbox full drop this session (1013).
        ctx.set_mailbox_capacity(self.limits.send_queue);
        ctx.run_interval(self.limits.heartbeat, |this, ctx| {
            // A reader that stopped in the middle of a snapshot or a replay is a slow consumer
            // (1013, resume later), whether or not it still talks — and one that is silent too
            // is that, not merely gone.
            let limit = this.limits.heartbeat * MISSED_HEARTBEATS;
            let (stopped, silent) = {
                let out = this.out();
                // Our Ping waits behind every frame sent before it, in our queue and in both
                // kernels' buffers: a reader working through a backlog answers late. It is silent
                // only if it has not made room in the kernel's buffer for as long either.
                let silent = this.last_heard.elapsed() > limit && !out.reader_read_within(limit);
                (out.stalled(limit) || (silent && out.catching_up()), silent)
            };
            if stopped {
                tracing::debug!(session = this.id, "reader stopped during a catch-up");
                this.overflowed(ctx);
            } else if silent {
                // Gone, or so far behind that a Ping has waited three heartbeats: Close (1013)
                // after what the kernel holds, never a reset that would throw away what the
                // reader has not read yet. A reader still there reads it all, then resumes.
                tracing::debug!(session = this.id, "peer silent; closing");
                this.close_slow(ctx, "No answer to pings; resume with last_event_id");
            } else {
                this.send(socket::control(OpCode::Ping, b""), ctx);
            }
        });
        // Register, greet, then subscribe: the first message is always `connection_established`.
        // Registering is a message the registry takes before any later one from this thread (its
        // mailbox is first in, first out), so the greeting need not wait for it.
        let to = ctx.address().recipient();
        let outlet: SharedOutlet = self.out.clone();
        let actor = self.identity.as_ref().map(|i| &i.actor);
        let last_event_id = channels::register(&self.state, self.id, to, outlet, actor);
        let greeting = self.greeting.at(last_event_id).frame();
        let start = self.start;
        match (&self.kind, self.identity.clone()) {
            // The greeting goes out once the channel is allowed: a refusal is the only frame.
            (Kind::Seed { channel }, _) => {
                let channel = *channel;
                self.watch_expiry(ctx);
                self.join_with(channel, start, Some(greeting), ctx);
            }
            (Kind::Multiplexed, identity) => {
                self.send(greeting.bytes().clone(), ctx);
                if let Some(identity) = identity {
                    self.sign_in(identity, start, true, ctx);
                }
            }
            (Kind::Refused { .. }, _) => {}
        }
    }

    fn stopped(&mut self, _: &mut Ctx) {
        tracing::info!(session = self.id, "websocket closed");
        if !matches!(self.kind, Kind::Refused { .. }) {
            self.state
                .hub
                .metrics
                .ws_connections
                .with_label_values(&[self.endpoint()])
                .dec();
        }
        let channels = self.out().channels();
        for channel in channels {
            self.leave(channel);
        }
        self.registry.do_send(Disconnect { session: self.id });
    }
}

/// Where a subscription starts, from a message's `last_event_id`.
fn start_of(last_event_id: Option<Value>) -> Start {
    match last_event_id {
        None | Some(Value::Null) => Start::Fresh,
        Some(id) => id.as_i64().map(Start::Resume).unwrap_or(Start::Unreadable),
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Ctx) {
        // A closing session sends nothing more.
        if self.out().is_closing() {
            return;
        }
        match msg {
            ToSession::Event {
                channel,
                generation,
                event_id,
                frame,
            } => {
                self.out()
                    .live(channel, generation, &mut std::iter::once((event_id, &frame)));
                self.attend(ctx);
            }
            ToSession::Catchup {
                channel,
                generation,
                items,
                drained,
            } => {
                self.out().catch_up(channel, generation, items, drained);
                self.attend(ctx);
            }
            ToSession::GoLive {
                channel,
                generation,
                position,
            } => {
                self.out().go_live(channel, generation, position);
                self.attend(ctx);
            }
            // A refusal of an earlier subscription of the channel says nothing of this one.
            ToSession::Refused {
                channel,
                generation,
                error,
            } => {
                if self.out().is_current(channel, generation) {
                    self.refused(channel, error, ctx)
                }
            }
            ToSession::Recheck => {
                let Some(identity) = self.identity.clone() else {
                    return;
                };
                let channels = self.out().channels();
                let task = channels::recheck(
                    self.state.clone(),
                    self.id,
                    ctx.address().recipient(),
                    identity,
                    channels,
                    self.tagged(),
                );
                actix_web::rt::spawn(task);
            }
            // Answers about credentials the connection no longer holds are stale.
            ToSession::Identity { of, .. } | ToSession::Revoked { of, .. } if !self.holds(of) => {}
            ToSession::Identity { of, actor } => {
                // Presence names the user as they now are (an admin renamed them, changed a role).
                self.registry.do_send(Identify {
                    session: self.id,
                    viewer: channels::viewer(&actor),
                });
                self.identity = Some(Identity { actor, credentials: of })
            }
            ToSession::Revoked {
                channel: None, error, ..
            } => {
                let (code, reason) = close_for(&error);
                self.close(ctx, CloseCode::Other(code), &reason)
            }
            ToSession::Revoked {
                channel: Some(channel),
                error,
                ..
            } => match self.kind {
                Kind::Multiplexed => {
                    self.leave(channel);
                    self.reply(
                        ctx,
                        ServerMessage::Unsubscribed {
                            channel: channel.name(),
                            reason: Some(error.code()),
                            message: Some(error.public_message()),
                        },
                    );
                }
                _ => self.refused(channel, error, ctx),
            },
            ToSession::Sample { channel, frame } => {
                if self.out().is_live(channel) {
                    self.send(frame.bytes().clone(), ctx);
                }
            }
            ToSession::Notice {
                channel,
                generation,
                frame,
            } => {
                self.out().notice(channel, generation, &frame);
                self.attend(ctx);
            }
            ToSession::Overflowed => self.overflowed(ctx),
            ToSession::Attend => self.attend(ctx),
            ToSession::ShutDown => self.close(ctx, CloseCode::Away, "Server shutting down"),
        }
    }
}

impl StreamHandler<Result<WsFrame, ProtocolError>> for WsSession {
    fn handle(&mut self, frame: Result<WsFrame, ProtocolError>, ctx: &mut Ctx) {
        self.last_heard = Instant::now();
        // After its Close the session only waits for the client to hang up.
        if self.out().is_closing() {
            return;
        }
        let incoming = frames::classify(frame, &mut self.fragments);
        // Every frame counts against the rate limit, a fragmented message once it is whole.
        if incoming.counts() && !self.within_rate(ctx) {
            return;
        }
        match incoming {
            Incoming::Ping(payload) => self.send(socket::control(OpCode::Pong, &payload), ctx),
            Incoming::Pong | Incoming::Pending => {}
            Incoming::Text(raw) => self.on_text(&raw, ctx),
            Incoming::Binary(_) => self.reply(ctx, seed_error("Binary messages are not supported".into())),
            // Answer a client's Close with the same code, then send nothing more.
            Incoming::Closed(echo) => self.close_as(echo, false, ctx),
            Incoming::Refuse(code, reason) => self.close(ctx, code, reason),
            Incoming::Broken => ctx.stop(),
        }
    }

    /// The client's side ended: after a close handshake, or without one (the peer vanished).
    fn finished(&mut self, ctx: &mut Ctx) {
        self.peer_gone = true;
        let out = self.out();
        if !out.is_closing() || out.close_sent() {
            drop(out);
            ctx.stop();
        }
    }
}

/// Seed 001's error: a message, no code.
/// A channel's error on `/ws`: one the caller may not watch is `forbidden`, signed in or not.
fn channel_error(channel: Channel, error: &Error) -> ServerMessage<'static> {
    let code = match error {
        Error::Unauthenticated | Error::Forbidden(_) => "forbidden",
        other => other.code(),
    };
    ServerMessage::Error {
        code: Some(code),
        channel: Some(channel.name()),
        message: error.public_message().into(),
    }
}

fn seed_error(message: std::borrow::Cow<'static, str>) -> ServerMessage<'static> {
    ServerMessage::Error {
        code: None,
        channel: None,
        message,
    }
}
