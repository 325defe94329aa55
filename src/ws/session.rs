//! The `WsSession` actor: one per WebSocket connection, owning its socket. It speaks the protocol
//! (heartbeat, close handshake, fragments, size and rate limits) and keeps each channel's stream in
//! order: live events are held while the channel catches up (a snapshot or a replay from the log),
//! and no event is sent twice. Work that needs the database (checking a token, joining a channel, an
//! action) runs in tasks from [`super::channels`] and [`super::actions`]; the session only routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, Frame as WsFrame, OpCode, ProtocolError};
use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::actions;
use super::channels::{self, Start};
use super::inbound::{RateLimiter, Reassembled, Reassembly, Verdict};
use super::socket::{self, Flushed, Socket};
use crate::auth::extract::authenticate;
use crate::auth::Actor as Identity;
use crate::clock::{iso, now_ms};
use crate::error::Error;
use crate::events::wire::{text, Frame};
use crate::realtime::messages::{Channel, Disconnect, Leave, SessionId, ToSession, Unsubscribe};
use crate::state::AppState;

/// A peer silent for this many heartbeats is dropped.
const MISSED_HEARTBEATS: u32 = 3;
/// How long a closing session waits for its Close frame to go out and the client to hang up.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Close codes of the contract (§3, §4.4) beyond RFC 6455's named ones.
pub mod close {
    pub const INVALID_TOKEN: u16 = 4001;
    pub const TOKEN_EXPIRED: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    pub const UNKNOWN_STATION: u16 = 4004;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The limits a session enforces, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub heartbeat: Duration,
    pub max_message: usize,
    pub rate_per_sec: u32,
    pub send_queue: usize,
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

struct ChannelState {
    /// `Some` while catching up: the live events that arrived meanwhile.
    held: Option<Vec<(i64, Frame)>>,
    /// The newest event id sent on this channel.
    last_sent: i64,
}

pub struct WsSession {
    id: SessionId,
    state: Arc<AppState>,
    kind: Kind,
    /// `connection_established`, less `last_event_id`.
    greeting: Value,
    identity: Option<Identity>,
    channels: HashMap<Channel, ChannelState>,
    limits: Limits,
    last_heard: Instant,
    fragments: Reassembly,
    limiter: RateLimiter,
    /// Where the first channels start (`?last_event_id=`).
    start: Start,
    socket: Socket,
    /// Waiting for the kernel to take more of the queue.
    blocked: bool,
    /// A Close frame is queued: nothing else is sent, and what the client sends is ignored.
    closing: bool,
    /// The Close frame is written and FIN sent.
    close_sent: bool,
    /// The client's side has ended.
    peer_gone: bool,
}

type Ctx = Context<WsSession>;

/// What a session is made of before it has a socket: the handshake decides it, the upgrade hands
/// over the connection.
pub struct Opening {
    pub id: SessionId,
    pub state: Arc<AppState>,
    pub kind: Kind,
    pub greeting: Value,
    pub identity: Option<Identity>,
    pub limits: Limits,
    pub start: Start,
}

impl Opening {
    /// Starts the session on this worker, on the connection the upgrade handed over.
    pub fn start(self, io: TcpStream, already_read: BytesMut) {
        let (socket, inbound) = Socket::split(io, already_read, self.limits.max_message);
        WsSession::create(move |ctx| {
            ctx.add_stream(inbound);
            WsSession::new(self, socket)
        });
    }
}

impl WsSession {
    fn new(opening: Opening, socket: Socket) -> WsSession {
        let Opening {
            id,
            state,
            kind,
            greeting,
            identity,
            limits,
            start,
        } = opening;
        WsSession {
            id,
            state,
            kind,
            greeting,
            identity,
            channels: HashMap::new(),
            limits,
            last_heard: Instant::now(),
            fragments: Reassembly::new(limits.max_message),
            limiter: RateLimiter::new(limits.rate_per_sec, Instant::now()),
            start,
            socket,
            blocked: false,
            closing: false,
            close_sent: false,
            peer_gone: false,
        }
    }

    /// Writes a frame (or queues it behind those the kernel has not taken).
    fn send(&mut self, frame: Bytes, ctx: &mut Ctx) {
        if self.closing {
            return;
        }
        if self.blocked {
            self.socket.push(frame);
            return self.check_queue(ctx);
        }
        let flushed = self.socket.send(frame);
        self.flushed(flushed, ctx);
    }

