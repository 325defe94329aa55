//! The WebSocket protocol as types: what a client may send ([`ClientMessage`]), every message the
//! server sends that is not an event ([`ServerMessage`]; events have theirs in
//! [`crate::events`]), and the close codes. No protocol message is spelled as a `json!` literal
//! anywhere else; `docs/asyncapi.json` is held to these by `tests/api/protocol_docs.rs`.

use std::borrow::Cow;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ids::{StationId, UserId};
use crate::domain::values::Role;
use crate::error::{Error, ErrorBody};
use crate::events::wire::{tagged, Frame};

/// Close codes of the contract (§3, §4.4) beyond RFC 6455's named ones.
pub mod close {
    pub const INVALID_TOKEN: u16 = 4001;
    pub const TOKEN_EXPIRED: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    pub const UNKNOWN_STATION: u16 = 4004;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The close code and reason of a connection refused (or revoked) for `error`.
pub fn close_for(error: &Error) -> (u16, String) {
    let code = match error {
        Error::InvalidToken | Error::Unauthenticated => close::INVALID_TOKEN,
        Error::TokenExpired => close::TOKEN_EXPIRED,
        Error::AccountDisabled | Error::Forbidden(_) => close::FORBIDDEN,
        Error::NotFound(_) => close::UNKNOWN_STATION,
        // Not the client's doing and not a bug: reconnect and resume later.
        Error::Unavailable(_) | Error::Busy { .. } => close::TRY_AGAIN_LATER,
        _ => close::INTERNAL_ERROR,
    };
    (code, error.public_message())
}

/// A client's message. Fields are taken loosely (`Value`) where a wrong type must get the same
/// answer as a missing field rather than a parse error.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Ping {
        #[serde(default)]
        timestamp: Option<Value>,
    },
    Authenticate {
        #[serde(default)]
        token: Option<Value>,
        /// Where the automatic subscriptions of a new sign-in start, as `?last_event_id` at
        /// connect: a client that signs in in band on reconnecting resumes them too.
        #[serde(default)]
        last_event_id: Option<Value>,
    },
    Subscribe {
        #[serde(default)]
        channel: Option<Value>,
        #[serde(default)]
        last_event_id: Option<Value>,
    },
    Unsubscribe {
        #[serde(default)]
        channel: Option<Value>,
    },
    /// Who watches a station's channel (§4.5). A `request_id`, if given, comes back with the
    /// answer, so a client can tell a late answer from the one to its next question.
    Presence {
        #[serde(default)]
        channel: Option<Value>,
        #[serde(default)]
        request_id: Option<Value>,
    },
    Request {
        #[serde(default)]
        request_id: Option<Value>,
        #[serde(default)]
        action: Option<Value>,
        #[serde(default)]
        data: Option<Value>,
    },
}

/// What a text message from a client turned out to be.
#[derive(Debug)]
pub enum Inbound {
    Message(ClientMessage),
    /// JSON, but not a message this protocol knows: its `type`, as the error names it.
    Unknown(String),
    NotJson,
}

impl Inbound {
    pub fn parse(raw: &str) -> Inbound {
        let Ok(value) = serde_json::from_str::<Value>(raw) else {
            return Inbound::NotJson;
        };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("(none)").to_owned();
        match serde_json::from_value::<ClientMessage>(value) {
            Ok(message) => Inbound::Message(message),
            Err(_) => Inbound::Unknown(kind),
        }
    }
}

/// `connection_established` as decided at the handshake; `last_event_id` is added once the
/// connection is registered.
#[derive(Clone, Debug)]
pub struct Greeting {
    pub message: &'static str,
    pub station_id: Option<StationId>,
    pub user_id: Option<UserId>,
}

impl Greeting {
    pub fn at(&self, last_event_id: i64) -> ServerMessage<'static> {
        let message = match self.station_id {
            Some(id) => Cow::Owned(format!("{}_{id}", self.message)),
            None => Cow::Borrowed(self.message),
        };
        ServerMessage::ConnectionEstablished {
            message,
            station_id: self.station_id,
            user_id: self.user_id,
            last_event_id,
        }
    }
}

