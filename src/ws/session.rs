//! The `WsSession` actor: one per WebSocket connection. It speaks the protocol (heartbeat, close
//! handshake, fragments, size and rate limits), holds back live events until its catch-up (a
//! snapshot or a replay from the log) is out, and never sends an event twice or out of order.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use serde_json::{json, Value};

use super::inbound::{RateLimiter, Reassembled, Reassembly, Verdict};
use crate::clock::{iso, now_ms};
use crate::domain::ids::UserId;
use crate::events::wire::text;
use crate::realtime::messages::{Disconnect, Leave, SessionId, ToSession};
use crate::realtime::Hub;

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

enum Phase {
    /// Subscribed, catching up; live events are held here meanwhile.
    Syncing(Vec<(i64, ByteString)>),
    Live,
}

pub struct WsSession {
    id: SessionId,
    /// The `connection_established` greeting, less `last_event_id`.
    greeting: Value,
    /// The user whose notifier this session joined, if any.
    notified_user: Option<UserId>,
    hub: Hub,
    limits: Limits,
    phase: Phase,
    /// The newest event id sent; anything not newer is a duplicate from the snapshot seam.
    last_sent: i64,
    last_heard: Instant,
    fragments: Reassembly,
    limiter: RateLimiter,
}

impl WsSession {
    pub fn new(id: SessionId, greeting: Value, notified_user: Option<UserId>, hub: Hub, limits: Limits) -> WsSession {
        WsSession {
            id,
            greeting,
            notified_user,
            hub,
            limits,
            phase: Phase::Syncing(Vec::new()),
            last_sent: i64::MIN,
            last_heard: Instant::now(),
            fragments: Reassembly::new(limits.max_message),
            limiter: RateLimiter::new(limits.rate_per_sec, Instant::now()),
        }
    }

    fn close(ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, reason: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    fn send_event(&mut self, event_id: i64, text: &ByteString, ctx: &mut ws::WebsocketContext<Self>) {
        if event_id > self.last_sent {
            self.last_sent = event_id;
            ctx.text(text.clone());
        }
    }

    fn reply(ctx: &mut ws::WebsocketContext<Self>, message: Value) {
        ctx.text(text(&message));
    }

    /// One complete text message from the client.
    fn on_text(&mut self, raw: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match self.limiter.hit(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Limit { tell } => {
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
        match message.get("type").and_then(Value::as_str) {
            Some("ping") => {
                let timestamp = match message.get("timestamp") {
                    Some(t) if !t.is_null() => t.clone(),
                    _ => json!(iso(now_ms())),
                };
                Self::reply(ctx, json!({"type": "pong", "timestamp": timestamp}));
            }
            Some(other) => Self::reply(
                ctx,
                json!({"type": "error", "message": format!("Unknown message type: {other}")}),
            ),
            None => Self::reply(ctx, json!({"type": "error", "message": "Unknown message type: (none)"})),
        }
    }

    fn on_protocol_error(error: ProtocolError, ctx: &mut ws::WebsocketContext<Self>) {
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
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.hub.registry.do_send(Disconnect { session: self.id });
        if let Some(user) = self.notified_user {
            self.hub.directory.do_send(Leave { user, session: self.id });
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Event { event_id, text } => match &mut self.phase {
                Phase::Syncing(held) if held.len() >= self.limits.send_queue => Self::close(
                    ctx,
                    CloseCode::Other(close::TRY_AGAIN_LATER),
                    "Send queue overflow; resume with last_event_id",
                ),
                Phase::Syncing(held) => held.push((event_id, text)),
                Phase::Live => self.send_event(event_id, &text, ctx),
            },
            ToSession::Greet { last_event_id } => {
                let mut greeting = self.greeting.clone();
                greeting["last_event_id"] = json!(last_event_id);
                Self::reply(ctx, greeting);
            }
            ToSession::Catchup(items) => {
                for (event_id, text) in items {
                    match event_id {
                        Some(event_id) => self.send_event(event_id, &text, ctx),
                        None => ctx.text(text),
                    }
                }
            }
            ToSession::GoLive { position } => {
                self.last_sent = self.last_sent.max(position);
                if let Phase::Syncing(held) = std::mem::replace(&mut self.phase, Phase::Live) {
                    for (event_id, text) in held {
                        self.send_event(event_id, &text, ctx);
                    }
                }
            }
            ToSession::Refuse { code, reason } => Self::close(ctx, CloseCode::Other(code), &reason),
            ToSession::Overflowed => Self::close(
                ctx,
                CloseCode::Other(close::TRY_AGAIN_LATER),
                "Send queue overflow; resume with last_event_id",
            ),
            ToSession::ShutDown => Self::close(ctx, CloseCode::Away, "Server shutting down"),
        }
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
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
    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
