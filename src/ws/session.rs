//! The `WsSession` actor: one per WebSocket connection. It speaks the protocol (heartbeat, close
//! handshake, fragments, size and rate limits) and keeps each channel's stream in order: live
//! events are held while the channel catches up (a snapshot or a replay from the log), and no
//! event is sent twice. Work that needs the database (checking a token, joining a channel, an
//! action) runs in tasks from [`super::channels`] and [`super::actions`]; the session only routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use serde_json::{json, Value};

use super::actions;
use super::channels::{self, Start};
use super::inbound::{RateLimiter, Reassembled, Reassembly, Verdict};
use crate::auth::extract::authenticate;
use crate::auth::Actor as Identity;
use crate::clock::{iso, now_ms};
use crate::error::Error;
use crate::events::wire::text;
use crate::realtime::messages::{Channel, Disconnect, Leave, SessionId, ToSession, Unsubscribe};
use crate::state::AppState;

/// A peer silent for this many heartbeats is dropped.
const MISSED_HEARTBEATS: u32 = 3;

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
    held: Option<Vec<(i64, ByteString)>>,
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
}

type Ctx = ws::WebsocketContext<WsSession>;

impl WsSession {
    pub fn new(
        id: SessionId,
        state: Arc<AppState>,
        kind: Kind,
        greeting: Value,
        identity: Option<Identity>,
        limits: Limits,
        start: Start,
    ) -> WsSession {
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
    fn overflowed(&self, ctx: &mut Ctx) {
        self.state.hub.metrics.slow_consumer_closes.inc();
        Self::close(
            ctx,
            CloseCode::Other(close::TRY_AGAIN_LATER),
            "Send queue overflow; resume with last_event_id",
        );
    }

    fn tagged(&self) -> bool {
        matches!(self.kind, Kind::Multiplexed)
    }

    fn close(ctx: &mut Ctx, code: CloseCode, reason: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    fn reply(ctx: &mut Ctx, message: Value) {
        ctx.text(text(&message));
    }

    /// Starts catching a channel up; its live events are held until the catch-up is out.
    fn join(&mut self, channel: Channel, start: Start, ctx: &mut Ctx) {
        if self.channels.contains_key(&channel) {
            if self.tagged() {
                Self::reply(ctx, json!({"type": "subscribed", "channel": channel.name()}));
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
    fn live(&mut self, channel: Channel, items: impl IntoIterator<Item = (i64, ByteString)>, ctx: &mut Ctx) {
        let cap = self.limits.send_queue;
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        for (event_id, text) in items {
            match &mut state.held {
                Some(held) if held.len() >= cap => return self.overflowed(ctx),
                Some(held) => held.push((event_id, text)),
                None => Self::send_event(state, event_id, &text, ctx),
            }
        }
    }

    fn send_event(state: &mut ChannelState, event_id: i64, text: &ByteString, ctx: &mut Ctx) {
        if event_id > state.last_sent {
            state.last_sent = event_id;
            ctx.text(text.clone());
        }
    }

    /// One complete text message from the client.
    fn on_text(&mut self, raw: &str, ctx: &mut Ctx) {
        match self.limiter.hit(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Limit { tell } => {
                self.state.hub.metrics.rate_limited.inc();
                if tell {
                    Self::reply(
                        ctx,
                        json!({"type": "error", "code": "rate_limited", "message": "Too many messages; slow down"}),
                    );
                }
                return;
            }
            Verdict::Close => return Self::close(ctx, CloseCode::Policy, "Message rate far over the limit"),
        }
        let Ok(message) = serde_json::from_str::<Value>(raw) else {
            return Self::reply(ctx, json!({"type": "error", "message": "Invalid JSON"}));
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
                Self::reply(ctx, json!({"type": "pong", "timestamp": timestamp}));
            }
            ("authenticate", Kind::Multiplexed) => self.on_authenticate(&message, ctx),
            ("subscribe", Kind::Multiplexed) => self.on_subscribe(&message, ctx),
            ("unsubscribe", Kind::Multiplexed) => self.on_unsubscribe(&message, ctx),
            ("request", Kind::Multiplexed) => self.on_request(message, ctx),
            (other, _) => Self::reply(
                ctx,
                json!({"type": "error", "message": format!("Unknown message type: {other}")}),
            ),
        }
    }

    fn on_authenticate(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(token) = message.get("token").and_then(Value::as_str).map(str::to_owned) else {
            return Self::reply(ctx, json!({"type": "auth_error", "message": "token is required"}));
        };
        let state = self.state.clone();
        let check = async move { authenticate(&state, &token).await };
        ctx.spawn(
            actix::fut::wrap_future(check).map(|result, this: &mut Self, ctx| match result {
                Ok(actor) => this.sign_in(actor, Start::Fresh, ctx),
                Err(e) => Self::reply(
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
                Self::reply(
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

    fn channel_of(message: &Value, ctx: &mut Ctx) -> Option<Channel> {
        let name = message.get("channel").and_then(Value::as_str).unwrap_or("");
        let channel = Channel::parse(name);
        if channel.is_none() {
            Self::reply(
                ctx,
                json!({"type": "error", "code": "unknown_channel", "channel": name, "message": format!("No channel named {name:?}")}),
            );
        }
        channel
    }

    fn on_subscribe(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(channel) = Self::channel_of(message, ctx) else {
            return;
        };
        let start = match message.get("last_event_id") {
            None | Some(Value::Null) => Start::Fresh,
            Some(id) => id.as_i64().map(Start::Resume).unwrap_or(Start::Unreadable),
        };
        self.join(channel, start, ctx);
    }

    fn on_unsubscribe(&mut self, message: &Value, ctx: &mut Ctx) {
        let Some(channel) = Self::channel_of(message, ctx) else {
            return;
        };
        self.leave(channel);
        Self::reply(ctx, json!({"type": "unsubscribed", "channel": channel.name()}));
    }

    fn on_request(&mut self, message: Value, ctx: &mut Ctx) {
        let request_id = message.get("request_id").cloned().unwrap_or(Value::Null);
        let action = message.get("action").and_then(Value::as_str).unwrap_or("").to_owned();
        let data = message.get("data").cloned().unwrap_or_else(|| json!({}));
        let work = actions::perform(self.state.clone(), self.identity.clone(), action.clone(), data);
        ctx.spawn(actix::fut::wrap_future(work).map(move |result, _: &mut Self, ctx| {
            let reply = match result {
                Ok(data) => json!({"type": "response", "request_id": request_id, "action": action, "data": data}),
                Err(error) => actions::error_reply(&request_id, &error),
            };
            Self::reply(ctx, reply);
        }));
    }

    fn on_protocol_error(error: ProtocolError, ctx: &mut Ctx) {
        match error {
            ProtocolError::Overflow => Self::close(ctx, CloseCode::Size, "Frame too large"),
            // actix reports text that is not UTF-8 as an I/O error carrying the UTF-8 error.
            ProtocolError::Io(e) if e.to_string().contains("utf-8") => {
                Self::close(ctx, CloseCode::Invalid, "Text is not UTF-8")
            }
            ProtocolError::Io(_) => ctx.stop(),
            other => Self::close(ctx, CloseCode::Protocol, &other.to_string()),
        }
    }

    /// A channel could not be joined: a seed connection closes, a `/ws` one is told and goes on.
    fn refused(&mut self, channel: Channel, error: Error, ctx: &mut Ctx) {
        self.channels.remove(&channel);
        match self.kind {
            Kind::Seed { .. } | Kind::Refused { .. } => {
                let (code, reason) = channels::close_code(&error);
                Self::close(ctx, CloseCode::Other(code), &reason)
            }
            Kind::Multiplexed => {
                // On /ws a channel the caller may not watch is `forbidden`, signed in or not.
                let code = match error {
                    Error::Unauthenticated | Error::Forbidden(_) => "forbidden",
                    ref other => other.code(),
                };
                Self::reply(
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
            return Self::close(ctx, CloseCode::Other(*code), &reason.clone());
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
                ctx.ping(b"");
            }
        });
        // Register, greet, then subscribe: the first message is always `connection_established`.
        // Registering is a message the registry takes before any later one from this thread (its
        // mailbox is first in, first out), so the greeting need not wait for it.
        let to = ctx.address().recipient();
        let last_event_id = channels::register(&self.state, self.id, to, self.identity.as_ref().map(|a| a.id));
        let mut greeting = self.greeting.clone();
        greeting["last_event_id"] = json!(last_event_id);
        Self::reply(ctx, greeting);
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
        match msg {
            ToSession::Event {
                channel,
                event_id,
                text,
            } => self.live(channel, [(event_id, text)], ctx),
            ToSession::Events { channel, items } => self.live(channel, items, ctx),
            ToSession::Catchup { channel, items } => {
                let Some(state) = self.channels.get_mut(&channel) else {
                    return;
                };
                for (event_id, text) in items {
                    match event_id {
                        Some(event_id) => Self::send_event(state, event_id, &text, ctx),
                        None => ctx.text(text),
                    }
                }
            }
            ToSession::GoLive { channel, position } => {
                let Some(state) = self.channels.get_mut(&channel) else {
                    return;
                };
                state.last_sent = state.last_sent.max(position);
                for (event_id, text) in state.held.take().unwrap_or_default() {
                    Self::send_event(state, event_id, &text, ctx);
                }
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
                Self::close(ctx, CloseCode::Other(code), &reason)
            }
            ToSession::Revoked {
                channel: Some(channel),
                error,
            } => match self.kind {
                Kind::Multiplexed => {
                    self.leave(channel);
                    Self::reply(
                        ctx,
                        json!({"type": "unsubscribed", "channel": channel.name(), "reason": error.code(), "message": error.to_string()}),
                    );
                }
                _ => self.refused(channel, error, ctx),
            },
            ToSession::Sample { channel, text } => {
                if self.channels.get(&channel).is_some_and(|c| c.held.is_none()) {
                    ctx.text(text);
                }
            }
            ToSession::Overflowed => self.overflowed(ctx),
            ToSession::ShutDown => Self::close(ctx, CloseCode::Away, "Server shutting down"),
        }
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Ctx) {
        self.last_heard = Instant::now();
        let message = match msg {
            Ok(message) => message,
            Err(error) => return Self::on_protocol_error(error, ctx),
        };
        match message {
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Text(raw) => self.on_text(&raw, ctx),
            ws::Message::Binary(_) => Self::reply(
                ctx,
                json!({"type": "error", "message": "Binary messages are not supported"}),
            ),
            ws::Message::Continuation(item) => match self.fragments.push(item) {
                Reassembled::Pending => {}
                Reassembled::Text(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(raw) => self.on_text(raw, ctx),
                    Err(_) => Self::close(ctx, CloseCode::Invalid, "Text is not UTF-8"),
                },
                Reassembled::Binary(_) => Self::reply(
                    ctx,
                    json!({"type": "error", "message": "Binary messages are not supported"}),
                ),
                Reassembled::TooBig => Self::close(ctx, CloseCode::Size, "Message too large"),
            },
            // Answer a client's Close with the same code, then send nothing more.
            ws::Message::Close(reason) => {
                ctx.close(reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                }));
                ctx.stop();
            }
        }
    }

    /// The client's side of the stream ended without a Close frame.
    fn finished(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}