    fn flush(&mut self, ctx: &mut Ctx) {
        let flushed = self.socket.flush();
        self.flushed(flushed, ctx);
    }

    fn flushed(&mut self, flushed: Flushed, ctx: &mut Ctx) {
        match flushed {
            Flushed::All => {
                if self.closing && !self.close_sent {
                    self.close_sent = true;
                    self.socket.finish();
                }
                if self.close_sent && self.peer_gone {
                    ctx.stop();
                }
            }
            Flushed::Blocked => {
                self.check_queue(ctx);
                if !self.blocked {
                    self.blocked = true;
                    ctx.spawn(self.socket.writable().into_actor(self).map(|(), this, ctx| {
                        this.blocked = false;
                        this.flush(ctx);
                    }));
                }
            }
            Flushed::Failed => ctx.stop(),
        }
    }

    /// A client that does not read is a slow consumer once its queue is over the limit.
    fn check_queue(&mut self, ctx: &mut Ctx) {
        if !self.closing && self.socket.queued() > self.limits.send_queue {
            self.overflowed(ctx);
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

    /// Closes a session whose outbound queue overflowed; the client resumes with `last_event_id`.
    /// What it has not begun to receive is dropped, so the Close frame is next.
    fn overflowed(&mut self, ctx: &mut Ctx) {
        self.state.hub.metrics.slow_consumer_closes.inc();
        self.socket.drop_unsent();
        self.close(
            ctx,
            CloseCode::Other(close::TRY_AGAIN_LATER),
            "Send queue overflow; resume with last_event_id",
        );
    }

    fn tagged(&self) -> bool {
        matches!(self.kind, Kind::Multiplexed)
    }

    fn close(&mut self, ctx: &mut Ctx, code: CloseCode, reason: &str) {
        self.close_with(
            Some(CloseReason {
                code,
                description: Some(reason.to_owned()),
            }),
            ctx,
        );
    }

    /// Sends Close after what is queued, then FIN; the session ends when the client hangs up too,
    /// or after [`CLOSE_LINGER`].
    fn close_with(&mut self, reason: Option<CloseReason>, ctx: &mut Ctx) {
        if self.closing {
            return;
        }
        self.socket.push(socket::close_frame(reason));
        self.closing = true;
        ctx.run_later(CLOSE_LINGER, |_, ctx| ctx.stop());
        if !self.blocked {
            self.flush(ctx);
        }
    }

    fn reply(&mut self, ctx: &mut Ctx, message: Value) {
        self.send(Frame::text(&text(&message)).bytes().clone(), ctx);
    }

    /// Starts catching a channel up; its live events are held until the catch-up is out.
    fn join(&mut self, channel: Channel, start: Start, ctx: &mut Ctx) {
        if self.channels.contains_key(&channel) {
            if self.tagged() {
                self.reply(ctx, json!({"type": "subscribed", "channel": channel.name()}));
            }
            return;
        }
        self.channels.insert(
            channel,
            ChannelState {
                held: Some(Vec::new()),
                last_sent: i64::MIN,
            },
        );
        let task = channels::join(
            self.state.clone(),
            self.id,
            ctx.address().recipient(),
            self.identity.clone(),
            channel,
            self.tagged(),
            start,
        );
        actix_web::rt::spawn(task);
    }

    fn leave(&mut self, channel: Channel) {
        if self.channels.remove(&channel).is_none() {
            return;
        }
        match (channel, &self.identity) {
            (Channel::Notifications, Some(actor)) => self.state.hub.directory.do_send(Leave {
                user: actor.id,
                session: self.id,
            }),
            _ => self.state.hub.registry.do_send(Unsubscribe {
                session: self.id,
                channel,
            }),
        }
    }

    /// Live events of a channel: sent, or held while the channel catches up (a session that would
    /// hold more than its send queue is a slow consumer).
    fn live(&mut self, channel: Channel, items: impl IntoIterator<Item = (i64, Frame)>, ctx: &mut Ctx) {
        let cap = self.limits.send_queue;
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        for (event_id, frame) in items {
            match &mut state.held {
                Some(held) if held.len() >= cap => return self.overflowed(ctx),
                Some(held) => held.push((event_id, frame)),
                None => Self::queue_event(&mut self.socket, state, event_id, &frame),
            }
        }
        self.flush_unless_blocked(ctx);
    }

    /// Queues an event the channel has not sent yet; the caller flushes once for the lot.
    fn queue_event(socket: &mut Socket, state: &mut ChannelState, event_id: i64, frame: &Frame) {
        if event_id > state.last_sent {
            state.last_sent = event_id;
            socket.push(frame.bytes().clone());
        }
    }

    fn flush_unless_blocked(&mut self, ctx: &mut Ctx) {
        if self.closing {
            return;
        }
        if self.blocked {
            self.check_queue(ctx);
        } else {
            self.flush(ctx);
        }
    }

    /// One complete text message from the client.
    fn on_text(&mut self, raw: &str, ctx: &mut Ctx) {
        match self.limiter.hit(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Limit { tell } => {
                self.state.hub.metrics.rate_limited.inc();
                if tell {
                    self.reply(
                        ctx,
                        json!({"type": "error", "code": "rate_limited", "message": "Too many messages; slow down"}),
                    );
                }
                return;
            }
            Verdict::Close => return self.close(ctx, CloseCode::Policy, "Message rate far over the limit"),
        }
        let Ok(message) = serde_json::from_str::<Value>(raw) else {
            return self.reply(ctx, json!({"type": "error", "message": "Invalid JSON"}));
        };
        let kind = message
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned();
        match (kind.as_str(), &self.kind) {
            (_, Kind::Refused { .. }) => {}
            ("ping", _) => {
                let timestamp = match message.get("timestamp") {
                    Some(t) if !t.is_null() => t.clone(),
                    _ => json!(iso(now_ms())),
                };
                self.reply(ctx, json!({"type": "pong", "timestamp": timestamp}));
            }
            ("authenticate", Kind::Multiplexed) => self.on_authenticate(&message, ctx),
            ("subscribe", Kind::Multiplexed) => self.on_subscribe(&message, ctx),
            ("unsubscribe", Kind::Multiplexed) => self.on_unsubscribe(&message, ctx),
            ("request", Kind::Multiplexed) => self.on_request(message, ctx),
            (other, _) => self.reply(
                ctx,
                json!({"type": "error", "message": format!("Unknown message type: {other}")}),
            ),
        }
    }

    fn on_authenticate(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(token) = message.get("token").and_then(Value::as_str).map(str::to_owned) else {
            return self.reply(ctx, json!({"type": "auth_error", "message": "token is required"}));
        };
        let state = self.state.clone();
        let check = async move { authenticate(&state, &token).await };
        ctx.spawn(
            actix::fut::wrap_future(check).map(|result, this: &mut Self, ctx| match result {
                Ok(actor) => this.sign_in(actor, Start::Fresh, ctx),
                Err(e) => this.reply(
                    ctx,
                    json!({"type": "auth_error", "code": e.code(), "message": e.to_string()}),
                ),
            }),
        );
    }

    /// Takes an identity (at connect or in band). A renewal for the same user keeps every
    /// subscription; a different user starts over. Either way the automatic subscriptions
    /// (notifications; an operator's stations) are made and listed.
    fn sign_in(&mut self, actor: Identity, start: Start, ctx: &mut Ctx) {
        let same_user = self.identity.as_ref().is_some_and(|current| current.id == actor.id);
        if !same_user {
            for channel in self.channels.keys().copied().collect::<Vec<_>>() {
                self.leave(channel);
            }
        }
        self.identity = Some(actor.clone());
        let state = self.state.clone();
        let who = actor.clone();
        let automatic = async move { channels::automatic(&state, &who).await };
        ctx.spawn(
            actix::fut::wrap_future(automatic).map(move |result, this: &mut Self, ctx| {
                let automatic = result.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "automatic subscriptions unavailable");
                    vec![Channel::Notifications]
                });
                let mut names: Vec<String> = this.channels.keys().map(|c| c.name()).collect();
                names.extend(
                    automatic
                        .iter()
                        .filter(|c| !this.channels.contains_key(c))
                        .map(|c| c.name()),
                );
                names.sort();
                this.reply(
                    ctx,
                    json!({"type": "authenticated", "user_id": actor.id, "role": actor.role, "subscriptions": names}),
                );
                for channel in automatic {
                    if !this.channels.contains_key(&channel) {
                        this.join(channel, start, ctx);
                    }
                }
            }),
        );
    }

