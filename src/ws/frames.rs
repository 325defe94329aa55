//! What an inbound frame means under RFC 6455, for any session on our socket layer: control
//! frames, fragments put back together (the codec refuses them out of order), text that must be UTF-8, the close handshake, and the
//! refusals (1002, 1007, 1009). The `WsSession` and the conformance echo (`ws::conformance`)
//! both decide here, so the Autobahn suite run against the echo holds the server to the same code.

use actix_http::ws::{CloseCode, CloseReason, Frame as WsFrame, ProtocolError};
use bytes::Bytes;

use super::inbound::{Reassembled, Reassembly};

/// One inbound frame, as the session should take it.
#[derive(Debug)]
pub enum Incoming {
    /// Answer with a Pong carrying the same payload.
    Ping(Bytes),
    Pong,
    /// A whole text message, valid UTF-8.
    Text(String),
    /// A whole binary message (the session refuses them; the conformance echo sends them back).
    Binary(#[cfg_attr(not(feature = "conformance"), allow(dead_code))] Bytes),
    /// A fragment of a message still arriving.
    Pending,
    /// The client closed: answer with the same code (none if it sent none), then send nothing.
    Closed(Option<CloseReason>),
    /// Close with this code and reason: the client broke the protocol.
    Refuse(CloseCode, &'static str),
    /// The connection itself failed: stop.
    Broken,
}

impl Incoming {
    /// Whether this is a message (or a control frame) that counts against a rate limit.
    pub fn counts(&self) -> bool {
        matches!(
            self,
            Incoming::Ping(_) | Incoming::Pong | Incoming::Text(_) | Incoming::Binary(_)
        )
    }
}

pub fn classify(frame: Result<WsFrame, ProtocolError>, fragments: &mut Reassembly) -> Incoming {
    let frame = match frame {
        Ok(frame) => frame,
        Err(ProtocolError::Overflow) => return Incoming::Refuse(CloseCode::Size, "Frame too large"),
        Err(ProtocolError::Io(_)) => return Incoming::Broken,
        Err(_) => return Incoming::Refuse(CloseCode::Protocol, "Protocol error"),
    };
    match frame {
        WsFrame::Ping(payload) => Incoming::Ping(payload),
        WsFrame::Pong(_) => Incoming::Pong,
        WsFrame::Text(bytes) => text(bytes),
        WsFrame::Binary(bytes) => Incoming::Binary(bytes),
        WsFrame::Continuation(item) => match fragments.push(item) {
            Reassembled::Pending => Incoming::Pending,
            Reassembled::Text(bytes) => text(bytes),
            Reassembled::Binary(bytes) => Incoming::Binary(bytes),
            Reassembled::TooBig => Incoming::Refuse(CloseCode::Size, "Message too large"),
            Reassembled::TooManyFragments => Incoming::Refuse(CloseCode::Policy, "Too many fragments"),
        },
        WsFrame::Close(reason) => Incoming::Closed(reason.map(|r| CloseReason {
            code: r.code,
            description: None,
        })),
    }
}

fn text(bytes: Bytes) -> Incoming {
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Incoming::Text(text),
        Err(_) => Incoming::Refuse(CloseCode::Invalid, "Text is not UTF-8"),
    }
}