/// A server message that is not an event.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    ConnectionEstablished {
        message: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        station_id: Option<StationId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<UserId>,
        last_event_id: i64,
    },
    Pong {
        timestamp: Value,
    },
    /// Seed 001's error (`Invalid JSON`, unknown types), and the errors of a channel or of the
    /// connection (`rate_limited`, `forbidden`, `resume_expired`, …).
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        message: Cow<'a, str>,
    },
    /// A request's refusal, with the REST error body.
    #[serde(rename = "error")]
    RequestError {
        request_id: &'a Value,
        error: ErrorBody<'a>,
    },
    Authenticated {
        user_id: UserId,
        role: Role,
        subscriptions: Vec<String>,
    },
    AuthError {
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        message: Cow<'a, str>,
    },
    Subscribed {
        channel: String,
    },
    Unsubscribed {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Response {
        request_id: &'a Value,
        action: &'a str,
        data: Value,
    },
    TokenExpiring {
        expires_in: i64,
    },
    /// A station's presence; `signed_in` for its staff only.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a Value>,
        channel: String,
        viewers: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        signed_in: Option<&'a [crate::realtime::presence::SignedIn]>,
    },
    /// To the station's staff: a signed-in user's first connection to the station began.
    ViewerJoined {
        user_id: UserId,
        display_name: &'a str,
        role: Role,
        viewers: usize,
    },
    /// To the station's staff: a signed-in user's last connection to the station ended.
    ViewerLeft {
        user_id: UserId,
        display_name: &'a str,
        role: Role,
        viewers: usize,
    },
    SystemMetrics {
        connections: usize,
        subscriptions: usize,
        events_per_sec: f64,
        deliveries_per_sec: f64,
        node: &'a str,
        timestamp: String,
    },
}

impl ServerMessage<'_> {
    pub fn text(&self) -> ByteString {
        // Serializing these plain types cannot fail.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }

    pub fn frame(&self) -> Frame {
        Frame::text(&self.text())
    }

    /// The frame with `"channel"` first, as `/ws` sends channel messages.
    pub fn tagged_frame(&self, channel: &str) -> Frame {
        Frame::text(&tagged(&self.text(), channel))
    }

    /// A channel's or the connection's error, with a code.
    pub fn error(code: &'static str, message: impl Into<Cow<'static, str>>) -> ServerMessage<'static> {
        ServerMessage::Error {
            code: Some(code),
            channel: None,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_loosely_and_unknown_types_are_named() {
        assert!(matches!(
            Inbound::parse(r#"{"type":"ping"}"#),
            Inbound::Message(ClientMessage::Ping { timestamp: None })
        ));
        assert!(matches!(
            Inbound::parse(r#"{"type":"authenticate","token":5}"#),
            Inbound::Message(ClientMessage::Authenticate { token: Some(_), .. })
        ));
        assert!(matches!(Inbound::parse("{nope"), Inbound::NotJson));
        assert!(matches!(Inbound::parse(r#"{"type":"dance"}"#), Inbound::Unknown(t) if t == "dance"));
        assert!(matches!(Inbound::parse(r#"{"type":7}"#), Inbound::Unknown(t) if t == "(none)"));
        assert!(matches!(Inbound::parse("[]"), Inbound::Unknown(_)));
    }

    #[test]
    fn server_messages_have_the_documented_shapes() {
        let hello = ServerMessage::ConnectionEstablished {
            message: "Connected to station_1".into(),
            station_id: Some(StationId(1)),
            user_id: None,
            last_event_id: 9,
        };
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::json!({"type": "connection_established", "message": "Connected to station_1",
                               "station_id": 1, "last_event_id": 9})
        );
        let refused = Error::Internal(anyhow::anyhow!("secret"));
        let id = Value::from("r1");
        let reply = ServerMessage::RequestError {
            request_id: &id,
            error: ErrorBody::of(&refused),
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            serde_json::json!({"type": "error", "request_id": "r1",
                               "error": {"code": "internal_error", "message": "Internal server error"}})
        );
    }

    #[test]
    fn internal_errors_close_with_1011_and_say_nothing_more() {
        let (code, reason) = close_for(&Error::Internal(anyhow::anyhow!("db at 10.0.0.7 refused")));
        assert_eq!(code, 1011);
        assert!(!reason.contains("10.0.0.7"));
        assert_eq!(close_for(&Error::TokenExpired).0, 4002);
        assert_eq!(close_for(&Error::NotFound("Station")).0, 4004);
    }
}