    fn channel_of(&mut self, message: &Value, ctx: &mut Ctx) -> Option<Channel> {
        let name = message.get("channel").and_then(Value::as_str).unwrap_or("");
        let channel = Channel::parse(name);
        if channel.is_none() {
            self.reply(
                ctx,
                json!({"type": "error", "code": "unknown_channel", "channel": name, "message": format!("No channel named {name:?}")}),
            );
        }
        channel
    }

    fn on_subscribe(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(channel) = self.channel_of(message, ctx) else {
            return;
        };
        let start = match message.get("last_event_id") {
            None | Some(Value::Null) => Start::Fresh,
            Some(id) => id.as_i64().map(Start::Resume).unwrap_or(Start::Unreadable),
        };
        self.join(channel, start, ctx);
    }

    fn on_unsubscribe(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(channel) = self.channel_of(message, ctx) else {
            return;
        };
        self.leave(channel);
        self.reply(ctx, json!({"type": "unsubscribed", "channel": channel.name()}));
    }

    fn on_request(&mut self, message: Value, ctx: &mut Ctx) {
        let request_id = message.get("request_id").cloned().unwrap_or(Value::Null);
        let action = message.get("action").and_then(Value::as_str).unwrap_or("").to_owned();
        let data = message.get("data").cloned().unwrap_or_else(|| json!({}));
        let work = actions::perform(self.state.clone(), self.identity.clone(), action.clone(), data);
        ctx.spawn(actix::fut::wrap_future(work).map(move |result, this: &mut Self, ctx| {
            let reply = match result {
                Ok(data) => json!({"type": "response", "request_id": request_id, "action": action, "data": data}),
                Err(error) => actions::error_reply(&request_id, &error),
            };
            this.reply(ctx, reply);
        }));
    }

