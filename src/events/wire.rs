//! Events as WebSocket text: seed 001's message plus `event_id` and `timestamp`, rendered once per
//! audience and encoded once as a frame shared by every recipient (a clone is a reference-count
//! bump, a send is one write of the same bytes).

use actix_http::ws::{OpCode, Parser};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use serde_json::{json, Map, Value};

use super::{Audience, Event, EventBody, InventoryAction};
use crate::clock::iso;
use crate::domain::stations::StationView;

/// The rendered forms of one event.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub event_id: i64,
    /// Unix milliseconds of the commit.
    pub at: i64,
    pub audience: Audience,
    /// What every entitled connection receives.
    pub public: ByteString,
    /// The form with personal data, for admins and the station's operator; only events that carry
    /// personal data (`battery_booked.user`) have one.
    pub private: Option<ByteString>,
}

impl Rendered {
    pub fn for_viewer(&self, sees_personal_data: bool) -> &ByteString {
        match (&self.private, sees_personal_data) {
            (Some(private), true) => private,
            _ => &self.public,
        }
    }
}

/// Field names that hold personal data and are removed from the public form.
const PERSONAL_FIELDS: &[&str] = &["user"];

pub fn render(event: &Event) -> Rendered {
    let mut object = match serde_json::to_value(&event.body) {
        Ok(Value::Object(map)) => map,
        // Every EventBody variant is a struct variant with a tag: always an object.
        _ => Map::new(),
    };
    object.insert("event_id".into(), json!(event.id.0));
    object.insert("timestamp".into(), json!(iso(event.at)));
    let private = PERSONAL_FIELDS
        .iter()
        .any(|f| object.contains_key(*f))
        .then(|| text(&Value::Object(object.clone())));
    for field in PERSONAL_FIELDS {
        object.remove(*field);
    }
    Rendered {
        event_id: event.id.0,
        at: event.at,
        audience: event.audience,
        public: text(&Value::Object(object)),
        private,
    }
}

/// The `inventory_update` with `action: snapshot` that opens a station subscription. It is not an
/// event: it carries the position it reflects as `last_event_id`, not an `event_id`.
pub fn snapshot(station: &StationView, position: i64, at: i64) -> ByteString {
    let body = EventBody::InventoryUpdate {
        station_id: station.id,
        station_name: station.name.clone(),
        inventory: station.inventory.clone(),
        action: InventoryAction::Snapshot,
    };
    let mut value = serde_json::to_value(&body).unwrap_or(Value::Null);
    value["timestamp"] = json!(iso(at));
    value["last_event_id"] = json!(position);
    text(&value)
}

/// The same message with `"channel"` added, for the multiplexed `/ws` endpoint. Done once per
/// event and channel, not per recipient.
pub fn tagged(text: &str, channel: &str) -> ByteString {
    let rest = text.strip_prefix('{').unwrap_or(text);
    let channel = serde_json::to_string(channel).unwrap_or_default();
    let separator = if rest.starts_with('}') { "" } else { "," };
    ByteString::from(format!("{{\"channel\":{channel}{separator}{rest}"))
}

/// Any server message as text.
pub fn text(value: &Value) -> ByteString {
    ByteString::from(value.to_string())
}

/// A server message encoded as a complete WebSocket text frame. Frames from a server are not
/// masked, so the same bytes are right for every socket: fan-out writes them as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub fn text(text: &str) -> Frame {
        // At most 10 bytes of header for an unmasked frame.
        let mut buf = BytesMut::with_capacity(text.len() + 10);
        Parser::write_message(&mut buf, text, OpCode::Text, true, false);
        Frame(buf.freeze())
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The message the frame carries (for tests that read what a session was handed).
    #[cfg(test)]
    pub fn payload(&self) -> &str {
        let header = match self.0[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&self.0[header..]).expect("frames are made from text")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{EventId, StationId, UserId};

    fn booked() -> Event {
        Event {
            id: EventId(7),
            at: 1_709_029_800_000,
            audience: Audience::Station(StationId(1)),
            body: crate::events::tests::booked_body(),
        }
    }

    #[test]
    fn personal_data_only_in_the_private_form() {
        let rendered = render(&booked());
        let public: Value = serde_json::from_str(&rendered.public).unwrap();
        let private: Value = serde_json::from_str(rendered.private.as_ref().unwrap()).unwrap();
        assert!(public.get("user").is_none());
        assert_eq!(private["user"], "user@example.com");
        assert_eq!(public["event_id"], 7);
        assert_eq!(public["timestamp"], "2024-02-27T10:30:00.000Z");
        assert_eq!(rendered.for_viewer(false), &rendered.public);
    }

    #[test]
    fn tagging_adds_the_channel() {
        let with_channel: Value = serde_json::from_str(&tagged(r#"{"type":"x","event_id":3}"#, "station:1")).unwrap();
        assert_eq!(
            with_channel,
            serde_json::json!({"channel": "station:1", "type": "x", "event_id": 3})
        );
        let empty: Value = serde_json::from_str(&tagged("{}", "system")).unwrap();
        assert_eq!(empty, serde_json::json!({"channel": "system"}));
    }

    #[test]
    fn events_without_personal_data_have_one_form() {
        let event = Event {
            body: EventBody::Notification {
                title: "t".into(),
                message: "m".into(),
                level: crate::domain::values::Level::Info,
            },
            audience: Audience::User(UserId(3)),
            ..booked()
        };
        let rendered = render(&event);
        assert!(rendered.private.is_none());
        assert_eq!(rendered.for_viewer(true), &rendered.public);
    }

    #[test]
    fn a_frame_is_the_text_behind_a_header_a_client_parses() {
        for len in [0usize, 125, 126, 300, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let frame = Frame::text(&text);
            assert_eq!(frame.payload(), text);
            let mut wire = BytesMut::from(&frame.bytes()[..]);
            let (fin, opcode, payload) = Parser::parse(&mut wire, false, usize::MAX).unwrap().unwrap();
            assert!(fin);
            assert_eq!(opcode, OpCode::Text);
            assert_eq!(payload.map(|p| p.len()).unwrap_or(0), len);
            assert!(wire.is_empty(), "one frame, nothing after it");
        }
    }
}