    fn on_protocol_error(&mut self, error: ProtocolError, ctx: &mut Ctx) {
        match error {
            ProtocolError::Overflow => self.close(ctx, CloseCode::Size, "Frame too large"),
            ProtocolError::Io(_) => ctx.stop(),
            other => self.close(ctx, CloseCode::Protocol, &other.to_string()),
        }
    }

    /// A channel could not be joined: a seed connection closes, a `/ws` one is told and goes on.
    fn refused(&mut self, channel: Channel, error: Error, ctx: &mut Ctx) {
        self.channels.remove(&channel);
        match self.kind {
            Kind::Seed { .. } | Kind::Refused { .. } => {
                let (code, reason) = channels::close_code(&error);
                self.close(ctx, CloseCode::Other(code), &reason)
            }
            Kind::Multiplexed => {
                // On /ws a channel the caller may not watch is `forbidden`, signed in or not.
                let code = match error {
                    Error::Unauthenticated | Error::Forbidden(_) => "forbidden",
                    ref other => other.code(),
                };
                self.reply(
                    ctx,
                    json!({"type": "error", "code": code, "channel": channel.name(), "message": error.to_string()}),
                )
            }
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
        tracing::info!(session = self.id, endpoint, user = ?self.identity.as_ref().map(|a| a.id.0), "websocket opened");
        // The mailbox is the outbound queue: routers that find it full drop this session (1013).
        ctx.set_mailbox_capacity(self.limits.send_queue);
        ctx.run_interval(self.limits.heartbeat, |this, ctx| {
            if this.last_heard.elapsed() > this.limits.heartbeat * MISSED_HEARTBEATS {
                tracing::debug!(session = this.id, "peer silent; dropping");
                ctx.stop();
            } else {
                this.send(socket::control(OpCode::Ping, b""), ctx);
            }
        });
        // Register, greet, then subscribe: the first message is always `connection_established`.
        // Registering is a message the registry takes before any later one from this thread (its
        // mailbox is first in, first out), so the greeting need not wait for it.
        let to = ctx.address().recipient();
        let last_event_id = channels::register(&self.state, self.id, to, self.identity.as_ref().map(|a| a.id));
        let mut greeting = self.greeting.clone();
        greeting["last_event_id"] = json!(last_event_id);
        self.reply(ctx, greeting);
        let start = self.start;
        match (&self.kind, self.identity.clone()) {
            (Kind::Seed { channel }, _) => {
                let channel = *channel;
                self.join(channel, start, ctx);
            }
            (Kind::Multiplexed, Some(actor)) => self.sign_in(actor, start, ctx),
            (Kind::Multiplexed, None) | (Kind::Refused { .. }, _) => {}
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
        self.state.hub.registry.do_send(Disconnect { session: self.id });
        if let (true, Some(actor)) = (self.channels.contains_key(&Channel::Notifications), &self.identity) {
            self.state.hub.directory.do_send(Leave {
                user: actor.id,
                session: self.id,
            });
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Ctx) {
        // A closing session sends nothing more.
        if self.closing {
            return;
        }
        match msg {
            ToSession::Event {
                channel,
                event_id,
                frame,
            } => self.live(channel, [(event_id, frame)], ctx),
            ToSession::Events { channel, items } => self.live(channel, items, ctx),
            ToSession::Catchup { channel, items } => {
                let Some(state) = self.channels.get_mut(&channel) else {
                    return;
                };
                for (event_id, frame) in items {
                    match event_id {
                        Some(event_id) => Self::queue_event(&mut self.socket, state, event_id, &frame),
                        None => self.socket.push(frame.bytes().clone()),
                    }
                }
                self.flush_unless_blocked(ctx);
            }
            ToSession::GoLive { channel, position } => {
                let Some(state) = self.channels.get_mut(&channel) else {
                    return;
                };
                state.last_sent = state.last_sent.max(position);
                for (event_id, frame) in state.held.take().unwrap_or_default() {
                    Self::queue_event(&mut self.socket, state, event_id, &frame);
                }
                self.flush_unless_blocked(ctx);
            }
            ToSession::Refused { channel, error } => self.refused(channel, error, ctx),
            ToSession::Recheck => {
                let Some(user) = self.identity.as_ref().map(|a| a.id) else {
                    return;
                };
                let channels = self.channels.keys().copied().collect();
                let task = channels::recheck(
                    self.state.clone(),
                    self.id,
                    ctx.address().recipient(),
                    user,
                    channels,
                    self.tagged(),
                );
                actix_web::rt::spawn(task);
            }
            ToSession::Identity(actor) => self.identity = Some(actor),
            ToSession::Revoked { channel: None, error } => {
                let (code, reason) = channels::close_code(&error);
                self.close(ctx, CloseCode::Other(code), &reason)
            }
            ToSession::Revoked {
                channel: Some(channel),
                error,
            } => match self.kind {
                Kind::Multiplexed => {
                    self.leave(channel);
                    self.reply(
                        ctx,
                        json!({"type": "unsubscribed", "channel": channel.name(), "reason": error.code(), "message": error.to_string()}),
                    );
                }
                _ => self.refused(channel, error, ctx),
            },
            ToSession::Sample { channel, frame } => {
                if self.channels.get(&channel).is_some_and(|c| c.held.is_none()) {
                    self.send(frame.bytes().clone(), ctx);
                }
            }
            ToSession::Overflowed => self.overflowed(ctx),
            ToSession::ShutDown => self.close(ctx, CloseCode::Away, "Server shutting down"),
        }
    }
}

impl StreamHandler<Result<WsFrame, ProtocolError>> for WsSession {
    fn handle(&mut self, frame: Result<WsFrame, ProtocolError>, ctx: &mut Ctx) {
        self.last_heard = Instant::now();
        // After its Close the session only waits for the client to hang up.
        if self.closing {
            return;
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return self.on_protocol_error(error, ctx),
        };
        match frame {
            WsFrame::Ping(payload) => self.send(socket::control(OpCode::Pong, &payload), ctx),
            WsFrame::Pong(_) => {}
            WsFrame::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(raw) => self.on_text(raw, ctx),
                Err(_) => self.close(ctx, CloseCode::Invalid, "Text is not UTF-8"),
            },
            WsFrame::Binary(_) => self.reply(
                ctx,
                json!({"type": "error", "message": "Binary messages are not supported"}),
            ),
            WsFrame::Continuation(item) => match self.fragments.push(item) {
                Reassembled::Pending => {}
                Reassembled::Text(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(raw) => self.on_text(raw, ctx),
                    Err(_) => self.close(ctx, CloseCode::Invalid, "Text is not UTF-8"),
                },
                Reassembled::Binary(_) => self.reply(
                    ctx,
                    json!({"type": "error", "message": "Binary messages are not supported"}),
                ),
                Reassembled::TooBig => self.close(ctx, CloseCode::Size, "Message too large"),
            },
            // Answer a client's Close with the same code, then send nothing more.
            WsFrame::Close(reason) => self.close_with(
                reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                }),
                ctx,
            ),
        }
    }

    /// The client's side ended: after a close handshake, or without one (the peer vanished).
    fn finished(&mut self, ctx: &mut Ctx) {
        self.peer_gone = true;
        if !self.closing || self.close_sent {
            ctx.stop();
        }
    }
}
